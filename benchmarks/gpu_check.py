"""The GPU measurements, against sentence-transformers in the same run: encoding, search, mining, training steps.

    bash benchmarks/gpu_check.sh                   # on the GPU machine: the CUDA tests, then this script
    python benchmarks/gpu_check.py --device cpu --quick   # to try the script out on a CPU, at tiny sizes

The models have the shapes of all-MiniLM-L6-v2 and bert-base with random weights, built here (speed depends on
shapes, not values; the 91 MB real weights cannot travel to the GPU machine). The sentences and the tokenizer come
from --assets (benchmarks/gpu_prepare.sh fills it). Each library encodes at several batch sizes and in several
dtypes, and each is reported at its best. Every comparison also checks agreement; a disagreement is listed under
"failures" and makes the exit status 1. The figures go to --json and a table to stdout.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer as FastTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_speed import differing, hits, pairs, timed  # noqa: E402
from train_speed import SHAPES  # noqa: E402

from minisbert import SentenceTransformer, paraphrase_mining_embeddings, semantic_search  # noqa: E402
from minisbert.data import Example  # noqa: E402
from minisbert.encoder import Encoder, EncoderConfig  # noqa: E402
from minisbert.losses import SoftmaxLoss, tokenize_batch  # noqa: E402
from minisbert.optim import AdamW, parameter_groups, warmup_then_linear_decay  # noqa: E402
from minisbert.tokenize import Tokenizer  # noqa: E402
from minisbert.training import train_step  # noqa: E402

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_model(shape: str, assets: Path, folder: Path) -> Path:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(model_type="bert", vocab_size=30522, **SHAPES[shape]))
    tokenizer = Tokenizer(FastTokenizer.from_file(str(assets / "tokenizer.json")), max_seq_length=256, pad_token_id=0)
    SentenceTransformer(encoder=encoder, tokenizer=tokenizer).save(folder)
    return folder


def rate(function, count: int, device: str, warm_up=None) -> tuple[float, object]:
    """(items per second, result) of one timed run, after `warm_up` (a smaller run of the same) or a whole run."""
    (warm_up or function)()
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return count / (time.perf_counter() - start), result


def encoding(args, sentences, folder: Path, shape: str, record: dict, failures: list) -> None:
    from sentence_transformers import SentenceTransformer as Reference

    ours = SentenceTransformer(folder, device=args.device)
    reference = Reference(str(folder), device=args.device)
    reference_fp32 = torch.as_tensor(reference.encode(sentences[:512], batch_size=64))
    results = []
    dtypes = ["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    for dtype in dtypes:
        for batch_size in args.batch_sizes:
            reference.to(TORCH_DTYPES[dtype])
            theirs, _ = rate(lambda: reference.encode(sentences, batch_size=batch_size), len(sentences), args.device,
                             lambda: reference.encode(sentences[:2 * batch_size], batch_size=batch_size))
            mine, embeddings = rate(lambda: ours.encode(sentences, batch_size=batch_size, dtype=dtype),
                                    len(sentences), args.device,
                                    lambda: ours.encode(sentences[:2 * batch_size], batch_size=batch_size, dtype=dtype))
            agreement = torch.nn.functional.cosine_similarity(torch.as_tensor(embeddings[:512]), reference_fp32).min()
            results.append({"dtype": dtype, "batch_size": batch_size, "sentence_transformers": theirs,
                            "minisbert": mine, "min_cosine_to_st_fp32": agreement.item()})
            threshold = 0.9999 if dtype == "fp32" else 0.99
            if agreement < threshold:
                failures.append(f"encode {shape} {dtype}: cosine to sentence-transformers fp32 {agreement:.5f}")
            print(f"encode {shape:<9} {dtype:<5} batch {batch_size:<5} {theirs:>9.0f} {mine:>9.0f} sent/s "
                  f"{mine / theirs:>6.2f}x  min cosine {agreement:.5f}", flush=True)
    reference.to(torch.float32)
    best_theirs = max(results, key=lambda r: r["sentence_transformers"])
    best_ours = max(results, key=lambda r: r["minisbert"])
    record[f"encode_{shape}"] = {"runs": results, "best_sentence_transformers": best_theirs, "best_minisbert": best_ours,
                                 "ratio_best_to_best": best_ours["minisbert"] / best_theirs["sentence_transformers"]}
    print(f"encode {shape}: best minisbert ({best_ours['dtype']}, {best_ours['batch_size']}) / best "
          f"sentence-transformers ({best_theirs['dtype']}, {best_theirs['batch_size']}): "
          f"{record[f'encode_{shape}']['ratio_best_to_best']:.2f}x", flush=True)


def search_and_mining(args, record: dict, failures: list) -> None:
    from sentence_transformers import util

    n_queries, n_corpus, n_mining = (200, 5_000, 2_000) if args.quick else (10_000, 1_000_000, 100_000)
    generator = torch.Generator(device=args.device).manual_seed(0)
    corpus = torch.randn(n_corpus, 384, device=args.device, generator=generator)
    queries = torch.randn(n_queries, 384, device=args.device, generator=generator)
    for dtype, tolerance in (("fp16", 1e-3), ("fp32", 1e-6)):
        if dtype == "fp16" and not args.device.startswith("cuda"):
            continue
        q, c = queries.to(TORCH_DTYPES[dtype]), corpus.to(TORCH_DTYPES[dtype])
        theirs_s, theirs = timed(lambda: util.semantic_search(q, c, top_k=10), args.repeats, args.device)
        ours_s, ours = timed(lambda: semantic_search(q, c, top_k=10), args.repeats, args.device)
        wrong = differing(hits(ours), hits(theirs), tolerance)
        record[f"search_{dtype}"] = {"shape": [n_queries, n_corpus, 384], "top_k": 10, "sentence_transformers_s": theirs_s,
                                     "minisbert_s": ours_s, "ratio": theirs_s / ours_s, "differing_hits": wrong}
        print(f"search {n_queries} x {n_corpus} {dtype}: {theirs_s:.3f} s vs {ours_s:.3f} s, "
              f"{theirs_s / ours_s:.1f}x, differing hits {wrong}", flush=True)
        if wrong:
            failures.append(f"search {dtype}: {wrong} hits differ from sentence-transformers")
    embeddings = corpus[:n_mining]
    theirs_s, theirs = timed(lambda: util.paraphrase_mining_embeddings(embeddings), args.repeats, args.device)
    ours_s, ours = timed(lambda: paraphrase_mining_embeddings(embeddings), args.repeats, args.device)
    wrong = differing(pairs(ours), pairs(theirs), 1e-6)
    record["mining"] = {"n": n_mining, "sentence_transformers_s": theirs_s, "minisbert_s": ours_s,
                        "ratio": theirs_s / ours_s, "differing_pairs": wrong}
    print(f"mining {n_mining}: {theirs_s:.3f} s vs {ours_s:.3f} s, {theirs_s / ours_s:.1f}x, differing {wrong}",
          flush=True)
    if wrong:
        failures.append(f"mining: {wrong} pairs differ from sentence-transformers")


def train_ours(folder, examples, batch_size, device, dtype):
    model = SentenceTransformer(folder, device=device)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    optimizer = AdamW(parameter_groups(loss_fn), lr=2e-5)
    autocast = None if dtype == "fp32" else TORCH_DTYPES[dtype]
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    steps = math.ceil(len(examples) / batch_size)
    model.train()
    for step in range(steps):
        batch = examples[step * batch_size:(step + 1) * batch_size]
        tensors = tokenize_batch(model, [[e.texts[0] for e in batch], [e.texts[1] for e in batch]],
                                 [e.label for e in batch])
        lr = 2e-5 * warmup_then_linear_decay(step, math.ceil(0.1 * steps), steps)
        train_step(loss_fn, optimizer, tensors, lr, autocast_dtype=autocast, scaler=scaler)


def train_theirs_plain(folder, examples, batch_size, device, dtype):
    """sentence-transformers' model and SoftmaxLoss in a plain loop (where fit's Trainer is not installed)."""
    from sentence_transformers import SentenceTransformer as Reference
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss as ReferenceSoftmaxLoss

    model = Reference(str(folder), device=device)
    loss = ReferenceSoftmaxLoss(model, model.get_embedding_dimension(), num_labels=3).to(device)
    optimizer = torch.optim.AdamW(loss.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    model.train()
    for step in range(math.ceil(len(examples) / batch_size)):
        batch = examples[step * batch_size:(step + 1) * batch_size]
        features = [{k: v.to(device) for k, v in model.preprocess([e.texts[i] for e in batch]).items()} for i in (0, 1)]
        labels = torch.tensor([e.label for e in batch], device=device)
        with torch.autocast(device.split(":")[0], dtype=TORCH_DTYPES[dtype], enabled=dtype != "fp32"):
            value = loss(features, labels)
        (scaler.scale(value) if scaler else value).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
        (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step()
        optimizer.zero_grad()


def training(args, examples, folder: Path, shape: str, record: dict) -> None:
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
        from train_speed import theirs as train_theirs
        reference_name = "sentence-transformers fit"
    except ImportError:
        train_theirs, reference_name = train_theirs_plain, "sentence-transformers model and loss, plain loop"
    amp = "fp16" if args.device.startswith("cuda") else "fp32"
    warm_up = examples[:160]
    theirs, _ = rate(lambda: train_theirs(folder, examples, 16, args.device, amp), len(examples), args.device,
                     lambda: train_theirs(folder, warm_up, 16, args.device, amp))
    row = {"reference": reference_name, "reference_dtype": amp, "sentence_transformers_pairs_per_s": theirs}
    for dtype in (["fp16", "bf16"] if args.device.startswith("cuda") else ["fp32"]):
        mine, _ = rate(lambda: train_ours(folder, examples, 16, args.device, dtype), len(examples), args.device,
                       lambda: train_ours(folder, warm_up, 16, args.device, dtype))
        row[f"minisbert_{dtype}_pairs_per_s"] = mine
        row[f"ratio_{dtype}"] = mine / theirs
        print(f"train {shape:<9} batch 16: {reference_name} ({amp}) {theirs:.1f} pairs/s, minisbert {dtype} "
              f"{mine:.1f} pairs/s, {mine / theirs:.2f}x", flush=True)
    record[f"train_{shape}"] = row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--assets", type=Path, default=Path(".gpu"), help="sentences.txt, pairs.jsonl, tokenizer.json")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the figures go")
    parser.add_argument("--sentences", type=int, default=10_000, help="sentences to encode")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--train-pairs", type=int, default=1600, help="pairs per training run (100 steps of 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the script out")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.batch_sizes, args.train_pairs, args.repeats = 200, [64], 64, 1
    sentences = (args.assets / "sentences.txt").read_text(encoding="utf-8").split("\n")[:args.sentences]
    rows = [json.loads(line) for line in (args.assets / "pairs.jsonl").read_text().splitlines()[:args.train_pairs]]
    examples = [Example((row["sentence1"], row["sentence2"]), row["label"]) for row in rows]
    import sentence_transformers
    record = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(args.device)
              if args.device.startswith("cuda") else "cpu", "torch": torch.__version__,
              "sentence_transformers": sentence_transformers.__version__, "sentences": len(sentences)}
    print(json.dumps({k: record[k] for k in ("date", "device", "torch", "sentence_transformers")}), flush=True)
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        for shape in ("minilm", "bert-base"):
            folder = random_model(shape, args.assets, Path(scratch) / shape)
            encoding(args, sentences, folder, shape, record, failures)
            training(args, examples, folder, shape, record)
    search_and_mining(args, record, failures)
    record["failures"] = failures
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures in {args.json}; " + (f"FAILURES: {failures}" if failures else "no failures"), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
