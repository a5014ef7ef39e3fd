"""Encoding speed and cold start: minisbert against sentence-transformers, same model, threads and batch size.

    python benchmarks/encode_speed.py [--data ../shared/data] [--threads 2] [--batch-size 32] [--limit N]

Embeds the distinct sentences of the STS benchmark (15,487) with both libraries in one run, in fp32 and bf16,
checks that the outputs agree, and prints sentences/s and the ratio. Then starts fresh processes that import,
load the default model and embed one sentence, and prints their wall time and peak memory (median of --repeats).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert import SentenceTransformer  # noqa: E402
from minisbert.checkpoint import default_model_folder  # noqa: E402
from minisbert.data import distinct_sentences, read_sts_benchmark  # noqa: E402

COLD_START = {
    "sentence-transformers": "from sentence_transformers import SentenceTransformer",
    "minisbert": "from minisbert import SentenceTransformer",
}
COLD_START_PROGRAM = """
import re, sys, time
start = time.perf_counter()
{import_line}
model = SentenceTransformer(sys.argv[1], device="cpu")
model.encode(["A man is playing guitar."])
# VmHWM is this program's own peak (ru_maxrss would carry over the parent's from fork)
peak_kib = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
print(time.perf_counter() - start, peak_kib / 1024)
"""


def sts_sentences(data: Path) -> list[str]:
    return distinct_sentences([example for split in ("train", "dev", "test")
                               for example in read_sts_benchmark(data / "stsbenchmark" / f"sts-{split}.csv")])


def throughput(encode, sentences, batch_size):
    encode(sentences[:256], batch_size)  # warm-up: allocator, kernels, lazily made copies
    start = time.perf_counter()
    embeddings = encode(sentences, batch_size)
    return len(sentences) / (time.perf_counter() - start), embeddings


def cold_start(name: str, model_folder: Path, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        program = COLD_START_PROGRAM.format(import_line=COLD_START[name])
        out = subprocess.run([sys.executable, "-c", program, str(model_folder)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
        runs.append(tuple(map(float, out.stdout.split()[-2:])))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MINISBERT_DATA", "../shared/data")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="embed only the first N sentences")
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per library")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer as Reference
    from transformers.utils import logging as reference_logging

    reference_logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    sentences = sts_sentences(args.data)[: args.limit]
    folder = default_model_folder()
    print(f"{len(sentences)} sentences, all-MiniLM-L6-v2, batch {args.batch_size}, {args.threads} threads, "
          f"torch {torch.__version__}\n")
    print(f"{'precision':<10}{'sentence-transformers':>24}{'minisbert':>14}{'ratio':>8}   agreement")
    rates = {}
    for precision in ("fp32", "bf16"):
        reference = Reference(str(folder), device="cpu")
        if precision == "bf16":
            reference = reference.bfloat16()
        ours = SentenceTransformer(folder)
        theirs_rate, theirs = throughput(lambda s, b: reference.encode(s, batch_size=b, convert_to_numpy=False,
                                                                       convert_to_tensor=True).float().numpy(),
                                         sentences, args.batch_size)
        ours_rate, mine = throughput(lambda s, b: ours.encode(s, batch_size=b, dtype=precision),
                                     sentences, args.batch_size)
        if precision == "fp32":
            agreement = f"max |difference| {np.abs(mine - theirs).max():.1e}"
        else:
            cosine = (mine * theirs).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(theirs, axis=1)
            agreement = f"min cosine to sentence-transformers bf16 {cosine.min():.4f}"
        print(f"{precision:<10}{theirs_rate:>18.0f} sent/s{ours_rate:>8.0f} sent/s{ours_rate / theirs_rate:>7.2f}x   {agreement}")
        rates[precision] = theirs_rate, ours_rate
    print(f"minisbert bf16 / sentence-transformers fp32: {rates['bf16'][1] / rates['fp32'][0]:.2f}x")

    print(f"\ncold start (fresh process: import, load, embed one sentence), median of {args.repeats}")
    results = {name: cold_start(name, folder, args.repeats) for name in COLD_START}
    for name, (seconds, megabytes) in results.items():
        print(f"{name:<24}{seconds:>7.2f} s{megabytes:>9.0f} MiB peak RSS")
    (ref_s, ref_mb), (our_s, our_mb) = results["sentence-transformers"], results["minisbert"]
    print(f"{'ratio (minisbert / s-t)':<24}{our_s / ref_s:>7.2f}x{our_mb / ref_mb:>11.2f}x")


if __name__ == "__main__":
    main()
