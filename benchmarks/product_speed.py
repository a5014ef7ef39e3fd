"""Matrix products on the CPU by compute type: what each type's products gain on this CPU, at a model's shapes.

    python benchmarks/product_speed.py [--threads 2] [--hidden 384] [--intermediate 1536] [--repeats 30]

Times an encoder layer's three product shapes (hidden -> hidden, hidden -> intermediate, intermediate -> hidden) on
256, 1,024 and 4,096 tokens, as the encoder runs them: fp32 through F.linear (MKL on Intel's CPUs), bf16 and fp16
through oneDNN's products on weights laid out once in its own order (encoder.Layer.pack_weights), int8 through
int8.Int8Linear (the activations' quantizing included). Prints each type's GFLOP/s and its ratio to fp32, what the
CPU has, and what hardware.fast_cpu_bf16 decides: bf16 should run faster than fp32 where it says True, and not where
it says False. The defaults are all-MiniLM-L6-v2's widths (bert-base: --hidden 768 --intermediate 3072).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert.encoder import onednn_packed_weights  # noqa: E402
from minisbert.hardware import cpu_capabilities, fast_cpu_bf16  # noqa: E402
from minisbert.int8 import Int8Linear, check_int8_support  # noqa: E402


def microseconds(product, repeats: int) -> float:
    """The best of three timings of `repeats` calls, per call."""
    for _ in range(3):
        product()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product()
        timings.append((time.perf_counter() - start) / repeats * 1e6)
    return min(timings)


def products(tokens: int, inputs: int, outputs: int) -> dict:
    """Each compute type's product of (tokens, inputs) activations with an (outputs, inputs) weight, as a function
    of no arguments; the types this PyTorch cannot run here are left out."""
    linear = nn.Linear(inputs, outputs)
    x = torch.randn(tokens, inputs)
    found = {"fp32": lambda: F.linear(x, linear.weight, linear.bias)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if onednn_packed_weights(dtype):
            weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(dtype))
            bias, x_low = linear.bias.detach().to(dtype), x.to(dtype)
            found[name] = lambda x=x_low, weight=weight, bias=bias: torch.ops.mkldnn._linear_pointwise(
                x, weight, bias, "none", [], "")
    try:
        check_int8_support()
    except ValueError:
        return found
    int8 = Int8Linear([linear])
    found["int8"] = lambda: int8(x)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_capabilities()}")
    print(f"torch {torch.__version__}, {args.threads} threads; hardware.fast_cpu_bf16(): {fast_cpu_bf16()}")
    print("\ntokens  in -> out     type  GFLOP/s  / fp32")
    shapes = [(args.hidden, args.hidden), (args.hidden, args.intermediate), (args.intermediate, args.hidden)]
    with torch.inference_mode():
        for tokens in (256, 1024, 4096):
            for inputs, outputs in shapes:
                rates = {name: 2 * tokens * inputs * outputs / microseconds(product, args.repeats) / 1e3
                         for name, product in products(tokens, inputs, outputs).items()}
                for name, rate in rates.items():
                    print(f"{tokens:6d} {inputs:4d} -> {outputs:4d} {name:>8} {rate:8.0f} {rate / rates['fp32']:6.2f}x")


if __name__ == "__main__":
    main()
