"""dtype="auto": bf16 only where the CPU runs bf16 products faster than fp32 and nothing caps their use, fp32
elsewhere."""

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from minisbert import SentenceTransformer, hardware


@pytest.fixture(scope="module")
def model(minilm_folder):
    return SentenceTransformer(minilm_folder)


@pytest.mark.parametrize("vendor, flags, kernels, onednn, expected", [
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "AVX512", None, "bf16"),  # Zen 4: bf16 products 1.7x fp32's
    ("GenuineIntel", {"avx2", "amx_bf16", "avx512f", "avx512_bf16"}, "AVX512", None, "bf16"),
    # Intel's AVX-512 bf16 without AMX: its bf16 products ran at half fp32's speed (hardware.fast_cpu_bf16)
    ("GenuineIntel", {"avx2", "avx512f", "avx512_bf16", "avx512_fp16"}, "AVX512", None, "fp32"),
    ("GenuineIntel", {"avx2", "amx_bf16", "avx512f", "avx512_bf16"}, "AVX512", "avx512_core_bf16", "fp32"),  # no AMX
    ("GenuineIntel", {"avx2", "amx_bf16", "avx512f", "avx512_bf16"}, "AVX512", "avx512_core_amx", "bf16"),
    ("AuthenticAMD", {"avx2", "fma"}, "AVX2", None, "fp32"),  # an AVX2-only CPU: bf16 is emulated, about 5x slower
    ("GenuineIntel", {"avx2", "avx512f"}, "AVX512", None, "fp32"),  # AVX-512 without its bf16 extension
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "AVX2", None, "fp32"),  # PyTorch's kernels capped at AVX2
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "AVX512", "AVX2", "fp32"),  # oneDNN capped below bf16
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "AVX512", "avx512_core_bf16", "bf16"),
    (None, set(), "DEFAULT", None, "fp32"),  # no /proc/cpuinfo (not Linux)
])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_faster_than_fp32(monkeypatch, pretend_cpu, vendor, flags,
                                                                    kernels, onednn, expected):
    pretend_cpu(flags, onednn, vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    assert hardware.auto_dtype("cpu") == expected


@pytest.mark.parametrize("vendor, flags, onednn, expected", [
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, None, True),  # Zen 4: oneDNN's AVX-512 beats MKL's
    ("AuthenticAMD", {"avx2", "avx512f"}, "avx512_core", True),
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "AVX2", False),  # oneDNN capped: MKL's products are faster
    ("AuthenticAMD", {"avx2", "fma"}, None, False),  # an AVX2-only CPU
    ("GenuineIntel", {"avx2", "avx512f", "amx_bf16"}, None, False),  # MKL runs AVX-512 on Intel's CPUs
    (None, set(), None, False),  # no /proc/cpuinfo
])
def test_fp32_products_are_fused_where_that_was_measured_faster(monkeypatch, pretend_cpu, vendor, flags, onednn,
                                                               expected):
    pretend_cpu(flags, onednn, vendor)
    assert hardware.fused_fp32_products() == expected


@pytest.mark.parametrize("fused_fp32, fused_products, dtype, expected", [
    (True, None, torch.float32, True), (False, None, torch.float32, False),
    (False, None, torch.bfloat16, True),  # bf16 products run on oneDNN either way
    (False, True, torch.float32, True), (True, False, torch.float32, False), (True, False, torch.bfloat16, False),
])
def test_a_layer_fuses_its_products_as_the_cpu_or_its_setting_says(monkeypatch, model, fused_fp32, fused_products,
                                                                   dtype, expected):
    from minisbert import encoder
    if not encoder.onednn_products(torch.float32) or not encoder.onednn_products(torch.bfloat16):
        pytest.skip("oneDNN's fused products do not run here")
    monkeypatch.setattr(encoder, "fused_fp32_products", lambda: fused_fp32)
    layer = model.encoder.layers[0]
    monkeypatch.setattr(layer, "fused_products", fused_products)
    with torch.inference_mode():
        assert layer.fuses_on_cpu(torch.zeros(2, layer.query.in_features, dtype=dtype)) == expected


def test_auto_honours_a_cap_on_pytorchs_kernels_set_in_the_environment():
    code = "from minisbert.hardware import auto_dtype; print(auto_dtype('cpu'))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fp32"


def test_the_capabilities_name_the_cpu_and_its_flags():
    capabilities = hardware.cpu_capabilities()
    assert set(hardware.FLAGS) <= set(capabilities)
    assert capabilities["torch_kernels"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):
        assert capabilities["avx2"] == ("avx2" in open("/proc/cpuinfo").read())


def test_encode_with_auto_equals_encode_with_the_dtype_it_picks(model):
    texts = ["A man is playing guitar.", "", "Ça va très bien", "word " * 80]
    picked = hardware.auto_dtype("cpu")
    np.testing.assert_array_equal(model.encode(texts, dtype="auto"), model.encode(texts, dtype=picked))


def test_an_unknown_dtype_lists_auto_among_the_choices(model):
    with pytest.raises(ValueError, match="not one of auto, fp32"):
        model.encode(["x"], dtype="int4")


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_two_batches_in_flight_keep_the_order_and_restore_the_thread_count(two_threads):
    seen = hardware.in_flight(lambda i: (i, torch.get_num_threads()), range(7), torch.device("cpu"))
    items, counts = zip(*seen)
    assert items == tuple(range(7))
    assert set(counts) == ({1} if hardware.openmp_threads() else {2})
    assert torch.get_num_threads() == 2


def test_an_error_in_a_batch_in_flight_reaches_the_caller_and_stops_the_threads(two_threads):
    def fails_at_three(i):
        if i == 3:
            raise ValueError("batch 3")
        return i

    before = threading.active_count()
    with pytest.raises(ValueError, match="batch 3"):
        list(hardware.in_flight(fails_at_three, range(9), torch.device("cpu")))
    assert torch.get_num_threads() == 2
    assert threading.active_count() == before


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_batches_in_flight_embed_as_one_batch_at_a_time(model, two_threads, monkeypatch, dtype):
    texts = [f"text number {i}: " + "word " * (i % 37) for i in range(90)] + ["", "A man is playing guitar."]
    in_flight = model.encode(texts, batch_size=8, dtype=dtype)
    tokens_in_flight = model.encode(texts, batch_size=8, dtype=dtype, output_value="token_embeddings")
    monkeypatch.setattr(hardware, "IN_FLIGHT", False)
    np.testing.assert_allclose(in_flight, model.encode(texts, batch_size=8, dtype=dtype), atol=1e-5)
    for ours, serial in zip(tokens_in_flight, model.encode(texts, batch_size=8, dtype=dtype,
                                                           output_value="token_embeddings")):
        torch.testing.assert_close(ours, serial, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", pytest.param("int8", marks=pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="int8 runs on x86 CPUs only"))])
def test_the_low_precision_copy_follows_the_weights(minilm_folder, dtype):
    # encode(dtype=...) runs a cached copy of the weights in that type: a weight changed in place (an optimizer's
    # step, load_state_dict) must reach it, or the embeddings are silently the old model's
    model = SentenceTransformer(minilm_folder)
    texts = ["A man is playing a guitar.", "A woman slices an onion.", "The cat sleeps on the sofa."]
    before = model.encode(texts, dtype=dtype)
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.intermediate.weight.mul_(-1.5)  # in place, as an optimizer changes it
    changed_fp32, changed = model.encode(texts), model.encode(texts, dtype=dtype)
    assert np.abs(changed - before).max() > 0.05  # the change reached the copy...
    assert (changed * changed_fp32).sum(1).min() > 0.99  # ...and the copy computes the changed model
    model.load_state_dict(saved)
    np.testing.assert_allclose(model.encode(texts, dtype=dtype), before, atol=1e-6, rtol=0)
