"""BERT and RoBERTa in plain PyTorch, with the parameter names of Hugging Face checkpoints.

The module tree mirrors the checkpoint names (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, ...) so that a published state dict loads after
nothing more than dropping a model prefix; `load_encoder_weights` checks every tensor.
"""

from dataclasses import MISSING, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")  # xlm-roberta is RoBERTa with another vocabulary

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT was trained with
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class ConfigError(ValueError):
    pass


@dataclass
class EncoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_dict(cls, config: dict, source: str = "config.json") -> "EncoderConfig":
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"{source}: model_type {model_type!r} is not supported; "
                              f"minisbert runs {', '.join(SUPPORTED_MODEL_TYPES)}")
        if config.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act {config['hidden_act']!r} is not supported; "
                              f"choose one of {', '.join(ACTIVATIONS)}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {config['position_embedding_type']!r} "
                              "is not supported; only 'absolute' is")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - values.keys())
        if missing:
            raise ConfigError(f"{source}: missing {', '.join(missing)}")
        for field in fields(cls):
            value = values.get(field.name)
            if field.type is int and value is not None and (type(value) is not int or value < (field.name != "pad_token_id")):
                smallest = "0" if field.name == "pad_token_id" else "1"
                raise ConfigError(f"{source}: {field.name} must be an integer of at least {smallest}, not {value!r}")
            if field.type is float and value is not None and (type(value) not in (int, float) or not 0 <= value < 1
                                                             or (field.name == "layer_norm_eps" and value == 0)):
                raise ConfigError(f"{source}: {field.name} must be a number in [0, 1) (eps above 0), not {value!r}")
        if values.get("pad_token_id", 0) >= values["vocab_size"]:
            raise ConfigError(f"{source}: pad_token_id {values['pad_token_id']} is outside the vocabulary "
                              f"(vocab_size {values['vocab_size']})")
        if values["hidden_size"] % values["num_attention_heads"]:
            raise ConfigError(f"{source}: hidden_size {values['hidden_size']} is not a multiple of "
                              f"num_attention_heads {values['num_attention_heads']}")
        return cls(**values)

    @property
    def is_roberta(self) -> bool:
        return self.model_type != "bert"

    @property
    def max_tokens(self) -> int:
        # RoBERTa's positions start after padding_idx, so 514 positions hold 512 tokens.
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.is_roberta else 0)


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        d, pad = config.hidden_size, config.pad_token_id
        # The tables start uninitialised (passing _weight skips nn.Embedding's random init, which alone costs
        # a second on the meta device): a checkpoint or init_weights() fills them.
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=pad,
                                            _weight=torch.empty(config.vocab_size, d))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d,
                                                padding_idx=pad if config.is_roberta else None,
                                                _weight=torch.empty(config.max_position_embeddings, d))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d, _weight=torch.empty(config.type_vocab_size, d))
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        if self.config.is_roberta:
            # fairseq numbering: real tokens count up from padding_idx + 1, padding keeps padding_idx
            is_token = input_ids.ne(self.config.pad_token_id).long()
            position_ids = torch.cumsum(is_token, dim=1) * is_token + self.config.pad_token_id
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))  # (B, S, D)


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, attention_mask, tokens):
        # x holds the real tokens only, (N, D); `tokens` says where each sits in the (B * S) grid of the batch
        B, S = attention_mask.shape[0], attention_mask.shape[-1]
        N, D = x.shape
        H = self.num_heads

        def to_heads(t):  # (N, D) -> (B, H, S, D/H), zeros at the padding
            grid = t.new_zeros(B * S, D).index_copy(0, tokens, t)
            return grid.view(B, S, H, D // H).transpose(1, 2)

        q, k, v = (to_heads(proj(x)) for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B * S, D).index_select(0, tokens)  # (B, H, S, D/H) -> (N, D)


class AddNorm(nn.Module):
    """The `*.output` blocks: project, dropout, add the residual, post-LayerNorm."""

    def __init__(self, in_features: int, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = nn.ModuleDict({"self": SelfAttention(config), "output": AddNorm(config.hidden_size, config)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(config.hidden_size, config.intermediate_size)})
        self.output = AddNorm(config.intermediate_size, config)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, x, attention_mask, tokens):
        x = self.attention["output"](self.attention["self"](x, attention_mask, tokens), x)
        return self.output(self.activation(self.intermediate["dense"](x)), x)


class Encoder(nn.Module):
    """Token ids (B, S) and attention mask (B, S) in, contextual token embeddings (B, S, D) out."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))})
        self.pooler_tensors = {}  # filled by load_encoder_weights

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, D)
        B, S, D = x.shape
        real = attention_mask.bool()
        # Only attention needs the (B, S) layout. The dense layers, most of the work, run on the real tokens
        # alone, packed as (N, D): padding costs nothing there, which matters when texts differ in length.
        tokens = real.flatten().nonzero().squeeze(1)  # (N,) positions in the (B * S) grid
        x = x.reshape(B * S, D).index_select(0, tokens)
        mask = real[:, None, None, :]  # (B, 1, 1, S): every position attends to the real tokens of its row
        for layer in self.encoder["layer"]:
            x = layer(x, mask, tokens)
        return x.new_zeros(B * S, D).index_copy(0, tokens, x).view(B, S, D)  # zeros at the padding

    def init_weights(self, std: float = 0.02):
        """BERT's initialisation, for an encoder trained from scratch (tests, benchmarks)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# Names in published checkpoints that SBERT does not use: the pretraining heads, the pooler,
# and buffers that older files stored.
IGNORED_PREFIXES = ("pooler.", "cls.", "lm_head.", "embeddings.position_ids", "embeddings.token_type_ids")


def pooler_name(name: str) -> str | None:
    """`pooler.dense.weight` for a checkpoint's pooler tensor (with or without a model prefix), else None."""
    return name[name.index("pooler."):] if name.split(".")[-3:-2] == ["pooler"] else None


def checkpoint_name_to_ours(name: str, model_type: str) -> str | None:
    """Map one checkpoint tensor name to ours, or None for a tensor SBERT does not use."""
    for prefix in ("bert.", "roberta.", model_type.replace("-", "_") + ".", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.startswith(IGNORED_PREFIXES):
        return None
    # checkpoints converted from the original TensorFlow code name LayerNorm's parameters gamma and beta
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def load_encoder_weights(encoder: Encoder, state_dict: dict, source: str) -> None:
    """Copy a checkpoint into `encoder`; every missing, unexpected, wrongly shaped or non-finite tensor is an error.

    The pooler's tensors, which SBERT does not use, are kept in `encoder.pooler_tensors` and written back on
    save, so that transformers' BertModel finds every tensor it expects in a saved folder.
    """
    ours = dict(encoder.state_dict())
    renamed = {}
    unexpected = []
    encoder.pooler_tensors = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: tensor {name} holds NaN or infinite values")
        target = checkpoint_name_to_ours(name, encoder.config.model_type)
        if target is None:
            if target_name := pooler_name(name):
                encoder.pooler_tensors[target_name] = tensor
            continue
        if target not in ours:
            unexpected.append(name)
        renamed[target] = (name, tensor)
    missing = sorted(ours.keys() - renamed.keys())
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected))}")
    for target, (name, tensor) in renamed.items():
        if target in ours and tuple(tensor.shape) != tuple(ours[target].shape):
            problems.append(f"tensor {name} has shape {tuple(tensor.shape)} but config.json asks for "
                            f"{tuple(ours[target].shape)}")
    if problems:
        raise ValueError(f"{source} does not match its config.json: " + "; ".join(problems))
    # assign=True adopts the loaded tensors, so an encoder built on the meta device is never initialised twice
    encoder.load_state_dict({target: tensor.float() for target, (_, tensor) in renamed.items()}, assign=True)
