"""The encoder's linear layers in int8 on the CPU: dynamic quantization, as ONNX Runtime's and PyTorch's.

Each of a layer's products runs on int8 integers through oneDNN, which PyTorch ships (`torch.ops.onednn`):
- the weights once, per output channel: w = scale_c * w_q, w_q integers in [-127, 127];
- the activations at every call, asymmetric: x = scale * (x_q - zero_point), x_q in [0, 255], so that a tensor
  of GELU outputs (almost all >= 0) uses the whole range. The range is the batch's: an embedding moves slightly
  with the texts batched with it;
- where the input is a LayerNorm's output (the query/key/value and the first feed-forward products), its channels
  are smoothed first (SmoothQuant, with divisors found from the LayerNorm's weights, no data: see smoothing), and
  the tensor takes one range; the attention output and the second feed-forward product's input (GELU outputs) take
  one range per token (quantize_rows): on the STS benchmark test set, per token for the attention output too cost
  all-MiniLM-L6-v2 0.15 Spearman points against fp32 instead of 0.33, for 2-3% of int8's speed (AMD EPYC);
- oneDNN adds the int32 products up, scales them back to fp32 and adds the bias, the GELU and the residual in the
  same pass (per token, the tokens' scales are applied after it). LayerNorm and pooling stay in fp32; attention
  runs in bf16 where the CPU's bf16 products are faster than fp32's (hardware.fast_cpu_bf16), else in fp32.
The three products of the query, key and value share one quantized input and run as one product.

CPUs without VNNI (AVX2, and AVX-512 before Cascade Lake) multiply uint8 by int8 with an instruction that adds pairs
of products into int16 and saturates: 255 * 127 * 2 overflows it. There the weights take 7 bits, [-63, 63]
(FBGEMM and ONNX Runtime take 7 bits from the activations instead, their "reduce range").
The accuracy cost is measured by benchmarks/encode_speed.py (STS benchmark test Spearman against fp32).
"""

import copy
import math
import platform

import torch
from torch import nn

from .encoder import POST_OPS, Encoder, Layer, Packing
from .hardware import fast_cpu_bf16, int8_weight_bits


ROUNDING = 1.5 * 2 ** 23  # see to_uint8
NOT_FINITE = "dtype int8: the encoder's activations hold NaN or infinite values; try fp32"


def check_int8_support() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        raise ValueError(f"dtype int8 needs oneDNN's int8 kernels, which PyTorch has on x86 CPUs; this is "
                         f"{platform.machine()} with oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}: "
                         "use fp32 or bf16")
    try:  # the operators' signatures have changed between PyTorch releases: one tiny product tells
        x = torch.ones(2, 8)
        Int8Linear([nn.Linear(8, 8)], hidden_act="gelu")(x)
        Int8Linear([nn.Linear(8, 8)], input_norm=nn.LayerNorm(8))(x, residual=x)
        Int8Linear([nn.Linear(8, 8)], per_row=True)(x, residual=x)
    except (AttributeError, RuntimeError, TypeError) as error:
        raise ValueError(f"dtype int8: PyTorch {torch.__version__}'s oneDNN int8 operators do not run here "
                         f"({str(error).splitlines()[0]}); it was built and tested with PyTorch 2.13: "
                         "use fp32 or bf16") from error


def quantize_activations(x: torch.Tensor, divisors: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int]:
    """x (N, K) float32 -> (x_q uint8 (N, K), scale, zero_point), over the range [min(x, 0), max(x, 0)] in 254 steps,
    each value to the nearest step (see to_uint8). With `divisors` (K,), the quantized tensor is x / divisors, column
    by column (see smoothing), in the same pass."""
    if divisors is None:
        low, high = (value.item() for value in x.aminmax())
    else:  # each column's range, divided by its divisor (all positive)
        lows, highs = x.amin(dim=0), x.amax(dim=0)  # (aminmax along a dimension is slower than the two apart)
        low, high = (lows / divisors).min().item(), (highs / divisors).max().item()
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(NOT_FINITE)
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-30) / 254
    zero_point = math.ceil(-low / scale)
    offset = torch.tensor(zero_point + ROUNDING)
    if divisors is None:
        return to_uint8(torch.add(offset, x, alpha=1 / scale)), scale, zero_point
    return to_uint8(torch.addcmul(offset, x, 1 / (divisors * scale))), scale, zero_point


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, K) float32 -> (x_q uint8 (N, K), scales (N,), zero_points (N,)): quantize_activations row by row, each
    token over its own range, so that the few tokens that reach far do not leave the others few steps."""
    lows, highs = x.amin(dim=1).clamp_(max=0.0), x.amax(dim=1).clamp_(min=0.0)
    scales = (highs - lows).clamp_(min=1e-30).div_(254)
    if not scales.isfinite().all():  # NaN or infinity anywhere in a row makes its range so
        raise ValueError(NOT_FINITE)
    zero_points = lows.div_(scales).neg_().ceil_()
    # x * (1 / scale) + (zero point + ROUNDING), row by row: a product and an in-place sum run in about half the time
    # of one addcmul with the two columns broadcast (measured on (480, 1536))
    x_q = to_uint8(torch.mul(x, scales.reciprocal()[:, None]).add_((zero_points + ROUNDING)[:, None]))
    return x_q, scales, zero_points


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """x float32, each ROUNDING + y with y in [-0.5, 255.5) -> round(y) uint8 (to even at halves).

    Adding ROUNDING (1.5 * 2 ** 23) to y in [-2 ** 22, 2 ** 22] leaves a float whose steps are 1: the addition
    rounds y to an integer, and the low byte of the float's encoding is that integer modulo 256. So the quantizing
    sum's own rounding does the rounding, and one conversion of the encoding (int32 -> uint8 keeps the low byte)
    does the rest: PyTorch 2.13's conversion of float32 to uint8 took 3.5x as long on (288, 1536) on an AMD EPYC,
    and by way of int16 one more pass.

    The zero point is rounded up (ceil), not to the nearest: then the lowest value lands in [0, 1) and the highest
    below 255, so no rounding error can carry either out of [0, 255] and wrap around."""
    return x.view(torch.int32).to(torch.uint8)


def smoothing(norm: nn.LayerNorm, linears: list[nn.Linear]) -> torch.Tensor:
    """SmoothQuant's divisors (Xiao et al., 2023) for the input of `linears`, which is the output of `norm`, found
    without data: (K,), all positive.

    A few channels of a LayerNorm's output reach far further than the rest (those whose gamma or beta is large),
    and one scale for the whole tensor leaves the other channels few steps. Dividing channel k of the input by s_k
    and multiplying column k of the weights by s_k leaves the product unchanged and moves part of the reach from
    the activations to the weights, which are quantized per output channel: s_k = sqrt(a_k / w_k), with a_k the
    reach of channel k and w_k that of column k of the weights (alpha = 0.5 in the paper). A LayerNorm's output is
    gamma * n + beta with n of mean 0 and variance 1 over each token's channels, so a_k = 3 |gamma_k| + |beta_k|
    bounds channel k for all but rare tokens, with no text seen."""
    reach = 3 * norm.weight.detach().float().abs() + norm.bias.detach().float().abs()
    weight_reach = torch.cat([linear.weight.detach().float() for linear in linears]).abs().amax(dim=0)
    return (reach.clamp(min=1e-6) / weight_reach.clamp(min=1e-6)).sqrt()


class Int8Linear(nn.Module):
    """One or more nn.Linear on the same input as one int8 product, their outputs side by side, and optionally an
    activation function (`hidden_act`) applied in the same pass, in `output_dtype`. With `input_norm`, the
    LayerNorm whose output the input is, the input's channels are balanced against the weights' first (smoothing).
    With `per_row`, each row of the input is quantized over its own range (quantize_rows; no activation function,
    float32 out). Inference only: the weights are frozen."""

    def __init__(self, linears: list[nn.Linear], weight_bits: int = 8, hidden_act: str | None = None,
                 output_dtype: torch.dtype = torch.float32, input_norm: nn.LayerNorm | None = None,
                 per_row: bool = False):
        super().__init__()
        if per_row and (hidden_act or output_dtype != torch.float32 or input_norm is not None):
            raise ValueError("Int8Linear: per_row takes no hidden_act, input_norm or output_dtype")
        self.per_row = per_row
        self.output_dtype = output_dtype
        weight = torch.cat([linear.weight.detach().float() for linear in linears])  # (out, in)
        self.divisors = None if input_norm is None else smoothing(input_norm, linears)  # (in,)
        if self.divisors is not None:
            weight = weight * self.divisors
        self.bias = torch.cat([linear.bias.detach().float() for linear in linears])
        largest = 2 ** (weight_bits - 1) - 1
        self.weight_scale = weight.abs().amax(dim=1).clamp(min=1e-30) / largest  # (out,)
        weight_int8 = torch.round(weight / self.weight_scale[:, None]).to(torch.int8)
        self.weight = torch.ops.onednn.qlinear_prepack(weight_int8, None)  # oneDNN's own layout
        self.weight_zero_point = torch.zeros(len(weight), dtype=torch.int64)
        self.post_op, self.post_op_algorithm = POST_OPS[hidden_act] if hidden_act else ("none", "")
        # per row, oneDNN's scale and zero point are one for the whole input: the rows' own are applied after the
        # product, y_ij = scale_i * (product_ij - zero_point_i * column_sum_j) + bias_j, with these two rows
        column_sums = (weight_int8.float() * self.weight_scale[:, None]).sum(dim=1)
        self.row_terms = torch.stack([column_sums, self.bias]) if per_row else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in) float32 or bf16 -> (N, out) in output_dtype; or, with `residual` (N, out) float32, their sum."""
        if self.per_row:
            return self.forward_per_row(x.float(), residual)
        x_q, scale, zero_point = quantize_activations(x.float(), self.divisors)
        quantized = (x_q, scale, zero_point, self.weight, self.weight_scale, self.weight_zero_point)
        if residual is None:
            return torch.ops.onednn.qlinear_pointwise(*quantized, self.bias, 1.0, 0, self.output_dtype,
                                                      self.post_op, [], self.post_op_algorithm)
        return torch.ops.onednn.qlinear_pointwise.binary(*quantized, residual, self.bias, 1.0, 0, torch.float32,
                                                         1.0, 0, "add", 1.0, self.post_op, [], self.post_op_algorithm)

    def forward_per_row(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        x_q, scales, zero_points = quantize_rows(x)
        product = torch.ops.onednn.qlinear_pointwise(x_q, 1.0, 0, self.weight, self.weight_scale,
                                                     self.weight_zero_point, None, 1.0, 0, torch.float32, "none",
                                                     [], "")
        terms = torch.stack([-scales * zero_points, torch.ones_like(scales)], dim=1)  # (N, 2)
        out = terms @ self.row_terms if residual is None else torch.addmm(residual, terms, self.row_terms)
        return out.addcmul_(product, scales[:, None])


class Int8Layer(nn.Module):
    """An encoder Layer whose six products run in int8 (inference only): the Layer's attention and LayerNorms.
    `input_norm` is the LayerNorm the layer's input comes out of (the previous layer's last, or the embeddings'), if
    one is (input_norms)."""

    def __init__(self, layer: Layer, weight_bits: int, attention_dtype: torch.dtype, input_norm: nn.LayerNorm | None):
        super().__init__()
        fused = layer.hidden_act in POST_OPS
        self.query_key_value = Int8Linear([layer.query, layer.key, layer.value], weight_bits,
                                          output_dtype=attention_dtype, input_norm=input_norm)
        self.attention_output = Int8Linear([layer.attention_output], weight_bits, per_row=True)
        self.intermediate = Int8Linear([layer.intermediate], weight_bits, layer.hidden_act if fused else None,
                                       input_norm=layer.attention_norm)
        self.output = Int8Linear([layer.output], weight_bits, per_row=True)
        self.activation = nn.Identity() if fused else layer.activation
        del layer.query, layer.key, layer.value, layer.attention_output, layer.intermediate, layer.output
        self.layer = layer  # what is left: attention and the LayerNorms
        self.window, self.rope_theta = layer.window, layer.rope_theta  # both None: int8 runs no ModernBERT

    def forward(self, x: torch.Tensor, packing: Packing, mask: torch.Tensor, rotation: None = None) -> torch.Tensor:
        q, k, v = self.query_key_value(x).chunk(3, dim=1)  # (N, 3D) -> 3 x (N, D)
        attended = self.layer.attend(q, k, v, packing, mask)
        x = self.layer.attention_norm(self.attention_output(attended, residual=x))
        return self.layer.output_norm(self.output(self.activation(self.intermediate(x)), residual=x))


def int8_encoder(encoder: Encoder, weight_bits: int | None = None, attention_dtype: torch.dtype | None = None) -> Encoder:
    """A copy of `encoder` for inference on the CPU whose linear layers run in int8 (see the module's docstring).
    By default the weights take 7 bits on CPUs without VNNI (hardware.int8_weight_bits), and attention runs in bf16
    where that is faster than fp32 (hardware.fast_cpu_bf16)."""
    check_int8_support()
    if encoder.config.normalizes_first:
        raise ValueError(f"dtype int8 runs encoders whose layers normalize last (BERT and its kind), not "
                         f"{encoder.config.model_type}'s: use fp32 or bf16")
    weight_bits = weight_bits or int8_weight_bits()
    attention_dtype = attention_dtype or (torch.bfloat16 if fast_cpu_bf16() else torch.float32)
    device = encoder.word_embeddings.weight.device
    if device.type != "cpu":
        raise ValueError(f"dtype int8 runs on the CPU only, not on {device}; on a GPU use bf16 or fp16")
    quantized = copy.deepcopy(encoder).float().eval()
    quantized.layers = nn.ModuleList(Int8Layer(layer, weight_bits, attention_dtype, norm)
                                     for layer, norm in zip(quantized.layers, input_norms(quantized)))
    return quantized


def input_norms(encoder: Encoder) -> list[nn.LayerNorm | None]:
    """For each of the encoder's layers, the LayerNorm all its inputs come out of (the embeddings' or the previous
    layer's last), or None where there is none: ALBERT's first input comes out of a projection, and a layer it runs
    more than once may take inputs from different LayerNorms."""
    sources = {}  # layer index -> the modules its inputs come out of
    previous = encoder.embeddings_norm if encoder.embedding_projection is None else None
    for index in encoder.layer_order:
        sources.setdefault(index, []).append(previous)
        previous = encoder.layers[index].output_norm
    return [found[0] if len(set(map(id, found))) == 1 else None
            for found in (sources.get(index, [None]) for index in range(len(encoder.layers)))]
