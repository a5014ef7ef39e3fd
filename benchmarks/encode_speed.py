"""Encoding speed and cold start: minisbert against sentence-transformers, same model, threads and batch size.

    python benchmarks/encode_speed.py [--data ../shared/data] [--threads 2] [--batch-size 32] [--limit N] [--rounds 3]
                                      [--chunk 1000] [--unfused] [--serial] [--fp16] [--unpacked] [--paths NAME ...]

Prints what the CPU has (the instructions that decide which compute type is fast). Embeds the distinct sentences of
the STS benchmark (15,487), --rounds times, chunk by chunk (--chunk sentences): each chunk along every path in turn, in
the opposite order for the next chunk, so that the machine's load, which drifts over minutes on a shared machine,
weighs on every path alike; a path's rate is the sentences it embedded over the sum of its times. The paths:
sentence-transformers in fp32, bf16 and int8
(PyTorch's dynamic quantization of its linear layers, weights per channel: what a user of sentence-transformers would
do for int8 in PyTorch), and minisbert in fp32, bf16 and int8 (minisbert/int8.py); prints each path's
sentences/s, its ratio to sentence-transformers fp32, its STS benchmark test Spearman and its agreement with
sentence-transformers, and what dtype="auto" picks here. With --unfused, also minisbert fp32 with the products fp32
does not take here (hardware.fused_fp32_products): "unfused", plain F.linear calls followed by the GELU and the
residual, where fp32 takes oneDNN's fused products, and "fused" where it does not. With --serial,
also minisbert fp32 and int8 one batch at a time on all the threads (what two batches in flight gain, see
hardware.in_flight). With --fp16, also both libraries in fp16, which both run on the CPU when asked (minisbert's
dtype="auto" never picks it there). With --unpacked, also minisbert bf16 with its products' weights left in
their own layout, which oneDNN then reorders at every call (what Layer.pack_weights gains). --paths keeps only the
paths named (and sentence-transformers fp32, the baseline): with seven paths or more in turn, two paths' difference
can vanish that shows when they alternate alone. Then starts fresh processes that import, load the
default model and embed one sentence, and prints their wall time and peak memory (median of --repeats).

An AVX2-only CPU can be imitated on an AVX-512 one (PyTorch's kernels, oneDNN's and MKL's all capped at AVX2;
minisbert's int8 runs on oneDNN, so it is capped too, but PyTorch's dynamic quantization runs on FBGEMM, which is not,
so that row stays an AVX-512 figure):
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
from minisbert import SentenceTransformer, hardware  # noqa: E402
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


def timed(encode, sentences, batch_size):
    start = time.perf_counter()
    embeddings = encode(sentences, batch_size)
    return time.perf_counter() - start, embeddings


def cold_start(name: str, model_folder: Path, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        program = COLD_START_PROGRAM.format(import_line=COLD_START[name])
        out = subprocess.run([sys.executable, "-c", program, str(model_folder)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
        runs.append(tuple(map(float, out.stdout.split()[-2:])))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def quantized_int8(model):
    """PyTorch's dynamic int8 quantization of every linear layer, weights per output channel (a copy)."""
    import warnings

    from torch import nn
    with warnings.catch_warnings():  # torch.ao.quantization's notice that it moves to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def reference_spearman(model, examples, batch_size) -> float:
    """sentence-transformers' own STS evaluation of `model` (a sentence-transformers model)."""
    try:
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    except ImportError:  # sentence-transformers before 6.1
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    evaluator = EmbeddingSimilarityEvaluator([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                             [e.label for e in examples], batch_size=batch_size, name="test")
    result = evaluator(model)
    return result[f"{evaluator.primary_metric}"] if evaluator.primary_metric in result else result["test_spearman_cosine"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MINISBERT_DATA", "../shared/data")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="embed only the first N sentences")
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per library")
    parser.add_argument("--rounds", type=int, default=3, help="times each path embeds all the sentences")
    parser.add_argument("--chunk", type=int, default=1000, help="sentences each path embeds in turn")
    parser.add_argument("--unfused", action="store_true",
                        help="also time minisbert fp32 with the products fp32 does not take here: unfused (plain "
                             "F.linear, then GELU and residual) where it takes oneDNN's fused ones, else fused, to "
                             "measure what the choice (hardware.fused_fp32_products) gains")
    parser.add_argument("--serial", action="store_true",
                        help="also time minisbert fp32 and int8 one batch at a time on all the threads, to measure "
                             "what two batches in flight gain (hardware.in_flight)")
    parser.add_argument("--fp16", action="store_true", help="also time both libraries in fp16")
    parser.add_argument("--paths", nargs="+", metavar="NAME",
                        help="time only these paths (as the table names them) and sentence-transformers fp32, the "
                             "baseline: fewer paths in turn, closer to one model running alone")
    parser.add_argument("--unpacked", action="store_true",
                        help="also time minisbert bf16 with its products' weights not packed for oneDNN, to measure "
                             "what packing them gains (encoder.Layer.pack_weights)")
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
    reference = Reference(str(folder), device="cpu")
    reference_bf16 = Reference(str(folder), device="cpu").bfloat16()
    reference_int8 = quantized_int8(reference)
    ours = SentenceTransformer(folder)

    def theirs(model):
        return lambda s, b: model.encode(s, batch_size=b, convert_to_tensor=True).float().numpy()

    # every path on each chunk in turn (see the docstring)
    paths = {"sentence-transformers fp32": theirs(reference), "sentence-transformers bf16": theirs(reference_bf16),
             "sentence-transformers int8": theirs(reference_int8),
             **{f"minisbert {dtype}": lambda s, b, dtype=dtype: ours.encode(s, batch_size=b, dtype=dtype)
                for dtype in ("fp32", "bf16", "int8")}}
    other_products = "unfused" if hardware.fused_fp32_products() else "fused"
    if args.unfused:
        other = SentenceTransformer(folder)
        for layer in other.encoder.layers:
            layer.fused_products = other_products == "fused"
        paths[f"minisbert fp32, {other_products}"] = lambda s, b: other.encode(s, batch_size=b)
    if args.fp16:
        reference_fp16 = Reference(str(folder), device="cpu").half()
        paths.update({"sentence-transformers fp16": theirs(reference_fp16),
                      "minisbert fp16": lambda s, b: ours.encode(s, batch_size=b, dtype="fp16")})
    if args.unpacked:
        unpacked = SentenceTransformer(folder)
        for layer in unpacked._encoder_in(torch.bfloat16).layers:
            for module in layer.modules():
                vars(module).pop("packed_weight", None)
        paths["minisbert bf16, unpacked"] = lambda s, b: unpacked.encode(s, batch_size=b, dtype="bf16")
    if args.serial:
        def serial(dtype):
            def encode(s, b):
                hardware.IN_FLIGHT = False
                try:
                    return ours.encode(s, batch_size=b, dtype=dtype)
                finally:
                    hardware.IN_FLIGHT = True
            return encode
        paths.update({f"minisbert {dtype}, serial": serial(dtype) for dtype in ("fp32", "int8")})
    if args.paths:
        unknown = sorted(set(args.paths) - set(paths))
        if unknown:
            parser.error(f"--paths: no path named {unknown}; the paths with these flags: {list(paths)}")
        paths = {name: encode for name, encode in paths.items()
                 if name in args.paths or name == "sentence-transformers fp32"}
    for encode in paths.values():
        encode(sentences[:64], args.batch_size)  # warm-up: allocator, kernels, lazily made copies
    seconds = dict.fromkeys(paths, 0.0)
    outputs = {name: [] for name in paths}  # each path's embeddings, from the last round
    chunks = [sentences[start:start + args.chunk] for start in range(0, len(sentences), args.chunk)]
    for turn in range(args.rounds * len(chunks)):
        chunk = chunks[turn % len(chunks)]
        for name in list(paths)[:: 1 if turn % 2 == 0 else -1]:
            taken, embeddings = timed(paths[name], chunk, args.batch_size)
            seconds[name] += taken
            if turn >= (args.rounds - 1) * len(chunks):
                outputs[name].append(embeddings)
    rates = {name: args.rounds * len(sentences) / taken for name, taken in seconds.items()}
    outputs = {name: np.concatenate(parts) for name, parts in outputs.items()}

    test = read_sts_benchmark(args.data / "stsbenchmark" / "sts-test.csv")
    spearman = {"sentence-transformers fp32": 100 * reference_spearman(reference, test, args.batch_size),
                "sentence-transformers int8": 100 * reference_spearman(reference_int8, test, args.batch_size),
                **{f"minisbert {dtype}": 100 * sts_correlations(ours, test, args.batch_size, dtype)["spearman"]
                   for dtype in ("fp32", "bf16", "int8") + (("fp16",) if args.fp16 else ())}}

    def cosine_to(name, other):
        a, b = outputs[name], outputs[other]
        return ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()

    agreement = {name: f"max |difference| to s-t fp32 "
                       f"{np.abs(outputs[name] - outputs['sentence-transformers fp32']).max():.1e}"
                 for name in ("minisbert fp32", f"minisbert fp32, {other_products}", "minisbert fp32, serial")
                 if name in outputs}
    agreement.update({
                 **{name: f"min cosine to s-t {dtype} {cosine_to(name, f'sentence-transformers {dtype}'):.4f}"
                    for dtype in ("bf16", "fp16") for name in (f"minisbert {dtype}", f"minisbert {dtype}, unpacked")
                    if name in outputs and f"sentence-transformers {dtype}" in outputs},
                 **{name: f"min cosine to s-t fp32 {cosine_to(name, 'sentence-transformers fp32'):.4f}"
                    for name in ("sentence-transformers int8", "minisbert int8", "minisbert int8, serial")
                    if name in outputs}})
    baseline = rates["sentence-transformers fp32"]
    print(f"{args.rounds} rounds in chunks of {args.chunk}, every path on each chunk in turn; "
          "STS benchmark test Spearman x 100\n")
    print(f"{'path':<30}{'sent/s':>8}{'/ s-t fp32':>12}{'Spearman':>10}   agreement")
    for name, rate in rates.items():
        score = f"{spearman[name]:.2f}" if name in spearman else "-"
        print(f"{name:<30}{rate:>8.0f}{rate / baseline:>11.2f}x{score:>10}   {agreement.get(name, '')}")
    picked = auto_dtype("cpu")
    if f"minisbert {picked}" in rates:
        gain = spearman[f"minisbert {picked}"] - spearman["minisbert fp32"]
        print(f"\ndtype='auto' picks {picked} here: {rates[f'minisbert {picked}'] / baseline:.2f}x "
              f"sentence-transformers fp32, Spearman {gain:+.2f} against fp32")
    accurate = [name for name in rates if name.startswith("minisbert") and name in spearman
                and spearman[name] >= spearman["minisbert fp32"] - 0.3]
    if accurate:
        fastest = max(accurate, key=rates.get)
        print(f"fastest minisbert path within 0.3 Spearman points of fp32: {fastest.split()[-1]}, "
              f"{rates[fastest] / baseline:.2f}x sentence-transformers fp32")
    print(f"\ncold start (fresh process: import, load, embed one sentence), median of {args.repeats}")
    results = {name: cold_start(name, folder, args.repeats) for name in COLD_START}
    for name, (seconds, megabytes) in results.items():
        print(f"{name:<24}{seconds:>7.2f} s{megabytes:>9.0f} MiB peak RSS")
    (ref_s, ref_mb), (our_s, our_mb) = results["sentence-transformers"], results["minisbert"]
    print(f"{'ratio (minisbert / s-t)':<24}{our_s / ref_s:>7.2f}x{our_mb / ref_mb:>11.2f}x")


if __name__ == "__main__":
    main()
