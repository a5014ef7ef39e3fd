"""The encoder's linear layers in int8 on the CPU: dynamic quantization, as ONNX Runtime's and PyTorch's.

Each of a layer's products runs on int8 integers through oneDNN, which PyTorch ships (`torch.ops.onednn`):
- the weights once, per output channel: w = scale_c * w_q, w_q integers in [-127, 127];
- the activations at every call, per tensor, asymmetric: x = scale * (x_q - zero_point), x_q in [0, 255], so
  that a tensor of GELU outputs (almost all >= 0) uses the whole range. The range is the batch's: an embedding
  moves slightly with the texts batched with it;
- oneDNN adds the int32 products up, scales them back to fp32 and adds the bias, the GELU and the residual in the
  same pass. LayerNorm and pooling stay in fp32; attention runs in bf16 where the CPU has bf16 instructions
  (hardware.fast_cpu_bf16), else in fp32.
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


def check_int8_support() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        raise ValueError(f"dtype int8 needs oneDNN's int8 kernels, which PyTorch has on x86 CPUs; this is "
                         f"{platform.machine()} with oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}: "
                         "use fp32 or bf16")
    try:  # the operators' signatures have changed between PyTorch releases: one tiny product tells
        x = torch.ones(2, 8)
        Int8Linear([nn.Linear(8, 8)], hidden_act="gelu")(x)
        Int8Linear([nn.Linear(8, 8)])(x, residual=x)
    except (AttributeError, RuntimeError, TypeError) as error:
        raise ValueError(f"dtype int8: PyTorch {torch.__version__}'s oneDNN int8 operators do not run here "
                         f"({str(error).splitlines()[0]}); it was built and tested with PyTorch 2.13: "
                         "use fp32 or bf16") from error


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """x (N, K) float32 -> (x_q uint8 (N, K), scale, zero_point), over the range [min(x, 0), max(x, 0)].

    254 steps, not 255: then x / scale + zero_point + 0.5 lies within [0, 255] and truncation to uint8 rounds it,
    in one pass with no clamp."""
    low, high = (value.item() for value in x.aminmax())
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError("dtype int8: the encoder's activations hold NaN or infinite values; try fp32")
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-30) / 254
    zero_point = round(-low / scale)
    return torch.add(torch.tensor(zero_point + 0.5), x, alpha=1 / scale).to(torch.uint8), scale, zero_point


class Int8Linear(nn.Module):
    """One or more nn.Linear on the same input as one int8 product, their outputs side by side, and optionally an
    activation function (`hidden_act`) applied in the same pass, in `output_dtype`. Inference only: the weights are
    frozen."""

    def __init__(self, linears: list[nn.Linear], weight_bits: int = 8, hidden_act: str | None = None,
                 output_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.output_dtype = output_dtype
        weight = torch.cat([linear.weight.detach().float() for linear in linears])  # (out, in)
        self.bias = torch.cat([linear.bias.detach().float() for linear in linears])
        largest = 2 ** (weight_bits - 1) - 1
        self.weight_scale = weight.abs().amax(dim=1).clamp(min=1e-30) / largest  # (out,)
        weight_int8 = torch.round(weight / self.weight_scale[:, None]).to(torch.int8)
        self.weight = torch.ops.onednn.qlinear_prepack(weight_int8, None)  # oneDNN's own layout
        self.weight_zero_point = torch.zeros(len(weight), dtype=torch.int64)
        self.post_op, self.post_op_algorithm = POST_OPS[hidden_act] if hidden_act else ("none", "")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in) float32 or bf16 -> (N, out) in output_dtype; or, with `residual` (N, out) float32, their sum."""
        x_q, scale, zero_point = quantize_activations(x.float())
        quantized = (x_q, scale, zero_point, self.weight, self.weight_scale, self.weight_zero_point)
        if residual is None:
            return torch.ops.onednn.qlinear_pointwise(*quantized, self.bias, 1.0, 0, self.output_dtype,
                                                      self.post_op, [], self.post_op_algorithm)
        return torch.ops.onednn.qlinear_pointwise.binary(*quantized, residual, self.bias, 1.0, 0, torch.float32,
                                                         1.0, 0, "add", 1.0, self.post_op, [], self.post_op_algorithm)


class Int8Layer(nn.Module):
    """An encoder Layer whose six products run in int8 (inference only): the Layer's attention and LayerNorms."""

    def __init__(self, layer: Layer, weight_bits: int, attention_dtype: torch.dtype):
        super().__init__()
        fused = layer.hidden_act in POST_OPS
        self.query_key_value = Int8Linear([layer.query, layer.key, layer.value], weight_bits,
                                          output_dtype=attention_dtype)
        self.attention_output = Int8Linear([layer.attention_output], weight_bits)
        self.intermediate = Int8Linear([layer.intermediate], weight_bits, layer.hidden_act if fused else None)
        self.output = Int8Linear([layer.output], weight_bits)
        self.activation = nn.Identity() if fused else layer.activation
        del layer.query, layer.key, layer.value, layer.attention_output, layer.intermediate, layer.output
        self.layer = layer  # what is left: attention and the LayerNorms

    def forward(self, x: torch.Tensor, packing: Packing, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(x).chunk(3, dim=1)  # (N, 3D) -> 3 x (N, D)
        attended = self.layer.attend(q, k, v, packing, mask if mask.dtype == torch.bool else mask.to(q.dtype))
        x = self.layer.attention_norm(self.attention_output(attended, residual=x))
        return self.layer.output_norm(self.output(self.activation(self.intermediate(x)), residual=x))


def int8_encoder(encoder: Encoder, weight_bits: int | None = None, attention_dtype: torch.dtype | None = None) -> Encoder:
    """A copy of `encoder` for inference on the CPU whose linear layers run in int8 (see the module's docstring).
    By default the weights take 7 bits on CPUs without VNNI (hardware.int8_weight_bits), and attention runs in bf16
    where the CPU has bf16 instructions."""
    check_int8_support()
    weight_bits = weight_bits or int8_weight_bits()
    attention_dtype = attention_dtype or (torch.bfloat16 if fast_cpu_bf16() else torch.float32)
    device = encoder.word_embeddings.weight.device
    if device.type != "cpu":
        raise ValueError(f"dtype int8 runs on the CPU only, not on {device}; on a GPU use bf16 or fp16")
    quantized = copy.deepcopy(encoder).float().eval()
    quantized.layers = nn.ModuleList(Int8Layer(layer, weight_bits, attention_dtype) for layer in quantized.layers)
    return quantized
