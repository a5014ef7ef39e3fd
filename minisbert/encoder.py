"""BERT, RoBERTa, MPNet, DistilBERT, ALBERT, T5's encoder, ModernBERT and Qwen3 in plain PyTorch (their config.json
files and checkpoint names: architectures.py).

One layer, as in the paper's figure of BERT (post-LayerNorm):
    x = LayerNorm(x + Dropout(W_o Attention(W_q x, W_k x, W_v x)))
    x = LayerNorm(x + Dropout(W_2 GELU(W_1 x)))
RoBERTa numbers positions from padding_idx + 1, over real tokens only. MPNet (all-mpnet-base-v2) numbers them
so too, has no token types, and adds to every layer's attention scores one learned bias per head and bucket of
relative distance, a table shared by all layers. DistilBERT is BERT without token types and without the dropout
after attention. ALBERT is BERT with smaller token embeddings (embedding_size) projected up to hidden_size, layers
shared (num_hidden_layers steps through num_hidden_groups groups of inner_group_num layers: EncoderConfig.layer_order),
and no dropout after the feed-forward product. T5's encoder (sentence-t5, gtr-t5) normalizes first:
    x = x + Dropout(W_o Attention(W_q n, W_k n, W_v n)),  n = RMSNorm(x)
    x = x + Dropout(W_2 Dropout(act(W_1 n) [* W_g n])),   n = RMSNorm(x), the gate W_g in T5 v1.1
with no biases, no position table (MPNet's relative position bias instead, in the first layer's tensors), no scaling
of the attention scores, and an RMSNorm after the last layer. ModernBERT normalizes first too, with LayerNorms (none
before the first layer's attention, which takes the embeddings'), gated like T5 v1.1, without biases (config:
attention_bias, mlp_bias, norm_bias), and instead of a position table turns each head's queries and keys by angles that
grow with the token's place (rotary positions: rotary_angles, rotate); two layers of three attend only to the keys at
most local_attention / 2 tokens away, and turn them with another base. Qwen3 (Qwen3-Embedding), a decoder,
normalizes first with RMSNorms, gated like T5 v1.1 (SiLU), rotary positions as ModernBERT's; each token attends only
to itself and the tokens before it (causal), its heads need not divide the layer's width (head_dim), fewer key and
value heads serve groups of query heads (num_key_value_heads), and each head's queries and keys are normalized
(RMSNorm) before they are turned.
"""

import contextlib
import copy
import functools
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .architectures import ACTIVATIONS, EncoderConfig
from .hardware import fused_fp32_products

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
PACK_ABOVE = 0.04  # on the CPU, a batch is packed where more than this share of it is padding (Encoder.packs)
FLOAT_SOFTMAX_ROWS = 16  # see attention_products
SHORT_ROWS = 32  # on the CPU, attention over rows of at most this many tokens skips the fused kernel (Layer.attend)

# the activation functions oneDNN can apply within a product's own pass: (post-op, algorithm)
POST_OPS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
            "relu": ("relu", "")}


@functools.cache
def onednn_products(dtype: torch.dtype = torch.float32) -> bool:
    """Whether PyTorch's oneDNN products with the bias, an activation or a residual added in the same pass
    (torch.ops.mkldnn._linear_pointwise, which torch.compile uses on CPUs) run here in `dtype`: one tiny product
    of each kind. oneDNN has no bf16 products on CPUs without AVX-512 (or with its kernels capped below it)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x, weight, bias = torch.ones(2, 4, dtype=dtype), torch.ones(4, 4, dtype=dtype), torch.zeros(4, dtype=dtype)
    try:
        torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        torch.ops.mkldnn._linear_pointwise.binary(x, x, weight, bias, "add")
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False
    return True


@functools.cache
def onednn_packed_weights(dtype: torch.dtype) -> bool:
    """Whether oneDNN's products take weights laid out once in oneDNN's own blocked order
    (torch.ops.mkldnn._reorder_linear_weight) in `dtype`, giving the sums plain weights give: one tiny product of
    each kind."""
    if not onednn_products(dtype):
        return False
    x, weight, bias = torch.ones(2, 4, dtype=dtype), torch.eye(4, dtype=dtype), torch.zeros(4, dtype=dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        return (torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), x)
                and torch.equal(torch.ops.mkldnn._linear_pointwise.binary(x, x, packed, bias, "add"), 2 * x))
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False


@functools.cache
def varlen_attention():
    """PyTorch's flash attention over packed rows of different lengths (2.9 and later, CUDA only), or None.
    Imported on first use on a GPU: the module pulls in Triton, which the CPU paths never need."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def varlen_options() -> frozenset[str]:
    """The keyword arguments varlen_attention takes in this PyTorch: window_size (causal or sliding attention) and
    enable_gqa (fewer key heads than query heads) came after 2.9."""
    attention = varlen_attention()
    return frozenset() if attention is None else frozenset(inspect.signature(attention).parameters)


class Packing:
    """Where the real tokens of a padded batch (B, S) sit, to move activations between two layouts:
    packed (N, D), the N real tokens only, on which the dense layers run, so padding costs them nothing;
    padded (B, S, D), zeros at the padding, which attention needs. With `enabled=False` both are the padded
    batch, flattened for the dense layers: on the CPU for a batch that pads little (Encoder.packs), and for the
    benchmarks, which measure what packing gains.

    Finding the real tokens in a mask on the GPU makes the CPU wait for the GPU (a host sync per forward). A
    caller that knows each row's token count on the CPU (`lengths`, rows padded on the right, as the tokenizer
    pads) spares that wait. On a GPU, `lengths` also give `cu_seqlens`, the start of each row in the packed
    tokens, with which attention runs on the packed tokens themselves (flash attention, see Layer).
    """

    def __init__(self, attention_mask: torch.Tensor, enabled: bool = True, lengths: torch.Tensor | None = None):
        self.shape, self.device = attention_mask.shape, attention_mask.device
        self.index = self.cu_seqlens = None
        self.grids = {}  # length -> grid(length)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.int64, device="cpu")
            fits = not len(lengths) or 0 < lengths.min() <= lengths.max() <= self.shape[1]
            if lengths.shape != self.shape[:1] or not fits:
                raise ValueError(f"lengths {lengths.tolist()} do not fit a batch of shape {tuple(self.shape)}: one "
                                 f"count per row, each from 1 to {self.shape[1]}")
        if not enabled:
            return
        if lengths is None:
            self.index = attention_mask.flatten().nonzero().squeeze(1)  # (N,) in the (B * S) grid
            return
        on_gpu = attention_mask.is_cuda

        def to_device(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(attention_mask.device, non_blocking=True) if on_gpu else t

        real = torch.arange(self.shape[1])[None, :] < lengths[:, None]
        self.index = to_device(real.flatten().nonzero().squeeze(1))
        if on_gpu:
            self.cu_seqlens = to_device(F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32))
            self.longest = int(lengths.max()) if len(lengths) else 0

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (N, D); or from (B, L, D), L > S
        B, S = self.shape
        if self.index is None:
            return (x if x.shape[1] == S else x[:, :S]).reshape(-1, x.shape[-1])
        return x.reshape(-1, x.shape[-1]).index_select(0, self.grid(x.shape[1]))

    def unpack(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(N, D) -> (B, S, D); or (B, length, D), rows lengthened with zeros (see attention_length)."""
        B, S = self.shape
        length = length or S
        if self.index is None:
            x = x.view(B, S, x.shape[-1])
            return x if length == S else F.pad(x, (0, 0, 0, length - S))
        x = x.new_zeros(B * length, x.shape[-1]).index_copy(0, self.grid(length), x)
        return x.view(B, length, x.shape[-1])

    def positions(self) -> torch.Tensor:
        """Each packed token's place in its row, (N,)."""
        B, S = self.shape
        if self.index is None:
            return torch.arange(S, device=self.device).repeat(B)
        return self.index % S

    def grid(self, length: int) -> torch.Tensor:
        """Where the real tokens sit in the (B * length) grid of rows `length` long."""
        S = self.shape[1]
        if length == S:
            return self.index
        if length not in self.grids:
            self.grids[length] = self.index + self.index.div(S, rounding_mode="floor") * (length - S)
        return self.grids[length]


def attention_length(length: int, x: torch.Tensor, training: bool) -> int:
    """The length of the rows attention runs on: `length`, or on the CPU at inference the next multiple of 16 where
    that adds at most 8 tokens (the added keys are masked, the added queries dropped). PyTorch's fused attention on
    the CPU (2.13) is fastest on rows a multiple of 16 long and slows with each token past such a multiple, so the
    added tokens cost less than the tail they replace: benchmarks/attention_lengths.py times every length against
    the one picked here (on an Intel Xeon with AMX, 15 tokens took 3.6x as long as 16 in fp32, 3.2x in bf16; no
    length ran slower lengthened). Training keeps `length`: attention's dropout draws from the random stream by
    shape."""
    if x.device.type != "cpu" or training or torch.is_grad_enabled() or length % 16 < 8:
        return length
    return length + 16 - length % 16


def attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                       scale: float | None = None) -> torch.Tensor:
    """Attention as two batched products and a softmax, without dropout (see Layer.attends_with_products): q, k, v
    (B, H, L, d); mask (B, 1, 1, L) True at real keys, or a float (B, H, L, L) added to the scores; the scores
    scaled by `scale`, 1/sqrt(d) if None.

    A boolean mask is added as 0 / -inf: filling the scores took 5x as long as adding a float mask on
    (32, 12, 16, 16) on an AMD EPYC (rows this short defeat the vector loops of masked_fill). bf16 scores over rows
    of at least FLOAT_SOFTMAX_ROWS keys are converted to float32 for the softmax: there PyTorch 2.13's bf16 softmax
    took about twice as long as the conversion and float32's together; over shorter rows float32's was the slower."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, L, L)
    if scores.shape[-1] >= FLOAT_SOFTMAX_ROWS:
        scores = scores.float()
    scores = scores.mul_(1 / math.sqrt(q.shape[-1]) if scale is None else scale).add_(mask)
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, index: int = 0):
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.num_heads, self.key_value_heads = config.num_attention_heads, config.key_value_heads
        self.head_dim = config.attention_head_size
        self.hidden_act = config.hidden_act
        self.attention_dropout = config.attention_probs_dropout_prob
        # T5's, ModernBERT's, Qwen3's and Gemma 3's layers normalize first (all but ModernBERT with RMSNorm, Gemma 3's
        # its own); their products have no biases (Qwen3's attention may)
        self.normalizes_first = config.normalizes_first
        t5, modernbert, qwen3, gemma = (config.model_type == kind for kind in ("t5", "modernbert", "qwen3",
                                                                              "gemma3_text"))

        def norm(size: int = d):
            if gemma:
                return GemmaNorm(size, eps=config.layer_norm_eps)
            return T5Norm(size, eps=config.layer_norm_eps) if t5 or qwen3 else nn.LayerNorm(
                size, eps=config.layer_norm_eps, bias=config.norm_bias)

        queries, keys = self.num_heads * self.head_dim, self.key_value_heads * self.head_dim
        self.query = nn.Linear(d, queries, bias=config.attention_bias)
        self.key, self.value = (nn.Linear(d, keys, bias=config.attention_bias) for _ in range(2))
        self.attention_output = nn.Linear(queries, d, bias=config.attention_bias)
        # Qwen3 and Gemma 3 normalize each head's queries and keys (RMSNorm over the head's dimensions) before
        # turning them
        self.query_norm, self.key_norm = (norm(self.head_dim), norm(self.head_dim)) if qwen3 or gemma else (None, None)
        # ModernBERT's first layer takes the embeddings' LayerNorm as its own
        self.attention_norm = nn.Identity() if modernbert and index == 0 else norm()
        self.intermediate = nn.Linear(d, h, bias=config.mlp_bias)
        self.gate = nn.Linear(d, h, bias=config.mlp_bias) if config.gated_feed_forward else None
        self.output = nn.Linear(h, d, bias=config.mlp_bias)
        self.output_norm = norm()
        # Gemma 3 also normalizes what attention and the feed-forward give, before each is added to x
        self.post_attention_norm, self.post_output_norm = (norm(), norm()) if gemma else (None, None)
        # T5 folds 1/sqrt(d) into its weights; Gemma 3 scales by query_pre_attn_scalar instead of the head's size
        self.attention_scale = 1.0 if t5 else config.query_pre_attn_scalar ** -0.5 if gemma else None
        # T5's half precision as transformers': sums clamped (clamp_fp16), the feed-forward output product's input in
        # that product's type (fp32 in the fp16 copy: Encoder.in_dtype)
        self.t5_half_precision = t5
        # ModernBERT, Qwen3 and Gemma 3: rotary positions, of the base of this layer's kind in ModernBERT and Gemma 3,
        # whose sliding layers' queries attend to the keys at most `window` tokens away (Encoder.forward's masks;
        # Gemma 3 as transformers runs it bidirectionally: fewer than sliding_window // 2 + 1 tokens away)
        sliding = (modernbert or gemma) and config.layer_types[index] == "sliding_attention"
        rotary = modernbert or qwen3 or gemma
        self.rope_theta = (config.local_rope_theta if sliding else config.rope_theta) if rotary else None
        self.window = (config.sliding_window // 2 if gemma else config.local_attention // 2) if sliding else None
        self.causal = config.is_causal  # Qwen3: a query attends to its own token and those before it
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout_after_attention = {"distilbert": nn.Identity(), "modernbert": nn.Dropout(
            self.attention_dropout)}.get(config.model_type, self.dropout)
        self.dropout_after_output = nn.Identity() if config.model_type in ("albert", "modernbert") else self.dropout
        self.activation = ACTIVATIONS[config.hidden_act]
        # at inference on the CPU, fuse the products where that pays here (None), always where oneDNN can (True), or
        # never (False): fuses_on_cpu. Benchmarks and tests set it.
        self.fused_products: bool | None = None

    def forward(self, x: torch.Tensor, packing: Packing, mask: torch.Tensor,
                rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # x: (N, D) packed tokens; mask: (B, 1, 1, L), L >= S (attention_length), True where a key is a real
        # token, or for MPNet and T5 a float (B, H, L, L) added to the scores: the relative position bias, -inf at
        # padded keys, or for ModernBERT's sliding layers (B, 1, L, L), True where a key is real and near;
        # rotation: ModernBERT's (cos, sin) of each token's rotary angles, (N, 1, D/H) (rotary_angles)
        if self.normalizes_first:
            return self.normalizing_first_forward(x, packing, mask, rotation)
        if self.fuses_on_cpu(x):
            return self.fused_forward(x, packing, mask)
        attended = self.attend(self.query(x), self.key(x), self.value(x), packing, mask)
        x = self.attention_norm(x + self.dropout_after_attention(self.attention_output(attended)))
        return self.output_norm(x + self.dropout_after_output(self.output(self.activation(self.intermediate(x)))))

    def normalizing_first_forward(self, x: torch.Tensor, packing: Packing, mask: torch.Tensor,
                                  rotation: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """T5's and ModernBERT's layer: each half adds to x what it makes of x normalized; dropout also inside the
        feed-forward."""
        n = self.attention_norm(x)
        q, k = self.query(n), self.key(n)
        if self.query_norm is not None:  # per head: (N, H * d) -> (N, H, d) and back
            q = self.query_norm(q.view(len(q), -1, self.head_dim)).view(q.shape)
            k = self.key_norm(k.view(len(k), -1, self.head_dim)).view(k.shape)
        if rotation is not None:
            q, k = rotate(q, *rotation), rotate(k, *rotation)
        attended = self.attention_output(self.attend(q, k, self.value(n), packing, mask))
        if self.post_attention_norm is not None:
            attended = self.post_attention_norm(attended)
        x = self.clamp_fp16(x + self.dropout_after_attention(attended))
        n = self.output_norm(x)
        hidden = self.activation(self.intermediate(n))
        if self.gate is not None:
            hidden = hidden * self.gate(n)
        hidden = self.dropout(hidden)
        if self.t5_half_precision:
            hidden = hidden.to(self.output.weight.dtype)
        output = self.output(hidden)
        if self.post_output_norm is not None:
            output = self.post_output_norm(output)
        return self.clamp_fp16(x + self.dropout_after_output(output))

    def clamp_fp16(self, x: torch.Tensor) -> torch.Tensor:
        """T5's sums in fp16 clamped as transformers clamps them: to the largest fp16 value, or 1000 below it where
        any is infinite, so that an overflow does not become NaN in the next layer. Other layers, and other types,
        as they are."""
        if not self.t5_half_precision or x.dtype != torch.float16:
            return x
        largest = torch.finfo(torch.float16).max
        limit = torch.where(x.isinf().any(), largest - 1000, largest)  # a tensor: no wait for the GPU
        return x.clamp(-limit, limit)

    def fuses_on_cpu(self, x: torch.Tensor) -> bool:
        """At inference on the CPU (no autograd, no dropout), each product runs through oneDNN, which adds the bias,
        the activation and the residual in the product's own pass instead of one pass each over memory afterwards:
        in bf16 always, in fp32 where that is the faster (hardware.fused_fp32_products), or as fused_products says."""
        if not (x.device.type == "cpu" and not self.training and not torch.is_grad_enabled()
                and x.dtype in (torch.float32, torch.bfloat16) and self.hidden_act in POST_OPS
                and onednn_products(x.dtype)):
            return False
        if self.fused_products is not None:
            return self.fused_products
        return x.dtype == torch.bfloat16 or fused_fp32_products()

    def fused_forward(self, x: torch.Tensor, packing: Packing, mask: torch.Tensor) -> torch.Tensor:
        """forward() with oneDNN's fused products: the same sums (to rounding) in fewer passes."""
        def linear(module: nn.Linear, inputs: torch.Tensor, post_op: str = "none", algorithm: str = "",
                   residual: torch.Tensor | None = None) -> torch.Tensor:
            product = torch.ops.mkldnn._linear_pointwise
            weight = getattr(module, "packed_weight", module.weight)  # see pack_weights
            if residual is not None:
                return product.binary(inputs, residual, weight, module.bias, "add")
            return product(inputs, weight, module.bias, post_op, [], algorithm)

        attended = self.attend(linear(self.query, x), linear(self.key, x), linear(self.value, x), packing, mask)
        x = self.attention_norm(linear(self.attention_output, attended, residual=x))
        hidden = linear(self.intermediate, x, *POST_OPS[self.hidden_act])
        return self.output_norm(linear(self.output, hidden, residual=x))

    def pack_weights(self) -> None:
        """The weights of fused_forward's products laid out once in oneDNN's own order, which oneDNN otherwise
        reorders at every call: for inference copies only (Encoder.in_dtype), whose weights never change. bf16,
        all-MiniLM-L6-v2 (benchmarks/encode_speed.py --unpacked, see the README): 1.03x on an Intel Xeon with AMX,
        1.06x on an AMD EPYC with AVX-512 bf16; the same embeddings."""
        for module in (self.query, self.key, self.value, self.attention_output, self.intermediate, self.output):
            module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach())

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing,
               mask: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of packed queries (N, H * d), keys and values (N, K * d) within each row: (N, H * d).
        K = H but in Qwen3, whose K key and value heads each serve H / K query heads in turn."""
        B, S = packing.shape
        N, D = q.shape
        H, d = self.num_heads, self.head_dim
        dropout = self.attention_dropout if self.training else 0.0
        if self.attends_packed(packing, mask, q.dtype, dropout):  # flash attention on the packed tokens
            q, k, v = q.view(N, H, d), k.view(N, -1, d), v.view(N, -1, d)
            cu_seqlens, longest = packing.cu_seqlens, packing.longest
            return varlen_attention()(q, k, v, cu_seqlens, cu_seqlens, longest, longest,
                                      **self.packed_attention_options).reshape(N, D)

        L = mask.shape[-1]  # the rows' length in attention: S, or more (attention_length)

        def heads(t):  # (N, K * d) -> (B, H, L, d)
            t = packing.unpack(t, L).view(B, L, -1, d).transpose(1, 2)
            return t if t.shape[1] == H else t.repeat_interleave(H // t.shape[1], dim=1)

        q, k, v = heads(q), heads(k), heads(v)
        if self.attends_with_products(q, dropout):
            attended = attention_products(q, k, v, mask, self.attention_scale)
        else:
            mask = mask if mask.dtype in (torch.bool, q.dtype) else mask.to(q.dtype)  # int8: bf16 attention
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                      scale=self.attention_scale)
        return packing.pack(attended.transpose(1, 2).reshape(B, L, D))  # (B, H, L, d) -> (N, H * d)

    @staticmethod
    def attends_with_products(q: torch.Tensor, dropout: float) -> bool:
        """Whether attention runs as two batched products and a softmax instead of PyTorch's fused kernel: at
        inference on the CPU over rows of at most SHORT_ROWS tokens, in fp32 and bf16. There the fused kernel's work
        per (row, head) costs more than the sums themselves (benchmarks/attention_lengths.py times both at every
        length). On an AMD EPYC (AVX-512 bf16), all-MiniLM-L6-v2 embedded the STS benchmark's sentences this way
        1.08x faster in fp32, 1.11x in int8 under an AVX2 cap (fp32 attention), and 1.02-1.03x in bf16 and up to
        1.06x in int8 (bf16 attention), in same-process comparisons over 6,000 of them; on an Intel Xeon with AMX,
        whose fused kernel took about twice the products' time in bf16 on rows of 4 to 23 tokens, 1.07x in bf16 and
        1.03x in int8 over 4,000 of them, three times each. In bf16 the scores are rounded to bf16 before the softmax
        (the fused kernel keeps them in fp32): the embeddings moved by at most 1e-4 in cosine."""
        return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and q.shape[-2] <= SHORT_ROWS
                and dropout == 0.0 and not torch.is_grad_enabled())

    def attends_packed(self, packing: Packing, mask: torch.Tensor, dtype: torch.dtype, dropout: float) -> bool:
        """Whether attention can run as flash attention over the packed tokens: on a GPU, in fp16/bf16, with the
        rows' lengths known (Packing.cu_seqlens), no attention dropout, no added bias (MPNet's, T5's), and what the
        layer attends to within a row (packed_attention_options) said in words this PyTorch's varlen_attn takes."""
        options = self.packed_attention_options
        return (packing.cu_seqlens is not None and mask.dtype == torch.bool
                and (mask.shape[-2] == 1 or "window_size" in options)
                and dtype in (torch.float16, torch.bfloat16) and dropout == 0.0 and self.head_dim % 8 == 0
                and self.head_dim <= 256 and varlen_attention() is not None and set(options) <= varlen_options())

    @functools.cached_property
    def packed_attention_options(self) -> dict:
        """varlen_attn's arguments for this layer beyond full attention, worked out once (they follow from its
        config): the keys a query sees, from window_size[0] before it to window_size[1] after (Qwen3's causal
        attention: all before, none after; ModernBERT's sliding layers: `window` either side, as
        sliding_window_mask), enable_gqa where key and value heads are fewer than query heads (Qwen3, Gemma 3), and
        the scores' scale where it is not 1/sqrt(head size) (Gemma 3's query_pre_attn_scalar)."""
        options = {}
        if self.causal:
            options["window_size"] = (-1, 0)
        elif self.window is not None:
            options["window_size"] = (self.window, self.window)
        if self.key_value_heads != self.num_heads:
            options["enable_gqa"] = True
        if self.attention_scale is not None:
            options["scale"] = self.attention_scale
        return options


class Encoder(nn.Module):
    """Token ids (B, S) and attention mask (B, S) in, contextual token embeddings (B, S, D) out (zeros at padding)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        d = config.embedding_dim
        # The tables start uninitialised (passing _weight skips nn.Embedding's random init, which alone costs a
        # second on the meta device, where a checkpoint is loaded): init_weights() or a checkpoint fills them.
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id,
                                            _weight=torch.empty(config.vocab_size, d))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d, _weight=torch.empty(
            config.max_position_embeddings, d)) if config.has_position_table else None
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d, _weight=torch.empty(
            config.type_vocab_size, d)) if config.has_token_types else None
        # T5: no LayerNorm of the embeddings, an RMSNorm (and dropout) after the last layer, as Qwen3 and Gemma 3 (no
        # dropout); ModernBERT: both LayerNorms
        t5, rms = config.model_type == "t5", config.model_type in ("t5", "qwen3", "gemma3_text")
        self.embeddings_norm = None if rms else nn.LayerNorm(d, eps=config.layer_norm_eps, bias=config.norm_bias)
        final_norm = {"t5": T5Norm, "qwen3": T5Norm, "gemma3_text": GemmaNorm}.get(
            config.model_type, functools.partial(nn.LayerNorm, bias=config.norm_bias))
        self.final_norm = final_norm(config.hidden_size, eps=config.layer_norm_eps) if config.normalizes_first else None
        # Gemma 3 scales its token embeddings by sqrt(hidden_size), that factor rounded to the table's type
        self.embedding_scale = config.hidden_size ** 0.5 if config.model_type == "gemma3_text" else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout_after_final_norm = self.dropout if t5 else nn.Identity()
        # ALBERT's token embeddings, projected up to the layers' size
        self.embedding_projection = nn.Linear(d, config.hidden_size) if config.model_type == "albert" else None
        self.layers = nn.ModuleList(Layer(config, index) for index in range(config.distinct_layers))
        self.layer_order = config.layer_order  # ALBERT runs its layers more than once
        self.relative_attention_bias = (nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)
                                        if config.has_relative_attention_bias else None)
        self.packing = True  # run the dense layers on the real tokens only, where that pays (see packs)
        self.capturable = False  # set while CUDA graphs record a training step (see lookup)
        self.pooler_tensors = {}  # the checkpoint's pooler, unused by SBERT, written back on save
        if self.word_embeddings.weight.device.type != "meta":  # on the meta device a checkpoint fills every tensor
            self.init_weights()

    def lookup(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """table(ids). While CUDA graphs record a training step (`capturable`, set by cuda_graphs.GraphedLoss), the
        gradient rows are added up by index_add_ instead: PyTorch's own backward sorts more than 3,072 indices with
        a host sync, which a graph cannot record (pytorch/pytorch#82886)."""
        if not self.capturable:
            return table(ids)
        return IndexAddEmbedding.apply(ids, table.weight, table.padding_idx)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.config.is_roberta:
            # fairseq numbering: real tokens count up from padding_idx + 1, padding keeps padding_idx
            padding_idx = self.config.position_padding_idx
            is_token = input_ids.ne(padding_idx).long()
            return torch.cumsum(is_token, dim=1) * is_token + padding_idx
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(self, input_ids, attention_mask, token_type_ids=None, lengths=None,
                hidden_states: list | None = None):
        """`lengths`: optionally, each row's token count on the CPU (rows padded on the right), which spares the
        GPU a host sync and lets attention run on the packed tokens (see Packing). `hidden_states`, a list, gets
        what goes into each layer and what comes out of the last (after the final norm, where there is one), each
        (B, S, D) with zeros at padding, as transformers' output_hidden_states."""
        x = self.lookup(self.word_embeddings, input_ids)
        if self.embedding_scale is not None:
            x = x * torch.tensor(self.embedding_scale, dtype=x.dtype)
        if self.token_type_embeddings is not None:  # added in transformers' order: the sums then round alike
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.lookup(self.token_type_embeddings, types)
        if self.position_embeddings is not None:
            x = x + self.lookup(self.position_embeddings, self.positions(input_ids))
        x = self.dropout(x if self.embeddings_norm is None else self.embeddings_norm(x))  # (B, S, D)
        packing = Packing(attention_mask.bool(), self.packs(attention_mask), lengths)
        L = attention_length(input_ids.shape[1], x, self.training)
        # (B, 1, 1, L): every position attends to its row's tokens; in Qwen3 (B, 1, L, L), to those up to its own
        mask = F.pad(attention_mask.bool(), (0, L - input_ids.shape[1]))[:, None, None, :]
        if self.config.is_causal:
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        if self.relative_attention_bias is not None:
            buckets = relative_position_buckets(L, input_ids.device, self.config.relative_attention_num_buckets,
                                                self.config.relative_attention_max_distance)
            bias = self.lookup(self.relative_attention_bias, buckets)
            bias = bias.permute(2, 0, 1).unsqueeze(0).to(x.dtype)  # (L, L, H) -> (1, H, L, L)
            mask = bias.masked_fill(~mask, float("-inf"))  # (B, H, L, L)
        masks = {None: mask}  # by the layers' windows (ModernBERT's sliding layers attend to the keys near)
        rotations = {}  # by the layers' rotary bases (ModernBERT)
        for layer in self.layers:
            if layer.window is not None and layer.window not in masks:
                masks[layer.window] = sliding_window_mask(mask, layer.window)
            if layer.rope_theta is not None and layer.rope_theta not in rotations:
                rotations[layer.rope_theta] = rotary_angles(packing.positions(), layer.rope_theta, layer.head_dim,
                                                            x.dtype)
        x = packing.pack(x)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)
        inputs = []  # each layer's input, for hidden_states
        # on a GPU, not cuDNN's attention: it builds a graph for every new (batch, length) shape, which costs more
        # than the attention itself when batches of sorted texts each have a length of their own
        with sdpa_kernel(ATTENTION_BACKENDS) if x.is_cuda else contextlib.nullcontext():
            for index in self.layer_order:
                layer = self.layers[index]
                inputs += [x] if hidden_states is not None else []
                x = layer(x, packing, masks[layer.window], rotations.get(layer.rope_theta))
        if self.final_norm is not None:
            x = self.dropout_after_final_norm(self.final_norm(x))
        x = self.padded(x, packing, attention_mask)
        if hidden_states is not None:
            hidden_states += [self.padded(state, packing, attention_mask) for state in inputs] + [x]
        return x

    @staticmethod
    def padded(x: torch.Tensor, packing: Packing, attention_mask: torch.Tensor) -> torch.Tensor:
        """Packed tokens (N, D) -> (B, S, D), zeros at padding."""
        x = packing.unpack(x)
        return x if packing.index is not None else x * attention_mask[..., None].to(x.dtype)

    def in_dtype(self, dtype: torch.dtype) -> "Encoder":
        """A copy whose weights are in `dtype`, for inference; in bf16 on the CPU, oneDNN's products take them
        packed (Layer.pack_weights). In fp16, T5's feed-forward output products keep their weights in fp32, as
        transformers keeps them (T5's _keep_in_fp32_modules): their sums overflow fp16 in large T5 models. Their
        input is then rounded up to fp32, and the layers' sums stay in fp32 from the first such product on
        (normalizing_first_forward)."""
        copied = copy.deepcopy(self).to(dtype)
        if dtype == torch.float16 and self.config.model_type == "t5":
            for layer, source in zip(copied.layers, self.layers):  # the weights as they were, not through fp16
                layer.output = copy.deepcopy(source.output).float()
        on_cpu = self.word_embeddings.weight.device.type == "cpu"
        if dtype == torch.bfloat16 and on_cpu and onednn_packed_weights(dtype):
            for layer in copied.layers:  # the layers that take oneDNN's products on the CPU (Layer.fuses_on_cpu)
                if not layer.normalizes_first and layer.hidden_act in POST_OPS:
                    layer.pack_weights()
        return copied

    def packs(self, attention_mask: torch.Tensor) -> bool:
        """Whether this batch's dense layers run on its real tokens only (see Packing): always on a GPU, where
        attention then runs on the packed tokens too; on the CPU where padding is more than PACK_ABOVE of the
        batch. There moving the tokens between the two layouts costs a few percent of a forward pass, more than a
        batch of texts sorted by length, as encode() makes them, usually pads (0.5% on the STS benchmark)."""
        if not self.packing or attention_mask.device.type != "cpu":
            return self.packing
        return int(attention_mask.sum()) < (1 - PACK_ABOVE) * attention_mask.numel()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02):
        """BERT's initialisation (an encoder trained from scratch)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(std=std)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.weight.fill_(1.0)
            if isinstance(module, GemmaNorm):  # scales by 1 + w
                module.weight.zero_()
            if isinstance(module, nn.LayerNorm) and module.bias is not None:
                module.bias.zero_()


class T5Norm(nn.RMSNorm):
    """T5's RMSNorm, and Qwen3's. In bf16 and fp16 as transformers' T5LayerNorm: the mean square in fp32, the
    normalized values rounded to the weight's type, then scaled; its input may be fp32 where the weight is not
    (Encoder.in_dtype). Qwen3RMSNorm rounds to the input's type instead, the same type in every copy of Qwen3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:
            return super().forward(x)
        mean_square = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(mean_square + self.eps)).to(self.weight.dtype)


class GemmaNorm(nn.Module):
    """Gemma 3's RMSNorm: x / rms(x) * (1 + w), in float32, rounded back to x's type as transformers' Gemma3RMSNorm
    does; w starts at zeros."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class IndexAddEmbedding(torch.autograd.Function):
    """F.embedding whose backward adds each index's gradient rows into the table's with index_add_ (no sort, no
    host sync; on a GPU the order of the additions, and so the last bits, may change from run to run). As
    nn.Embedding, the padding index gets no gradient."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.table_rows, ctx.padding_idx = weight.shape[0], padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ids, grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:
            grad = grad.masked_fill((ids == ctx.padding_idx)[:, None], 0)
        return None, grad.new_zeros(ctx.table_rows, grad.shape[1]).index_add_(0, ids, grad), None


def rotary_angles(positions: torch.Tensor, theta: float, head_dim: int,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines and sines (N, 1, head_dim) of rotary position embeddings (RoFormer; ModernBERT) for tokens at
    `positions` (N,): pair i of a head's dimensions, i < head_dim / 2, turns by position * theta^(-2i / head_dim).
    Rounded to `dtype`, as transformers rounds them."""
    frequencies = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    angles = positions[:, None].float() * frequencies  # (N, head_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Queries or keys (N, D) turned by their tokens' rotary angles (rotary_angles): each head's dimension i paired
    with i + head_dim / 2. In float32, as transformers does it."""
    N, D = x.shape
    heads = x.view(N, -1, cos.shape[-1]).float()  # (N, H, D/H)
    first, second = heads.chunk(2, dim=-1)
    turned = heads * cos + torch.cat((-second, first), dim=-1) * sin
    return turned.to(x.dtype).view(N, D)


def sliding_window_mask(mask: torch.Tensor, window: int) -> torch.Tensor:
    """ModernBERT's sliding layers' mask: from (B, 1, 1, L), True at real keys, to (B, 1, L, L), True where a key is
    real and at most `window` tokens from the query; and on the diagonal, so that a padded query with no real key near
    sees itself: a row without keys would make NaN, which the next layer's products would spread."""
    L = mask.shape[-1]
    places = torch.arange(L, device=mask.device)
    near = (places[:, None] - places[None, :]).abs() <= window  # (L, L)
    return mask & near | torch.eye(L, dtype=torch.bool, device=mask.device)


def relative_position_buckets(length: int, device, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """MPNet's (T5's) bucket of each (query, key) distance, (S, S): half the buckets for keys before the query,
    half for after; within each half, exact distances up to a quarter of the buckets, then logarithmic bins
    up to max_distance."""
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]  # query - key: > 0 for keys before the query
    half = num_buckets // 2
    bucket = (distance < 0).long() * half
    distance = distance.abs()
    exact = half // 2
    logarithmic = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact)
                           * (half - exact)).long()
    return bucket + torch.where(distance < exact, distance, logarithmic.clamp(max=half - 1))
