"""Attention on the CPU by row length: PyTorch's fused kernel, the two products, and the encoder's choices.

    python benchmarks/attention_lengths.py [--threads 2] [--batch 32] [--heads 12] [--head-dim 32] [--repeats 60]

Times F.scaled_dot_product_attention (batch of --batch rows, --heads heads of --head-dim, a boolean key mask with rows
of random real lengths) for every row length from 4 to 64, in fp32 and bf16 (bf16 only where hardware.fast_cpu_bf16),
and encoder.attention_products (two batched products and a softmax) on the same rows. Prints for each length both
times, then what the encoder runs (Layer.attends_with_products, at the length encoder.attention_length picks), its time
and its ratio to the fused kernel at the length itself: below 1.00x where the encoder's choice pays. Prints what the
CPU has first.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert.encoder import Layer, attention_length, attention_products  # noqa: E402
from minisbert.hardware import cpu_capabilities, fast_cpu_bf16  # noqa: E402


def attention_time(length: int, dtype: torch.dtype, products: bool, args) -> float:
    """Microseconds per call at rows `length` long, through the fused kernel or the two products (the best of three
    timings of --repeats calls each)."""
    q, k, v = (torch.randn(args.batch, args.heads, length, args.head_dim, dtype=dtype) for _ in range(3))
    real = torch.randint(length // 2 + 1, length + 1, (args.batch,))
    mask = (torch.arange(length)[None, :] < real[:, None])[:, None, None, :]
    attend = attention_products if products else lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[3])
    for _ in range(3):
        attend(q, k, v, mask)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(args.repeats):
            attend(q, k, v, mask)
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
            times = {}  # (length, products) -> us

            def timed(length: int, products: bool) -> float:
                if (length, products) not in times:
                    times[length, products] = attention_time(length, dtype, products, args)
                return times[length, products]

            print(f"\n{dtype}: length, fused us, products us | the encoder's choice: length, path, us, ratio to fused")
            for length in range(4, 65):
                picked = attention_length(length, torch.empty(0), training=False)
                products = Layer.attends_with_products(torch.empty(1, 1, picked, 1, dtype=dtype), 0.0)
                chosen = timed(picked, products)
                print(f"{length:4d} {timed(length, False):8.0f} {timed(length, True):8.0f}   | {picked:4d} "
                      f"{'products' if products else 'fused':>8} {chosen:8.0f} {chosen / timed(length, False):5.2f}x")


if __name__ == "__main__":
    main()
