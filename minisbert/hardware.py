"""What the processor can do, the compute type `dtype="auto"` picks from it, whether fp32 products are fused
(fused_fp32_products), and how encode() shares its threads.

On the CPU, bf16 matrix products are fast only with AMX, or with AVX-512 bf16 on AMD's CPUs (about 1.7x fp32 on
the AMD EPYC we measured). On an Intel Xeon with AVX-512 bf16 but no AMX they ran at 0.54-0.60x fp32's speed (see
fast_cpu_bf16), and elsewhere PyTorch emulates them: on an AVX2-only CPU bf16 runs about 5x slower than fp32, on an
Intel Xeon with AVX-512 but no bf16 instructions (Ice Lake's set) at 0.37x fp32's speed (the README). So "auto" is
bf16 where it is fast (fast_cpu_bf16) and fp32 elsewhere, never a type that is slower than fp32 on this machine. fp16
runs on the CPU only when asked for: at best it ran at fp32's speed (an Intel Xeon with AVX-512 fp16; the README). On
a GPU it is bf16 (fp16 where the GPU has no bf16): within 10% of fp16's speed on an H200, and no overflow.
The limits a user or a benchmark sets on the instructions used are honoured: ATEN_CPU_CAPABILITY (PyTorch's
own kernels) and ONEDNN_MAX_CPU_ISA (oneDNN's, which run the bf16 products).
On the CPU encode() keeps two batches in flight, each on half of PyTorch's threads (in_flight).
"""

import functools
import os
import queue
import threading
from pathlib import Path

import torch

# the instructions that matter for our compute types, as /proc/cpuinfo names them
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "avx512_fp16",
         "amx_fp16")
# oneDNN's ISA names that still include AVX-512 bf16 (ONEDNN_MAX_CPU_ISA caps oneDNN at one of them)
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                    "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
# and those that include AMX (its tile instructions: bf16 and int8 products)
ONEDNN_AMX_ISAS = ("AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                   "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
# and those that include AVX-512 VNNI, or AVX-VNNI (the 256-bit one, which comes before AVX-512 in oneDNN's order)
ONEDNN_AVX512_VNNI_ISAS = ("AVX512_CORE_VNNI",) + ONEDNN_BF16_ISAS
ONEDNN_AVX_VNNI_ISAS = ("AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE") + ONEDNN_AVX512_VNNI_ISAS
# and those that include AVX-512 (the core set: fp32 products)
ONEDNN_AVX512_ISAS = ("AVX512_CORE",) + ONEDNN_AVX512_VNNI_ISAS
IN_FLIGHT = True  # encode() on the CPU keeps two batches in flight (in_flight); benchmarks turn it off


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty where that file is not there."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.cache
def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_capabilities() -> dict:
    """The processor's name, the flags in FLAGS it has, the vector width PyTorch's kernels use here, and the bits
    dtype="int8" gives the weights here."""
    return {"cpu": _cpuinfo().get("model name", "unknown"), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_kernels": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "not set"),
            **{flag: flag in cpu_flags() for flag in FLAGS}, "int8_weight_bits": int8_weight_bits()}


def onednn_cap() -> str:
    """The instruction set oneDNN is capped at (ONEDNN_MAX_CPU_ISA, upper case), ALL where none is set."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()


def fast_cpu_bf16() -> bool:
    """Whether bf16 matrix products run faster than fp32's here: on AMX, or on AVX-512 bf16 on a CPU that is not
    Intel's. On an Intel Xeon with AVX-512 bf16 and fp16 but no AMX, oneDNN's bf16 products (avx512_core_bf16) ran
    at 0.54-0.60x MKL's fp32 ones at all-MiniLM-L6-v2's shapes (benchmarks/product_speed.py), and whole encodings
    at 0.70x (benchmarks/encode_speed.py; see the README): there one core issued 512-bit bf16 dot products
    (VDPBF16PS, 64 flops each) at a quarter of the rate of fp32 multiply-adds (32 flops each), so half the flops.
    On an AMD EPYC (Zen 4) bf16 products ran at about 1.7x fp32's."""
    flags = cpu_flags()
    torch_uses_avx512 = torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "NO AVX", "ZVECTOR")
    amx = "amx_bf16" in flags and onednn_cap() in ONEDNN_AMX_ISAS
    avx512_bf16 = ("avx512_bf16" in flags and onednn_cap() in ONEDNN_BF16_ISAS
                   and _cpuinfo().get("vendor_id") != "GenuineIntel")
    return torch_uses_avx512 and (amx or avx512_bf16)


def fused_fp32_products() -> bool:
    """Whether fp32 products at inference run faster through oneDNN, which adds the bias, the activation and the
    residual in the product's own pass (encoder.Layer.fused_forward), than as F.linear (MKL) and passes of their own.
    Measured on whole encodings of all-MiniLM-L6-v2 (benchmarks/encode_speed.py --unfused): on an AMD EPYC (Zen 4)
    1.02-1.13x over five runs, oneDNN running AVX-512; with oneDNN and MKL capped at AVX2 on the same EPYC 0.94x and
    0.89x (see the README); on Intel Xeons, where MKL runs AVX-512 too, 0.94-1.00x with AMX and 0.96x without bf16
    instructions. So: where oneDNN may run AVX-512 and the CPU is not Intel's."""
    avx512 = "avx512f" in cpu_flags() and onednn_cap() in ONEDNN_AVX512_ISAS
    return avx512 and _cpuinfo().get("vendor_id") != "GenuineIntel"


def int8_weight_bits() -> int:
    """8 where oneDNN's int8 products run on VNNI instructions, which add up uint8 x int8 products in int32; 7
    elsewhere, where they go through an instruction that sums pairs into int16 and would saturate (see int8.py)."""
    flags = cpu_flags()
    cap = onednn_cap()
    has_vnni = (("avx512_vnni" in flags and cap in ONEDNN_AVX512_VNNI_ISAS)
                or ("avx_vnni" in flags and cap in ONEDNN_AVX_VNNI_ISAS))
    return 8 if has_vnni else 7


def auto_dtype(device: torch.device | str) -> str:
    """The fastest compute type that stays accurate (see the module's docstring) on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if fast_cpu_bf16() else "fp32"
    return "fp32"


@functools.cache
def openmp_threads() -> bool:
    """Whether PyTorch's threads come from OpenMP, whose thread count (torch.set_num_threads) is each thread's own."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def in_flight(function, items, device: torch.device):
    """function(item) for each item, the results in order. On the CPU, where PyTorch's threads come from OpenMP,
    two threads take every other item, each on half of PyTorch's threads (one each on 2 cores): one batch's serial
    stretches (Python between operators, operators too small to share out, the threads' meeting points) then
    overlap the other's. benchmarks/encode_speed.py --serial, all-MiniLM-L6-v2, batches of 32, 2 cores of an AMD
    EPYC: 1.15x in int8 and 1.10x in fp32 against one batch at a time on both threads (1.16x and 1.12x with the
    kernels capped at AVX2; see the README); the embeddings are the same. The half count is set here before the
    two threads start, and they begin with it (PyTorch starts a thread with the count last set); set in the two
    threads themselves instead, they ran no faster than one batch at a time. Threads started elsewhere meanwhile
    also begin with the half count."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(items) < 2 or not IN_FLIGHT or not openmp_threads():
        yield from map(function, items)
        return
    results = [queue.SimpleQueue(), queue.SimpleQueue()]
    stop = threading.Event()

    def work(first: int):
        for item in items[first::2]:
            if stop.is_set():
                return
            try:
                results[first].put((function(item), None))
            except BaseException as error:  # raised by the caller, in order
                results[first].put((None, error))
                return

    workers = [threading.Thread(target=work, args=(first,), daemon=True) for first in (0, 1)]
    torch.set_num_threads(threads // 2)
    try:
        for worker in workers:
            worker.start()
        for i in range(len(items)):
            result, error = results[i % 2].get()
            if error is not None:
                raise error
            yield result
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.join()
        torch.set_num_threads(threads)
