"""Table 7 of the paper: sentences per second, with and without length-sorted batches ("smart batching"), minisbert
next to sentence-transformers in the same run, on the distinct sentences of the STS benchmark (15,487).

    python results/table7_speed.py                         # CPU, all-MiniLM-L6-v2, batch 32, 2 threads
    python results/table7_speed.py --limit 200 --json /tmp/t7.json   # a tiny check (CI)

Both libraries sort a call's texts by length before cutting batches. "Unsorted" hands them the texts one batch at a
time in their original order, so each batch pads to its own longest text, as without smart batching. Each figure
is the median of --repeats timed runs after a warm-up. GPU figures (sorted batches only) are those of the GPU check,
benchmarks/results/gpu_check_*.json. Writes results/table7.json.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import ROOT, Clock, default_data, run_record, write_json

from minisbert import SentenceTransformer
from minisbert.checkpoint import default_model_folder
from minisbert.data import distinct_sentences, read_sts_benchmark


def rate(encode, sentences, batch_size: int, sort: bool, repeats: int) -> float:
    def run():
        if sort:
            encode(sentences, batch_size)
        else:
            for start in range(0, len(sentences), batch_size):
                encode(sentences[start:start + batch_size], batch_size)

    encode(sentences[:4 * batch_size], batch_size)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return len(sentences) / statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="the first N sentences only")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "table7.json")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer as Reference

    torch.set_num_threads(args.threads)
    clock = Clock()
    sentences = distinct_sentences([e for split in ("train", "dev", "test") for e in
                                    read_sts_benchmark(args.data / "stsbenchmark" / f"sts-{split}.csv")])[:args.limit]
    folder = default_model_folder()
    ours, theirs = SentenceTransformer(folder), Reference(str(folder), device="cpu")
    libraries = {"sentence_transformers": lambda texts, b: theirs.encode(texts, batch_size=b),
                 "minisbert": lambda texts, b: ours.encode(texts, batch_size=b)}
    rows = {}
    for sort in (False, True):
        label = "sorted" if sort else "unsorted"
        rows[label] = {name: rate(encode, sentences, args.batch_size, sort, args.repeats)
                       for name, encode in libraries.items()}
        rows[label]["ratio"] = rows[label]["minisbert"] / rows[label]["sentence_transformers"]
        print(f"{label:<9} sentence-transformers {rows[label]['sentence_transformers']:7.0f} sent/s   minisbert "
              f"{rows[label]['minisbert']:7.0f} sent/s   {rows[label]['ratio']:.2f}x", flush=True)
    for name in libraries:
        print(f"{name}: sorting gains {rows['sorted'][name] / rows['unsorted'][name]:.2f}x")
    record = run_record(args, model="all-MiniLM-L6-v2", sentences=len(sentences), precision="fp32", rows=rows,
                        sorting_gain={name: rows["sorted"][name] / rows["unsorted"][name] for name in libraries},
                        seconds=clock.seconds())
    write_json(args.json, record)


if __name__ == "__main__":
    main()
