"""dtype="int8": the linear layers as oneDNN int8 products, equal to the integer arithmetic they stand for, with 7-bit
weights where the CPU has no VNNI; embeddings close to fp32's."""

import copy
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minisbert import SentenceTransformer, hardware, int8

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="oneDNN's int8 products are an x86 path")


def integer_arithmetic(layer: int8.Int8Linear, linears: list[nn.Linear], x: torch.Tensor, weight_bits: int,
                       divisors: torch.Tensor | None = None, per_row: bool = False):
    """What the int8 product stands for, in float64: the quantized input times the quantized weights, plus bias.
    With `divisors`, the input's columns are divided by them and the weights' columns multiplied; `per_row`, each
    row of the input has its own scale and zero point."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    if divisors is not None:
        x, weight = x / divisors, weight * divisors
    if per_row:
        x_q, scale, zero_point = int8.quantize_rows(x)
        scale, zero_point = scale[:, None].double(), zero_point[:, None].double()
    else:
        x_q, scale, zero_point = int8.quantize_activations(x)
    largest = 2 ** (weight_bits - 1) - 1
    weight_scale = weight.abs().amax(dim=1) / largest
    weight_q = torch.round(weight / weight_scale[:, None])  # in float32, as the layer rounds them
    assert weight_q.abs().max() <= largest
    return F.linear((x_q.double() - zero_point) * scale, weight_q.double() * weight_scale[:, None].double(),
                    layer.bias.double())


@pytest.mark.parametrize("tokens, inputs, outputs", [(1, 32, 8), (17, 384, 384), (300, 384, 1536), (64, 1536, 384)])
@pytest.mark.parametrize("weight_bits", [hardware.int8_weight_bits(), 7])
def test_the_int8_product_equals_the_integer_arithmetic(tokens, inputs, outputs, weight_bits):
    torch.manual_seed(tokens)
    linears = [nn.Linear(inputs, outputs), nn.Linear(inputs, outputs)]
    x = torch.randn(tokens, inputs) * 3 + 1
    residual = torch.randn(tokens, 2 * outputs)
    plain = int8.Int8Linear(linears, weight_bits)
    with_gelu = int8.Int8Linear(linears, weight_bits, hidden_act="gelu")
    expected = integer_arithmetic(plain, linears, x, weight_bits)
    tolerance = dict(rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(plain(x).double(), expected, **tolerance)
    torch.testing.assert_close(with_gelu(x).double(), F.gelu(expected), **tolerance)
    torch.testing.assert_close(plain(x, residual=residual).double(), expected + residual.double(), **tolerance)


def layer_norm_with_outliers(channels: int) -> nn.LayerNorm:
    """A LayerNorm as trained encoders have them: a few channels whose gamma and beta are far larger than the rest."""
    norm = nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
        norm.weight[:3] = torch.tensor([12.0, -9.0, 15.0])
        norm.bias[:3] = torch.tensor([-6.0, 4.0, 8.0])
    return norm


@pytest.mark.parametrize("tokens, inputs, outputs", [(1, 32, 8), (17, 384, 384), (300, 384, 1536)])
@pytest.mark.parametrize("weight_bits", [hardware.int8_weight_bits(), 7])
def test_with_smoothing_the_product_equals_the_integer_arithmetic_it_stands_for(tokens, inputs, outputs, weight_bits):
    torch.manual_seed(tokens)
    linears = [nn.Linear(inputs, outputs), nn.Linear(inputs, outputs)]
    norm = layer_norm_with_outliers(inputs)
    x = norm(torch.randn(tokens, inputs)).detach()
    residual = torch.randn(tokens, 2 * outputs)
    smoothed = int8.Int8Linear(linears, weight_bits, input_norm=norm)
    divisors = int8.smoothing(norm, linears)
    assert divisors.shape == (inputs,) and (divisors > 0).all()
    expected = integer_arithmetic(smoothed, linears, x, weight_bits, divisors=divisors)
    tolerance = dict(rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(smoothed(x).double(), expected, **tolerance)
    torch.testing.assert_close(smoothed(x, residual=residual).double(), expected + residual.double(), **tolerance)


@pytest.mark.parametrize("tokens, inputs, outputs", [(1, 32, 8), (17, 384, 384), (64, 1536, 384)])
@pytest.mark.parametrize("weight_bits", [hardware.int8_weight_bits(), 7])
def test_per_row_the_product_equals_the_integer_arithmetic_it_stands_for(tokens, inputs, outputs, weight_bits):
    torch.manual_seed(tokens)
    linears = [nn.Linear(inputs, outputs)]
    x = F.gelu(torch.randn(tokens, inputs) * 2) * torch.linspace(0.1, 30, tokens)[:, None]  # rows of unlike reach
    residual = torch.randn(tokens, outputs)
    per_row = int8.Int8Linear(linears, weight_bits, per_row=True)
    expected = integer_arithmetic(per_row, linears, x, weight_bits, per_row=True)
    tolerance = dict(rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(per_row(x).double(), expected, **tolerance)
    torch.testing.assert_close(per_row(x, residual=residual).double(), expected + residual.double(), **tolerance)


def relative_error(output: torch.Tensor, linear: nn.Linear, x: torch.Tensor) -> float:
    exact = F.linear(x.double(), linear.weight.double(), linear.bias.double())
    return ((output.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("weight_bits", [8, 7])
def test_smoothing_makes_a_layer_norms_output_with_outlier_channels_lose_less(weight_bits):
    torch.manual_seed(0)
    linear = nn.Linear(384, 384)
    norm = layer_norm_with_outliers(384)
    x = norm(torch.randn(200, 384)).detach()
    plain = relative_error(int8.Int8Linear([linear], weight_bits)(x), linear, x)
    smoothed = relative_error(int8.Int8Linear([linear], weight_bits, input_norm=norm)(x), linear, x)
    assert smoothed < plain / 2


@pytest.mark.parametrize("weight_bits", [8, 7])
def test_per_row_a_few_tokens_that_reach_far_cost_the_others_nothing(weight_bits):
    torch.manual_seed(0)
    linear = nn.Linear(1536, 384)
    x = F.gelu(torch.randn(200, 1536))
    x[::50] *= 40  # as the first token of each text often does
    others = x[1:50]
    per_tensor, per_row = int8.Int8Linear([linear], weight_bits), int8.Int8Linear([linear], weight_bits, per_row=True)
    torch.testing.assert_close(per_row(x)[1:50], per_row(others))  # each row on its own
    assert relative_error(per_tensor(x)[1:50], linear, others) > 3 * relative_error(per_row(others), linear, others)


def test_per_row_takes_no_activation_function():
    with pytest.raises(ValueError, match="per_row takes no hidden_act"):
        int8.Int8Linear([nn.Linear(8, 8)], hidden_act="gelu", per_row=True)


def test_activations_take_the_nearest_of_254_steps_and_zero_stays_exact():
    x = torch.cat([torch.linspace(-1.3, 4.1, 1000), torch.zeros(3)])[None, :].repeat(2, 1)
    x_q, scale, zero_point = int8.quantize_activations(x)
    assert x_q.dtype == torch.uint8 and x_q.min() <= 1 and x_q.max() - x_q.min() >= 254  # the whole range
    assert (x_q[:, -3:] == zero_point).all()
    error = ((x_q.double() - zero_point) * scale - x.double()).abs().max().item()
    assert error <= scale / 2 * (1 + 1e-5)


def test_conversion_to_uint8_rounds_every_value_in_range_to_the_nearest_integer():
    y = torch.cat([torch.arange(-0.5, 255.5, 0.25), torch.tensor([-0.4999, 0.4999, 0.5001, 254.5, 255.4999, 1e-7])])
    x_q = int8.to_uint8(torch.add(torch.tensor(int8.ROUNDING), y.reshape(10, -1)))  # as quantize_activations adds
    assert torch.equal(x_q.flatten(), torch.round(y).to(torch.int64).to(torch.uint8))  # halves to even, as round


def test_no_rounding_error_carries_a_value_out_of_the_range():
    """The zero point is rounded up, so the lowest value maps to [0, 1) and the highest below 255. Rounded to the
    nearest, a range whose low end scales to a half (-low / scale = k + 1/2) could, by float32's rounding, land
    just past it, round to -1 and wrap around to 255 (it did, for one of these ranges)."""
    torch.manual_seed(0)
    for _ in range(2000):
        low, k = -3 * torch.rand(()).item(), torch.randint(0, 254, ()).item()
        x = torch.tensor([[low, 0.0, low - low * 254 / (k + 0.5)]])
        for quantize in (int8.quantize_activations, int8.quantize_rows):
            x_q, scale, zero_point = quantize(x)
            zero_point = float(zero_point if isinstance(zero_point, int) else zero_point[0])
            scale = float(scale if isinstance(scale, float) else scale[0])
            error = ((x_q.double() - zero_point) * scale - x.double()).abs().max().item()
            assert error <= scale / 2 * (1 + 1e-4), (x, quantize.__name__)  # (float32 sums: a little over a half)


def test_all_positive_activations_start_the_range_at_zero():
    x_q, scale, zero_point = int8.quantize_activations(torch.rand(4, 8) + 1)
    assert zero_point == 0 and x_q.min() > 0


@pytest.mark.parametrize("quantize", [int8.quantize_activations, int8.quantize_rows,
                                      lambda x: int8.quantize_activations(x, divisors=torch.ones(x.shape[1]))])
def test_non_finite_activations_are_an_error(quantize):
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            quantize(torch.tensor([[1.0, value], [0.5, 2.0]]))


def test_each_row_takes_the_nearest_of_its_own_254_steps_and_zero_stays_exact():
    x = torch.cat([torch.linspace(-1.3, 4.1, 1000), torch.zeros(3)])[None, :] * torch.tensor([[1.0], [0.01], [50.0]])
    x_q, scales, zero_points = int8.quantize_rows(x)
    assert x_q.dtype == torch.uint8 and (x_q.amin(1) <= 1).all() and (x_q.amax(1) - x_q.amin(1) >= 254).all()
    assert (x_q[:, -3:] == zero_points[:, None]).all()
    torch.testing.assert_close(scales, (x.amax(1) - x.amin(1)) / 254)
    error = ((x_q.double() - zero_points[:, None]) * scales[:, None] - x.double()).abs().amax(1)
    assert (error <= scales / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("flags, onednn, expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, None, 8),
    ({"avx2", "avx_vnni"}, None, 8),  # the 256-bit VNNI of newer desktop CPUs
    ({"avx2", "fma"}, None, 7),  # AVX2 only: pairs summed into int16 would saturate
    ({"avx2", "avx512f"}, None, 7),  # AVX-512 before VNNI
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX2", 7),  # oneDNN capped below VNNI
    ({"avx2", "avx512f", "avx512_vnni"}, "avx512_core", 7),
    ({"avx2", "avx512f", "avx512_vnni", "avx_vnni"}, "AVX2_VNNI", 8),
    (set(), None, 7),  # no /proc/cpuinfo: assume the worst
])
def test_weights_take_7_bits_unless_onednn_can_use_vnni(pretend_cpu, flags, onednn, expected):
    pretend_cpu(flags, onednn)
    assert hardware.int8_weight_bits() == expected


def test_without_vnni_the_product_still_equals_the_integer_arithmetic():
    """oneDNN capped at AVX2, as on an AVX2-only CPU: the 7-bit weights chosen there do not saturate."""
    code = """
import torch
from torch import nn
from minisbert import hardware, int8
torch.manual_seed(0)
linear = nn.Linear(384, 1536)
x = torch.rand(100, 384) * 5  # GELU-like: non-negative, so the quantized inputs reach 255
bits = hardware.int8_weight_bits()
weight = linear.weight.detach()
weight_scale = weight.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
x_q, scale, zero_point = int8.quantize_activations(x)
weight_q = torch.round(weight / weight_scale[:, None]).double()
expected = torch.nn.functional.linear((x_q.double() - zero_point) * scale, weight_q * weight_scale[:, None].double(),
                                      linear.bias.double())
print(bits, (int8.Int8Linear([linear], bits)(x).double() - expected).abs().max().item() / expected.abs().max().item())
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    bits, relative_error = out.stdout.split()
    assert bits == "7" and float(relative_error) < 1e-5


@pytest.fixture(scope="module")
def model(minilm_folder):
    return SentenceTransformer(minilm_folder)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_embeddings_stay_close_to_sentence_transformers_fp32(model, minilm_folder, varied_texts):
    from sentence_transformers import SentenceTransformer as Reference
    reference = Reference(str(minilm_folder), device="cpu").encode(varied_texts, batch_size=4)
    ours = model.encode(varied_texts, batch_size=4, dtype="int8")
    assert ours.shape == reference.shape
    assert cosines(ours, reference).min() > 0.95
    # and not by accident: the texts are told apart as in fp32 (each one's nearest other text stays the same)
    similarity, reference_similarity = ours @ ours.T, reference @ reference.T
    np.fill_diagonal(similarity, -2)
    np.fill_diagonal(reference_similarity, -2)
    assert (similarity.argmax(1) == reference_similarity.argmax(1)).mean() >= 0.8


@pytest.mark.parametrize("folder", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_albert"])
def test_int8_runs_every_architecture_close_to_fp32(request, folder, varied_texts):
    model = SentenceTransformer(request.getfixturevalue(folder))
    fp32 = model.encode(varied_texts, dtype="fp32")
    assert cosines(model.encode(varied_texts, dtype="int8"), fp32).min() > 0.95


@pytest.mark.parametrize("name,model_type", [("tiny_t5", "t5"), ("tiny_modernbert", "modernbert")])
def test_int8_refuses_encoders_whose_layers_normalize_first(name, model_type, request):
    with pytest.raises(ValueError, match=f"dtype int8 runs encoders whose layers normalize last .* not {model_type}'s"):
        SentenceTransformer(request.getfixturevalue(name)).encode(["a text"], dtype="int8")


def test_the_int8_copy_follows_updates_of_the_weights(model, minilm_folder):
    fresh = SentenceTransformer(minilm_folder)
    before = fresh.encode(["A man is playing guitar."], dtype="int8")
    with torch.no_grad():
        fresh.encoder.layers[0].intermediate.weight.mul_(0.5)
    assert not np.allclose(fresh.encode(["A man is playing guitar."], dtype="int8"), before)


def test_int8_runs_in_worker_processes_after_it_ran_in_this_one(model):
    texts = ["A man is playing guitar.", "A woman slices tomatoes.", "x", "word " * 40]
    model.encode(texts, dtype="int8")  # the model now holds its int8 copy, which does not pickle
    in_workers = model.encode(texts, device=["cpu", "cpu"], dtype="int8")
    # not equal to this process's: the activations' range is the batch's, and the workers batch the texts otherwise
    assert cosines(in_workers, model.encode(texts, dtype="fp32")).min() > 0.95


def test_int8_is_refused_on_other_processors(model, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    fresh = SentenceTransformer(encoder=model.encoder, tokenizer=model.tokenizer)
    with pytest.raises(ValueError, match="int8 needs oneDNN's int8 kernels.*arm64"):
        fresh.encode(["x"], dtype="int8")


def test_int8_operators_that_do_not_run_are_a_clear_error(model, monkeypatch):
    def missing(*args, **kwargs):
        raise RuntimeError("onednn::qlinear_pointwise() is missing value for argument 'post_op_algorithm'")

    monkeypatch.setattr(int8.Int8Linear, "forward", missing)
    fresh = SentenceTransformer(encoder=model.encoder, tokenizer=model.tokenizer)
    with pytest.raises(ValueError, match=r"PyTorch .*'s oneDNN int8 operators do not run here \(onednn::"):
        fresh.encode(["x"], dtype="int8")


def test_int8_is_refused_off_the_cpu(model):
    elsewhere = copy.deepcopy(model.encoder).to("meta")  # any device other than the CPU
    with pytest.raises(ValueError, match="runs on the CPU only, not on meta"):
        int8.int8_encoder(elsewhere)
