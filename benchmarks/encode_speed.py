"""Encoding speed and cold start: minisbert against sentence-transformers, same model, threads and batch size.

    python benchmarks/encode_speed.py [--data ../shared/data] [--threads 2] [--batch-size 32] [--limit N]

Prints what the CPU has (the instructions that decide which compute type is fast). Embeds the distinct sentences of
the STS benchmark (15,487) with both libraries in one run, in fp32 and bf16, checks that the outputs agree, and prints
sentences/s and the ratio; then minisbert's candidates for a faster CPU path (bf16, and int8: PyTorch's dynamic
quantization of the linear layers, per channel, which minisbert does not offer) with their STS benchmark test
Spearman next to fp32's, and what dtype="auto" picks here. Then starts fresh processes that import, load the
default model and embed one sentence, and prints their wall time and peak memory (median of --repeats).

An AVX2-only CPU can be imitated on an AVX-512 one (PyTorch's kernels, oneDNN's and MKL's all capped at AVX2; int8's
FBGEMM kernels are not, so its figure stays the AVX-512 one):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/encode_speed.py
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import copy
import json

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert import SentenceTransformer  # noqa: E402
from minisbert.checkpoint import default_model_folder  # noqa: E402
from minisbert.data import distinct_sentences, read_sts_benchmark  # noqa: E402
from minisbert.evaluate import sts_correlations  # noqa: E402
from minisbert.hardware import auto_dtype, cpu_capabilities  # noqa: E402

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


def quantized_int8(encoder):
    """PyTorch's dynamic int8 quantization of every linear layer, weights per output channel (a copy)."""
    import warnings

    from torch import nn
    with warnings.catch_warnings():  # torch.ao.quantization's notice that it moves to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        return quantize_dynamic(copy.deepcopy(encoder), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def reference_spearman(folder, examples, batch_size) -> float:
    """sentence-transformers' own STS evaluation of the model, fp32."""
    from sentence_transformers import SentenceTransformer as Reference
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    evaluator = EmbeddingSimilarityEvaluator([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                             [e.label for e in examples], batch_size=batch_size, name="test")
    result = evaluator(Reference(str(folder), device="cpu"))
    return result[f"{evaluator.primary_metric}"] if evaluator.primary_metric in result else result["test_spearman_cosine"]


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
          f"torch {torch.__version__}")
    print("CPU: " + json.dumps(cpu_capabilities()) + "\n")
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

    # the candidates for the fastest accurate CPU path, each with its STS benchmark test Spearman
    test = read_sts_benchmark(args.data / "stsbenchmark" / "sts-test.csv")
    candidates = {"fp32": (SentenceTransformer(folder), "fp32"), "bf16": (SentenceTransformer(folder), "bf16")}
    int8 = SentenceTransformer(folder)
    int8.encoder = quantized_int8(int8.encoder)
    candidates["int8 (dynamic, per channel)"] = (int8, "fp32")
    print(f"\nSTS benchmark test, Spearman x 100 (sentence-transformers fp32: "
          f"{100 * reference_spearman(folder, test, args.batch_size):.2f})")
    spearman = {}
    for name, (model, dtype) in candidates.items():
        rate, _ = throughput(lambda s, b: model.encode(s, batch_size=b, dtype=dtype), sentences, args.batch_size)
        spearman[name] = 100 * sts_correlations(model, test, args.batch_size, dtype)["spearman"]
        print(f"minisbert {name:<28}{rate:>6.0f} sent/s {rate / rates['fp32'][0]:>6.2f}x s-t fp32   Spearman "
              f"{spearman[name]:.2f} ({spearman[name] - spearman['fp32']:+.2f})")
    print(f"dtype='auto' picks {auto_dtype('cpu')} here")

    print(f"\ncold start (fresh process: import, load, embed one sentence), median of {args.repeats}")
    results = {name: cold_start(name, folder, args.repeats) for name in COLD_START}
    for name, (seconds, megabytes) in results.items():
        print(f"{name:<24}{seconds:>7.2f} s{megabytes:>9.0f} MiB peak RSS")
    (ref_s, ref_mb), (our_s, our_mb) = results["sentence-transformers"], results["minisbert"]
    print(f"{'ratio (minisbert / s-t)':<24}{our_s / ref_s:>7.2f}x{our_mb / ref_mb:>11.2f}x")


if __name__ == "__main__":
    main()
