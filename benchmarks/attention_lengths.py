"""PyTorch's fused attention on the CPU by row length, and what encoder.attention_length makes of each length.

    python benchmarks/attention_lengths.py [--threads 2] [--batch 32] [--heads 12] [--head-dim 32] [--repeats 60]

Times F.scaled_dot_product_attention (batch of --batch rows, --heads heads of --head-dim, a boolean key mask with rows
of random real lengths) for every row length from 4 to 64, in fp32 and bf16 (bf16 only where hardware.fast_cpu_bf16),
and prints for each length its time, the time at the length attention_length picks, and their ratio: below 1.00x where
lengthening the rows pays. Prints what the CPU has first.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert.encoder import attention_length  # noqa: E402
from minisbert.hardware import cpu_capabilities, fast_cpu_bf16  # noqa: E402


def attention_time(length: int, dtype: torch.dtype, args) -> float:
    """Microseconds per call at rows `length` long (the best of three timings of --repeats calls each)."""
    q, k, v = (torch.randn(args.batch, args.heads, length, args.head_dim, dtype=dtype) for _ in range(3))
    real = torch.randint(length // 2 + 1, length + 1, (args.batch,))
    mask = (torch.arange(length)[None, :] < real[:, None])[:, None, None, :]
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(args.repeats):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        timings.append((time.perf_counter() - start) / args.repeats * 1e6)
    return min(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_capabilities()}")
    print(f"batch {args.batch}, {args.heads} heads of {args.head_dim}, torch {torch.__version__}")
    dtypes = [torch.float32] + ([torch.bfloat16] if fast_cpu_bf16() else [])
    with torch.inference_mode():
        for dtype in dtypes:
            times = {}
            print(f"\n{dtype}: length, us, length attention_length picks, its us, ratio")
            for length in range(4, 65):
                picked = attention_length(length, torch.empty(0), training=False)
                for n in (length, picked):
                    if n not in times:
                        times[n] = attention_time(n, dtype, args)
                print(f"{length:4d} {times[length]:8.0f}   {picked:4d} {times[picked]:8.0f}   "
                      f"{times[picked] / times[length]:5.2f}x")


if __name__ == "__main__":
    main()
