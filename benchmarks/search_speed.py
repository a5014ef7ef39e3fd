"""Search and paraphrase mining: minisbert against sentence_transformers.util, in the same run, same inputs.

    python benchmarks/search_speed.py                 # CPU: the two measurements of issue 4
    python benchmarks/search_speed.py --device cuda   # GPU: random vectors of the real shapes, fused kernel
    (--quick: smaller sizes, to try the script out)

CPU: paraphrase mining of the first 10,000 distinct STS-benchmark sentences end to end (embed with the default
model, then mine), and semantic search of 1,000 queries over 100,000 random vectors of dimension 384, top 10.
CUDA: semantic search of 10,000 queries over 1,000,000 vectors of dimension 384, top 10, in fp16 and fp32, and
paraphrase mining of 100,000 vectors (the kernel's exact agreement with the PyTorch path is checked by
tests/test_cuda.py, on exactly representable ties). Every line compares the two libraries' results: hits that
differ must have scores within 1e-6 of each other in fp32 (sentence-transformers rounds fp16 scores to fp16, so there the tolerance is 1e-3).
Times are the median of --repeats runs after one warm-up.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert import SentenceTransformer, paraphrase_mining, paraphrase_mining_embeddings, semantic_search  # noqa: E402
from minisbert import topk_kernel  # noqa: E402
from minisbert.checkpoint import default_model_folder  # noqa: E402
from minisbert.data import distinct_sentences, read_sts_benchmark  # noqa: E402


def sts_sentences(data: Path, count: int) -> list[str]:
    return distinct_sentences([example for split in ("train", "dev", "test")
                               for example in read_sts_benchmark(data / "stsbenchmark" / f"sts-{split}.csv")])[:count]


def timed(function, repeats: int, device: str, warm_up: bool = True):
    def once():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    if warm_up:
        once()  # kernel compilation, allocator
    runs = [once() for _ in range(repeats)]
    return statistics.median(seconds for seconds, _ in runs), runs[-1][1]


def differing(ours: list, theirs: list, tolerance: float) -> int:
    """How many places hold different items with scores further apart than `tolerance` (real disagreements)."""
    return sum(a != b and abs(score_a - score_b) > tolerance
               for row_a, row_b in zip(ours, theirs) for (score_a, a), (score_b, b) in zip(row_a, row_b))


def hits(results) -> list:
    return [[(hit["score"], hit["corpus_id"]) for hit in row] for row in results]


def pairs(results) -> list:
    return [[(score, (i, j)) for score, i, j in results]]


def report(name: str, theirs_s: float, ours_s: float, disagreements: int):
    print(f"{name:<52} {theirs_s:>9.3f} s {ours_s:>9.3f} s {theirs_s / ours_s:>7.2f}x  {disagreements}", flush=True)


def cpu(args, util):
    from sentence_transformers import SentenceTransformer as Reference

    torch.set_num_threads(args.threads)
    count = 1000 if args.quick else 10_000
    sentences = sts_sentences(args.data, count)
    folder = str(default_model_folder())
    reference, ours = Reference(folder, device="cpu"), SentenceTransformer(folder, device="cpu")
    theirs_s, their_pairs = timed(lambda: util.paraphrase_mining(reference, sentences, batch_size=32), 1, "cpu")
    ours_s, our_pairs = timed(lambda: paraphrase_mining(ours, sentences, batch_size=32), 1, "cpu")
    tolerance = 1e-5  # the two encoders' embeddings differ by ~1e-7, and the scores a little more
    report(f"paraphrase mining, {len(sentences):,} STS sentences, end to end", theirs_s, ours_s,
           differing(pairs(our_pairs), pairs(their_pairs), tolerance))

    embeddings = reference.encode(sentences, convert_to_tensor=True)
    theirs_s, their_pairs = timed(lambda: util.paraphrase_mining_embeddings(embeddings), args.repeats, "cpu")
    ours_s, our_pairs = timed(lambda: paraphrase_mining_embeddings(embeddings), args.repeats, "cpu")
    report(f"  of which mining the {len(sentences):,} embeddings", theirs_s, ours_s,
           differing(pairs(our_pairs), pairs(their_pairs), 1e-6))

    generator = torch.Generator().manual_seed(0)
    n_corpus = 10_000 if args.quick else 100_000
    corpus, queries = torch.randn(n_corpus, 384, generator=generator), torch.randn(1000, 384, generator=generator)
    theirs_s, theirs = timed(lambda: util.semantic_search(queries, corpus, top_k=10), args.repeats, "cpu")
    ours_s, ours_found = timed(lambda: semantic_search(queries, corpus, top_k=10), args.repeats, "cpu")
    report(f"semantic search, 1,000 x {n_corpus:,} x 384, top 10, fp32", theirs_s, ours_s,
           differing(hits(ours_found), hits(theirs), 1e-6))


def gpu(args, util):
    device = args.device
    print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"triton {topk_kernel.triton.__version__ if topk_kernel.triton else 'missing'}")
    generator = torch.Generator(device=device).manual_seed(0)
    n_queries, n_corpus = (1000, 100_000) if args.quick else (10_000, 1_000_000)
    corpus = torch.randn(n_corpus, 384, device=device, generator=generator)
    queries = torch.randn(n_queries, 384, device=device, generator=generator)
    for dtype, tolerance in ((torch.float16, 1e-3), (torch.float32, 1e-6)):
        q, c = queries.to(dtype), corpus.to(dtype)
        theirs_s, theirs = timed(lambda: util.semantic_search(q, c, top_k=10), args.repeats, device)
        ours_s, ours_found = timed(lambda: semantic_search(q, c, top_k=10), args.repeats, device)
        report(f"semantic search, {n_queries:,} x {n_corpus:,} x 384, top 10, {str(dtype)[6:]}",
               theirs_s, ours_s, differing(hits(ours_found), hits(theirs), tolerance))
    n_mining = 10_000 if args.quick else 100_000
    embeddings = corpus[:n_mining]
    theirs_s, theirs = timed(lambda: util.paraphrase_mining_embeddings(embeddings), args.repeats, device)
    ours_s, ours_found = timed(lambda: paraphrase_mining_embeddings(embeddings), args.repeats, device)
    report(f"paraphrase mining, {n_mining:,} x 384, fp32", theirs_s, ours_s,
           differing(pairs(ours_found), pairs(theirs), 1e-6))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MINISBERT_DATA", "../shared/data")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, to try the script out")
    args = parser.parse_args()
    from sentence_transformers import util

    print(f"{'':<52} {'s-t':>11} {'minisbert':>11} {'ratio':>8}  differing hits")
    (gpu if args.device.startswith("cuda") else cpu)(args, util)


if __name__ == "__main__":
    main()
