"""Compile the fused top-k kernel for an H100 (sm_90) without a GPU and print ptxas's register and spill report.

    python benchmarks/kernel_registers.py          # needs triton (pip install triton); no GPU
    python benchmarks/kernel_registers.py --tiles  # also each setting benchmarks/gpu_check.py --tune-seconds tries

For each dtype and k, the kernel is compiled with the launch settings `topk_kernel.launch_config` would use, then
assembled by the ptxas that ships with Triton. A spill in the main loop (stores to the stack) costs speed. It is
compiled as Triton's JIT compiles it for a search whose sizes are multiples of 16 (10,000 x 1,000,000 x 384, say):
the pointers and those sizes known to be multiples of 16, which is what lets the loads be vectorised and pipelined
(without that knowledge the loads are not pipelined and the report shows spills the GPU never runs). "pipelined
loads" counts the asynchronous copies into shared memory that Triton's software pipelining writes: 0 means every tile
waits for its loads. "shared memory" is what one program takes (227 KB at most on an H100, 164 on an A100, about 100
on consumer GPUs: where a setting needs more, the search steps down to a smaller one, see topk_kernel.smaller_setting).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert import topk_kernel  # noqa: E402

POINTERS = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
DIM = 384  # all-MiniLM-L6-v2's, and the GPU check's search


def ptxas() -> Path:
    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    # the newest assembler understands the PTX version the newest Triton writes
    return next(p for p in (folder / "ptxas-blackwell", folder / "ptxas") if p.exists())


def compile_for_hopper(dtype: torch.dtype, k: int, **overrides):
    """The kernel compiled for sm_90 (Triton's front end, then PTX and ptxas), with launch_config's settings for
    `dtype` and `k` and any `overrides` (FP32_PRECISION="tf32x3", say). No GPU needed: a construct that the GPU
    compiler refuses but the interpreter accepts fails here."""
    return compile_with_options(dtype, topk_kernel.kernel_options(
        {**topk_kernel.launch_config(dtype, k), **overrides}, DIM))


def compile_with_options(dtype: torch.dtype, options: dict):
    """The kernel compiled for sm_90 with `options` as the kernel takes them (topk_kernel.kernel_options's)."""
    kernel = topk_kernel._cosine_top_k_kernel
    config = dict(options)
    compiler_options = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages"),
                        **topk_kernel.COMPILER_OPTIONS}
    config["EXCLUDE_SELF"] = False
    signature = {"query_ptr": POINTERS[dtype], "corpus_ptr": POINTERS[dtype], "query_scale_ptr": "*fp32",
                 "corpus_scale_ptr": "*fp32", "out_scores_ptr": "*fp32", "out_ids_ptr": "*i32", "n_queries": "i32",
                 "n_corpus": "i32", "dim": "i32", "rows_per_split": "i32", "n_splits": "i32", "self_offset": "i32",
                 **{name: "constexpr" for name in config}}
    # what the JIT knows of aligned tensors and of sizes that are multiples of 16 (rows_per_split is 250,000 for
    # 10,000 x 1,000,000: four slices)
    aligned = [name for name, kind in signature.items() if kind.startswith("*")]
    aligned += ["n_queries", "n_corpus", "dim", "rows_per_split"]
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in config.items()},
                       attrs={(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=compiler_options)


def report(dtype: torch.dtype, k: int, **overrides) -> str:
    compiled = compile_for_hopper(dtype, k, **overrides)
    with tempfile.TemporaryDirectory() as scratch:
        ptx = Path(scratch) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        out = subprocess.run([str(ptxas()), "-arch=sm_90a", "-v", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
                             capture_output=True, text=True, check=True).stderr
    ptxas_says = " | ".join(line.split("info    :")[-1].strip() for line in out.splitlines()
                            if "registers" in line or "spill" in line)
    return (f"pipelined loads {pipelined_loads(compiled)} | shared memory {compiled.metadata.shared / 1024:.0f} KB | "
            f"{ptxas_says}")


def pipelined_loads(compiled) -> int:
    """How many asynchronous copies to shared memory Triton's pipelining wrote into the compiled kernel."""
    return compiled.asm["ttgir"].count("ttg.async_copy_global_to_local")


def main():
    print(f"triton {triton.__version__}, sm_90")
    for dtype in POINTERS:
        for k in (10, 32, 100):
            print(f"{str(dtype)[6:]:<9} k={k:<4} {report(dtype, k)}", flush=True)
    if "--tiles" in sys.argv[1:]:
        from gpu_check import TILES, describe
        dtypes = {"fp32": torch.float32, "fp16": torch.float16}
        for dtype, overrides in TILES:
            settings = {**topk_kernel.launch_config(dtypes[dtype], 10), **overrides}
            held = f" (held in {triton.cdiv(DIM, settings['BLOCK_D'])} slices)" if settings["HOLD_QUERIES"] else ""
            try:
                found = report(dtypes[dtype], 10, **overrides)
            except RuntimeError as error:  # FLATTEN before Triton 3.9
                found = f"refused: {error}"
            print(f"{dtype} {describe(settings)}{held} k=10  {found}", flush=True)

if __name__ == "__main__":
    main()
