"""BERT, RoBERTa, MPNet, DistilBERT, ALBERT, T5, ModernBERT, Qwen3 and Gemma 3 (EmbeddingGemma's) as their Hugging
Face files describe them, in the encoder's terms: `EncoderConfig`, read from each architecture's config.json (its names, its defaults) and written back
as transformers reads it, and `checkpoint_names`, the table from our tensor names to those of a published checkpoint,
with which checkpoint.py loads and saves the weights (checking each one) and optim.py leaves out of the weight decay
what fit() leaves out.
"""

from dataclasses import MISSING, dataclass, fields

import torch.nn.functional as F

# xlm-roberta and camembert are RoBERTa with another vocabulary
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert", "albert", "t5",
                         "modernbert", "qwen3", "gemma3_text")
ARCHITECTURES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
                 "camembert": "CamembertModel", "mpnet": "MPNetModel", "distilbert": "DistilBertModel",
                 "albert": "AlbertModel", "t5": "T5EncoderModel", "modernbert": "ModernBertModel",
                 "qwen3": "Qwen3Model", "gemma3_text": "Gemma3TextModel"}
# transformers' defaults for the fields of ours that its AlbertConfig sets otherwise than BERT's
ALBERT_DEFAULTS = {"embedding_size": 128, "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0,
                   "attention_probs_dropout_prob": 0.0}
# DistilBERT's config.json names for our EncoderConfig fields; its LayerNorms use 1e-12, written in its code
DISTILBERT_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                    "hidden_dim": "intermediate_size", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                    "attention_dropout": "attention_probs_dropout_prob"}
# T5's config.json names for our fields (its dropout_rate is also the attention's), and transformers' T5Config defaults
T5_NAMES = {"d_model": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "d_ff": "intermediate_size", "dropout_rate": "hidden_dropout_prob", "layer_norm_epsilon": "layer_norm_eps",
            "relative_attention_num_buckets": "relative_attention_num_buckets",
            "relative_attention_max_distance": "relative_attention_max_distance"}
T5_DEFAULTS = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8,
               "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "relative_attention_num_buckets": 32,
               "relative_attention_max_distance": 128, "feed_forward_proj": "relu", "pad_token_id": 0}
T5_MAX_TOKENS = 1 << 20  # no position table: as long as memory allows
# transformers' ModernBertConfig defaults, with the names its older config.json files use
MODERNBERT_DEFAULTS = {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
                       "num_attention_heads": 12, "hidden_activation": "gelu", "max_position_embeddings": 8192,
                       "norm_eps": 1e-5, "pad_token_id": 50283, "attention_bias": False, "mlp_bias": False,
                       "norm_bias": False, "attention_dropout": 0.0, "embedding_dropout": 0.0, "mlp_dropout": 0.0,
                       "local_attention": 128, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
                       "local_rope_theta": 10000.0}
LAYER_TYPES = ("full_attention", "sliding_attention")  # ModernBERT's layers attend to all keys or to those near
# transformers' Qwen3Config defaults (Qwen3-Embedding's config.json sets most of them)
QWEN3_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
                  "rms_norm_eps": 1e-6, "attention_bias": False, "attention_dropout": 0.0, "rope_theta": 10000.0,
                  "use_sliding_window": False}
# transformers' Gemma3TextConfig defaults (EmbeddingGemma's config.json sets most of them)
GEMMA3_DEFAULTS = {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                   "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                   "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                   "pad_token_id": 0, "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": 256,
                   "sliding_window": 4096, "sliding_window_pattern": 6, "rope_theta": 1000000.0,
                   "rope_local_base_freq": 10000.0, "use_bidirectional_attention": False}
# the fields that only some model types set: any other model's config.json that holds them anyway does not
OWN_FIELDS = {"albert": ("embedding_size", "num_hidden_groups", "inner_group_num"),
              "t5": ("relative_attention_max_distance", "gated_feed_forward", "attention_bias", "mlp_bias"),
              "modernbert": ("gated_feed_forward", "attention_bias", "mlp_bias", "norm_bias", "rope_theta",
                             "local_rope_theta", "local_attention", "layer_types"),
              "qwen3": ("gated_feed_forward", "attention_bias", "mlp_bias", "rope_theta", "num_key_value_heads",
                        "head_dim"),
              "gemma3_text": ("gated_feed_forward", "attention_bias", "mlp_bias", "rope_theta", "local_rope_theta",
                              "layer_types", "num_key_value_heads", "head_dim", "query_pre_attn_scalar",
                              "sliding_window")}

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT was trained with
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
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
    pad_token_id: int | None = 0  # Qwen3 may have none
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    relative_attention_num_buckets: int = 32  # MPNet and T5
    relative_attention_max_distance: int = 128  # MPNet and T5
    gated_feed_forward: bool = False  # T5 v1.1, ModernBERT: the feed-forward's first product times a second, a gate
    attention_bias: bool = True  # T5 and ModernBERT: False, the attention's products add no bias
    mlp_bias: bool = True  # nor the feed-forward's
    norm_bias: bool = True  # ModernBERT: False, its LayerNorms add no bias
    embedding_size: int | None = None  # ALBERT only: the token embeddings' size, projected to hidden_size
    num_hidden_groups: int = 1  # ALBERT only: groups of layers with parameters of their own
    inner_group_num: int = 1  # ALBERT only: layers in each group
    rope_theta: float | None = None  # ModernBERT only: rotary positions of this base in its full attention layers,
    local_rope_theta: float | None = None  # of this one in its sliding layers,
    local_attention: int | None = None  # which attend to the keys at most local_attention // 2 tokens away;
    layer_types: list[str] | None = None  # each layer's kind, one of LAYER_TYPES
    num_key_value_heads: int | None = None  # Qwen3: fewer key and value heads than query heads, each shared by a group
    head_dim: int | None = None  # Qwen3: each head's size, which need not be hidden_size / num_attention_heads
    query_pre_attn_scalar: float | None = None  # Gemma 3: the scores scaled by its inverse square root;
    sliding_window: int | None = None  # its sliding layers attend to the keys at most sliding_window // 2 away

    @classmethod
    def from_dict(cls, config: dict, source: str = "config.json") -> "EncoderConfig":
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"{source}: model_type {model_type!r} is not supported; "
                              f"minisbert runs {', '.join(SUPPORTED_MODEL_TYPES)}")
        if model_type == "distilbert":
            if config.get("sinusoidal_pos_embds"):
                raise ConfigError(f"{source}: sinusoidal_pos_embds (fixed position embeddings) is not supported")
            missing = [theirs for theirs in DISTILBERT_NAMES if theirs not in config]
            if missing:
                raise ConfigError(f"{source}: missing {', '.join(missing)}")
            config = {"model_type": model_type, "layer_norm_eps": 1e-12, "type_vocab_size": 1,
                      **{ours: config[theirs] for theirs, ours in DISTILBERT_NAMES.items()},
                      **{k: config[k] for k in ("vocab_size", "max_position_embeddings", "pad_token_id")
                         if k in config}}
        if model_type == "t5":
            config = t5_config(config, source)
        if model_type == "modernbert":
            config = modernbert_config(config, source)
        if model_type == "qwen3":
            config = qwen3_config(config, source)
        if model_type == "gemma3_text":
            config = gemma3_config(config, source)
        if model_type == "albert":
            config = {**ALBERT_DEFAULTS, **config}
        config = {k: v for k, v in config.items() if k not in foreign_fields(model_type)}
        if config.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act {config['hidden_act']!r} is not supported; "
                              f"choose one of {', '.join(ACTIVATIONS)}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {config['position_embedding_type']!r} "
                              "is not supported; only 'absolute' is")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        if model_type == "qwen3" and config.get("pad_token_id") is None:  # none: no padding row in the token table
            values["pad_token_id"] = None
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - values.keys())
        if missing:
            raise ConfigError(f"{source}: missing {', '.join(missing)}")
        for field in fields(cls):
            value = values.get(field.name)
            if (field.type in (int, int | None) and value is not None
                    and (type(value) is not int or value < (field.name != "pad_token_id"))):
                smallest = "0" if field.name == "pad_token_id" else "1"
                raise ConfigError(f"{source}: {field.name} must be an integer of at least {smallest}, not {value!r}")
            if field.type is float and value is not None and (type(value) not in (int, float) or not 0 <= value < 1
                                                             or (field.name == "layer_norm_eps" and value == 0)):
                raise ConfigError(f"{source}: {field.name} must be a number in [0, 1) (eps above 0), not {value!r}")
            if field.type is bool and value is not None and type(value) is not bool:
                raise ConfigError(f"{source}: {field.name} must be true or false, not {value!r}")
        if values.get("num_hidden_groups", 1) > values["num_hidden_layers"]:
            raise ConfigError(f"{source}: num_hidden_groups {values['num_hidden_groups']} is more than "
                              f"num_hidden_layers {values['num_hidden_layers']}: some groups would never run")
        if (values.get("pad_token_id") or 0) >= values["vocab_size"]:
            raise ConfigError(f"{source}: pad_token_id {values['pad_token_id']} is outside the vocabulary "
                              f"(vocab_size {values['vocab_size']})")
        heads, key_value_heads = values["num_attention_heads"], values.get("num_key_value_heads")
        if key_value_heads is not None and heads % key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads "
                              f"{key_value_heads}")
        if values.get("head_dim") is None and values["hidden_size"] % values["num_attention_heads"]:
            raise ConfigError(f"{source}: hidden_size {values['hidden_size']} is not a multiple of "
                              f"num_attention_heads {values['num_attention_heads']}")
        return cls(**values)

    def to_dict(self) -> dict:
        """A config.json that transformers reads as the same model."""
        left_out = foreign_fields(self.model_type)
        config = {field.name: getattr(self, field.name) for field in fields(self) if field.name not in left_out}
        if self.model_type == "modernbert":
            return {"architectures": [ARCHITECTURES["modernbert"]], "model_type": "modernbert",
                    **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "max_position_embeddings", "pad_token_id",
                                              "attention_bias", "mlp_bias", "norm_bias", "local_attention",
                                              "layer_types")},
                    "hidden_activation": self.hidden_act, "norm_eps": self.layer_norm_eps,
                    "embedding_dropout": self.hidden_dropout_prob, "mlp_dropout": self.hidden_dropout_prob,
                    "attention_dropout": self.attention_probs_dropout_prob,
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": self.rope_theta},
                                        "sliding_attention": {"rope_type": "default",
                                                              "rope_theta": self.local_rope_theta}}}
        if self.model_type == "qwen3":
            return {"architectures": [ARCHITECTURES["qwen3"]], "model_type": "qwen3",
                    **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "head_dim",
                                              "max_position_embeddings", "pad_token_id", "attention_bias")},
                    "hidden_act": self.hidden_act, "rms_norm_eps": self.layer_norm_eps,
                    "attention_dropout": self.attention_probs_dropout_prob, "use_sliding_window": False,
                    "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
                    "tie_word_embeddings": True, "use_cache": False}
        if self.model_type == "gemma3_text":
            return {"architectures": [ARCHITECTURES["gemma3_text"]], "model_type": "gemma3_text",
                    **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "head_dim",
                                              "max_position_embeddings", "pad_token_id", "attention_bias",
                                              "query_pre_attn_scalar", "sliding_window", "layer_types")},
                    "hidden_activation": self.hidden_act, "rms_norm_eps": self.layer_norm_eps,
                    "attention_dropout": self.attention_probs_dropout_prob, "use_bidirectional_attention": True,
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": self.rope_theta},
                                        "sliding_attention": {"rope_type": "default",
                                                              "rope_theta": self.local_rope_theta}},
                    "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_cache": False}
        if self.model_type == "t5":
            theirs = {ours: theirs for theirs, ours in T5_NAMES.items()}
            return {"architectures": [ARCHITECTURES["t5"]], "model_type": "t5", "vocab_size": self.vocab_size,
                    "pad_token_id": self.pad_token_id, "d_kv": self.hidden_size // self.num_attention_heads,
                    "feed_forward_proj": ("gated-" if self.gated_feed_forward else "") + self.hidden_act,
                    "is_encoder_decoder": False, "use_cache": False,
                    **{theirs[ours]: config[ours] for ours in theirs}}
        if self.model_type == "distilbert":
            config = {"model_type": "distilbert", "vocab_size": self.vocab_size, "pad_token_id": self.pad_token_id,
                      "max_position_embeddings": self.max_position_embeddings, "sinusoidal_pos_embds": False,
                      **{theirs: config[ours] for theirs, ours in DISTILBERT_NAMES.items()}}
        return {"architectures": [ARCHITECTURES[self.model_type]], **config}

    @property
    def is_roberta(self) -> bool:  # positions numbered as RoBERTa does (Encoder.positions)
        return self.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet")

    @property
    def has_token_types(self) -> bool:
        return self.model_type not in ("mpnet", "distilbert", "t5", "modernbert", "qwen3", "gemma3_text")

    @property
    def has_position_table(self) -> bool:  # T5 has relative position biases instead, the others here rotary ones
        return self.model_type not in ("t5", "modernbert", "qwen3", "gemma3_text")

    @property
    def is_causal(self) -> bool:  # Qwen3, a decoder: each token attends to itself and the tokens before it
        return self.model_type == "qwen3"

    @property
    def attention_head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def key_value_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def has_relative_attention_bias(self) -> bool:
        return self.model_type in ("mpnet", "t5")

    @property
    def normalizes_first(self) -> bool:  # a norm before attention and feed-forward, and after the last layer
        return self.model_type in ("t5", "modernbert", "qwen3", "gemma3_text")

    @property
    def position_padding_idx(self) -> int:
        # the token id that RoBERTa-style numbering treats as padding: transformers' MPNet fixes it at 1
        return 1 if self.model_type == "mpnet" else self.pad_token_id

    @property
    def embedding_dim(self) -> int:  # the token embeddings' size: ALBERT's may be smaller than hidden_size
        return self.embedding_size or self.hidden_size

    @property
    def layer_order(self) -> list[int]:
        """Which of the encoder's layers (Encoder.layers) runs at each of the num_hidden_layers steps: each its own
        but in ALBERT, whose steps go through its groups in turn, each group's inner_group_num layers every time."""
        if self.model_type != "albert":
            return list(range(self.num_hidden_layers))
        groups, inner = self.num_hidden_groups, self.inner_group_num
        # the group of step i as transformers computes it, in floating point (18 layers in 14 groups: step 9 is
        # group 6 there, 7 in exact arithmetic)
        return [int(i / (self.num_hidden_layers / groups)) * inner + j for i in range(self.num_hidden_layers)
                for j in range(inner)]

    @property
    def distinct_layers(self) -> int:
        return self.num_hidden_groups * self.inner_group_num if self.model_type == "albert" else self.num_hidden_layers

    @property
    def max_tokens(self) -> int:
        if self.model_type == "t5":
            return T5_MAX_TOKENS
        # RoBERTa's positions start after padding_idx, so 514 positions hold 512 tokens.
        return self.max_position_embeddings - (self.position_padding_idx + 1 if self.is_roberta else 0)


def foreign_fields(model_type: str) -> set[str]:
    """The fields of EncoderConfig that other model types have and `model_type` has not (OWN_FIELDS)."""
    return {name for names in OWN_FIELDS.values() for name in names} - set(OWN_FIELDS.get(model_type, ()))


def t5_config(config: dict, source: str) -> dict:
    """A T5 config.json (transformers' T5Config defaults where a key is missing) in our field names."""
    config = {**T5_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    projection = config["feed_forward_proj"]
    parts = projection.split("-") if isinstance(projection, str) else []
    if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")):
        raise ConfigError(f"{source}: feed_forward_proj {projection!r} is neither an activation nor gated-<activation>")
    activation = "gelu_new" if projection == "gated-gelu" else parts[-1]  # as transformers reads "gated-gelu"
    if config["d_kv"] * config["num_heads"] != config["d_model"]:
        raise ConfigError(f"{source}: d_kv {config['d_kv']} x num_heads {config['num_heads']} is not d_model "
                          f"{config['d_model']}; attention narrower or wider than the layers is not supported")
    return {"model_type": "t5", "hidden_act": activation, "gated_feed_forward": len(parts) == 2,
            "attention_probs_dropout_prob": config["dropout_rate"], "type_vocab_size": 1, "attention_bias": False,
            "mlp_bias": False,
            "vocab_size": config["vocab_size"], "pad_token_id": config["pad_token_id"],
            **{ours: config[theirs] for theirs, ours in T5_NAMES.items()}}


def layer_kinds(config: dict, source: str, every_name: str, first_full: int) -> list[str]:
    """Each layer's kind (LAYER_TYPES): config.json's layer_types, or in older files every n-th layer full (n its
    `every_name`), the first full one at index `first_full` modulo n (ModernBERT's 0, Gemma 3's n - 1)."""
    layers, every = config["num_hidden_layers"], config[every_name]
    if "layer_types" not in config and not (type(every) is int and every >= 1):
        raise ConfigError(f"{source}: {every_name} must be an integer of at least 1, not {every!r}")
    layer_types = config.get("layer_types") or [LAYER_TYPES[bool((i - first_full) % every)] for i in range(layers)]
    if (not isinstance(layer_types, list) or len(layer_types) != layers
            or any(kind not in LAYER_TYPES for kind in layer_types)):
        raise ConfigError(f"{source}: layer_types must list {', '.join(LAYER_TYPES)} for each of the {layers} "
                          f"layers, not {layer_types!r}")
    return layer_types


def rotary_bases(config: dict, source: str, older_names: tuple[str, str]) -> dict[str, float]:
    """The rotary base of each layer kind: rope_parameters' per kind, or in older files the two `older_names` (full
    attention's, then sliding's). Only the default rotation is supported."""
    thetas = {}
    for kind, older_name in zip(LAYER_TYPES, older_names):
        rope = (config.get("rope_parameters") or {}).get(kind) or {}
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"{source}: rope_type {rope['rope_type']!r} ({kind}) is not supported; only 'default' is")
        thetas[kind] = rope.get("rope_theta", config[older_name])
        if type(thetas[kind]) not in (int, float) or thetas[kind] <= 0:
            raise ConfigError(f"{source}: the rope_theta of {kind} must be a number above 0, not {thetas[kind]!r}")
    return thetas


def modernbert_config(config: dict, source: str) -> dict:
    """A ModernBERT config.json (transformers' ModernBertConfig defaults where a key is missing; the layers' kinds and
    rotary bases as layer_types and rope_parameters, or in older files global_attn_every_n_layers and
    global_rope_theta / local_rope_theta) in our field names."""
    config = {**MODERNBERT_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if config["embedding_dropout"] != config["mlp_dropout"]:
        raise ConfigError(f"{source}: embedding_dropout {config['embedding_dropout']} differs from mlp_dropout "
                          f"{config['mlp_dropout']}; minisbert takes one rate for both")
    if config.get("rope_scaling"):
        raise ConfigError(f"{source}: rope_scaling is not supported")
    layer_types = layer_kinds(config, source, "global_attn_every_n_layers", first_full=0)
    thetas = rotary_bases(config, source, ("global_rope_theta", "local_rope_theta"))
    return {"model_type": "modernbert", "hidden_act": config["hidden_activation"], "layer_norm_eps": config["norm_eps"],
            "hidden_dropout_prob": config["mlp_dropout"], "attention_probs_dropout_prob": config["attention_dropout"],
            "type_vocab_size": 1, "gated_feed_forward": True, "layer_types": layer_types,
            "rope_theta": float(thetas["full_attention"]), "local_rope_theta": float(thetas["sliding_attention"]),
            **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "max_position_embeddings", "pad_token_id",
                                      "attention_bias", "mlp_bias", "norm_bias", "local_attention")}}


def qwen3_config(config: dict, source: str) -> dict:
    """A Qwen3 config.json (transformers' Qwen3Config defaults where a key is missing; the rotary base as
    rope_parameters or rope_theta) in our field names. Sliding-window layers and scaled rotary positions are not
    supported (Qwen3-Embedding has neither)."""
    config = {**QWEN3_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if config["use_sliding_window"] or "sliding_attention" in (config.get("layer_types") or []):
        raise ConfigError(f"{source}: sliding-window attention (use_sliding_window, layer_types) is not supported")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"{source}: rope_type {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                          "only 'default' is")
    theta = rope.get("rope_theta", config["rope_theta"])
    if type(theta) not in (int, float) or theta <= 0:
        raise ConfigError(f"{source}: rope_theta must be a number above 0, not {theta!r}")
    return {"model_type": "qwen3", "layer_norm_eps": config["rms_norm_eps"], "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": config["attention_dropout"], "type_vocab_size": 1,
            "gated_feed_forward": True, "mlp_bias": False, "rope_theta": float(theta),
            "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
            **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "head_dim", "hidden_act", "max_position_embeddings",
                                      "attention_bias")},
            **({"pad_token_id": config["pad_token_id"]} if "pad_token_id" in config else {})}


def gemma3_config(config: dict, source: str) -> dict:
    """A Gemma 3 text config.json (transformers' Gemma3TextConfig defaults where a key is missing; the rotary bases as
    rope_parameters per layer kind, or rope_theta / rope_local_base_freq in older files; the layers' kinds as
    layer_types, or every sliding_window_pattern-th layer full) in our field names. Only as EmbeddingGemma runs it:
    bidirectional attention, no soft-capping of the scores, unscaled rotary positions."""
    config = {**GEMMA3_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if config["use_bidirectional_attention"] is not True:
        raise ConfigError(f"{source}: a Gemma 3 decoder with causal attention is not supported; minisbert runs "
                          "Gemma 3 as EmbeddingGemma does, with use_bidirectional_attention true")
    if config.get("attn_logit_softcapping") or config.get("rope_scaling"):
        raise ConfigError(f"{source}: attn_logit_softcapping and rope_scaling are not supported")
    layer_types = layer_kinds(config, source, "sliding_window_pattern", first_full=-1)
    thetas = rotary_bases(config, source, ("rope_theta", "rope_local_base_freq"))
    scalar, window = config["query_pre_attn_scalar"], config["sliding_window"]
    if type(scalar) not in (int, float) or scalar <= 0:
        raise ConfigError(f"{source}: query_pre_attn_scalar must be a number above 0, not {scalar!r}")
    if type(window) is not int or window < 1:
        raise ConfigError(f"{source}: sliding_window must be an integer of at least 1, not {window!r}")
    return {"model_type": "gemma3_text", "hidden_act": config["hidden_activation"],
            "layer_norm_eps": config["rms_norm_eps"], "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": config["attention_dropout"], "type_vocab_size": 1,
            "gated_feed_forward": True, "mlp_bias": False, "layer_types": layer_types,
            "rope_theta": float(thetas["full_attention"]), "local_rope_theta": float(thetas["sliding_attention"]),
            "query_pre_attn_scalar": scalar,  # as given: transformers takes an integer
            **{k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "num_key_value_heads", "head_dim",
                                      "max_position_embeddings", "pad_token_id", "attention_bias",
                                      "sliding_window")}}


def checkpoint_names(config: EncoderConfig) -> dict[str, str]:
    """{our tensor name: its name in a Hugging Face BertModel / RobertaModel / MPNetModel / DistilBertModel /
    AlbertModel / T5EncoderModel / ModernBertModel / Qwen3Model checkpoint}."""
    if config.model_type == "t5":
        return t5_checkpoint_names(config)
    if config.model_type == "modernbert":
        return modernbert_checkpoint_names(config)
    if config.model_type == "qwen3":
        return qwen3_checkpoint_names(config)
    if config.model_type == "gemma3_text":
        return gemma3_checkpoint_names(config)
    names = {"word_embeddings.weight": "embeddings.word_embeddings.weight",
             "position_embeddings.weight": "embeddings.position_embeddings.weight",
             "embeddings_norm.weight": "embeddings.LayerNorm.weight",
             "embeddings_norm.bias": "embeddings.LayerNorm.bias"}
    per_layer = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attention_output": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
    layers = [f"encoder.layer.{i}" for i in range(config.num_hidden_layers)]
    if config.model_type == "mpnet":
        names["relative_attention_bias.weight"] = "encoder.relative_attention_bias.weight"
        per_layer.update(query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
                         attention_output="attention.attn.o", attention_norm="attention.LayerNorm")
    elif config.model_type == "distilbert":
        layers = [f"transformer.layer.{i}" for i in range(config.num_hidden_layers)]
        per_layer = {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
                     "attention_output": "attention.out_lin", "attention_norm": "sa_layer_norm",
                     "intermediate": "ffn.lin1", "output": "ffn.lin2", "output_norm": "output_layer_norm"}
    elif config.model_type == "albert":
        for kind in ("weight", "bias"):
            names[f"embedding_projection.{kind}"] = f"encoder.embedding_hidden_mapping_in.{kind}"
        layers = [f"encoder.albert_layer_groups.{group}.albert_layers.{j}" for group in range(config.num_hidden_groups)
                  for j in range(config.inner_group_num)]
        per_layer = {"query": "attention.query", "key": "attention.key", "value": "attention.value",
                     "attention_output": "attention.dense", "attention_norm": "attention.LayerNorm",
                     "intermediate": "ffn", "output": "ffn_output", "output_norm": "full_layer_layer_norm"}
    if config.has_token_types:
        names["token_type_embeddings.weight"] = "embeddings.token_type_embeddings.weight"
    for i, layer in enumerate(layers):
        for ours, theirs in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"{layer}.{theirs}.{kind}"
    return names


def t5_checkpoint_names(config: EncoderConfig) -> dict[str, str]:
    """checkpoint_names for T5's encoder: weights only; the embeddings are "shared" with the decoder of a whole T5
    (older files also hold them as encoder.embed_tokens.weight: T5_ALIASES), the position bias is the first layer's."""
    names = {"word_embeddings.weight": "shared.weight", "final_norm.weight": "encoder.final_layer_norm.weight",
             "relative_attention_bias.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    feed_forward = "layer.1.DenseReluDense"
    per_layer = {"query": "layer.0.SelfAttention.q", "key": "layer.0.SelfAttention.k",
                 "value": "layer.0.SelfAttention.v", "attention_output": "layer.0.SelfAttention.o",
                 "attention_norm": "layer.0.layer_norm", "output_norm": "layer.1.layer_norm",
                 "intermediate": f"{feed_forward}.wi", "output": f"{feed_forward}.wo"}
    if config.gated_feed_forward:
        per_layer.update(intermediate=f"{feed_forward}.wi_0", gate=f"{feed_forward}.wi_1")
    for i in range(config.num_hidden_layers):
        for ours, theirs in per_layer.items():
            names[f"layers.{i}.{ours}.weight"] = f"encoder.block.{i}.{theirs}.weight"
    return names


def modernbert_checkpoint_names(config: EncoderConfig) -> dict[str, str]:
    """checkpoint_names for ModernBERT, whose tensors hold the query, key and value products stacked (Wqkv), and the
    feed-forward's first product and its gate (Wi): ours listed in the order they are stacked there. Biases where the
    config has them; no norm before the first layer's attention."""
    names = {"word_embeddings.weight": "embeddings.tok_embeddings.weight"}
    kinds = {"norm": ("weight", "bias") if config.norm_bias else ("weight",),
             "attention": ("weight", "bias") if config.attention_bias else ("weight",),
             "mlp": ("weight", "bias") if config.mlp_bias else ("weight",)}
    for kind in kinds["norm"]:
        names[f"embeddings_norm.{kind}"] = f"embeddings.norm.{kind}"
        names[f"final_norm.{kind}"] = f"final_norm.{kind}"
    per_layer = {"query": ("attn.Wqkv", "attention"), "key": ("attn.Wqkv", "attention"),
                 "value": ("attn.Wqkv", "attention"), "attention_output": ("attn.Wo", "attention"),
                 "attention_norm": ("attn_norm", "norm"), "intermediate": ("mlp.Wi", "mlp"), "gate": ("mlp.Wi", "mlp"),
                 "output": ("mlp.Wo", "mlp"), "output_norm": ("mlp_norm", "norm")}
    for i in range(config.num_hidden_layers):
        for ours, (theirs, kind) in per_layer.items():
            if not (i == 0 and ours == "attention_norm"):
                names.update({f"layers.{i}.{ours}.{k}": f"layers.{i}.{theirs}.{k}" for k in kinds[kind]})
    return names


def qwen3_checkpoint_names(config: EncoderConfig) -> dict[str, str]:
    """checkpoint_names for Qwen3Model (a Qwen3ForCausalLM's under "model.", its lm_head left out): the feed-forward's
    gate_proj is our `intermediate` (the activation's input) and up_proj our `gate`; each head's queries and keys are
    normalized (q_norm, k_norm) before they are turned."""
    bias = ("weight", "bias") if config.attention_bias else ("weight",)
    names = {"word_embeddings.weight": "embed_tokens.weight", "final_norm.weight": "norm.weight"}
    per_layer = {"query": ("self_attn.q_proj", bias), "key": ("self_attn.k_proj", bias),
                 "value": ("self_attn.v_proj", bias), "attention_output": ("self_attn.o_proj", bias),
                 "query_norm": ("self_attn.q_norm", ("weight",)), "key_norm": ("self_attn.k_norm", ("weight",)),
                 "attention_norm": ("input_layernorm", ("weight",)),
                 "output_norm": ("post_attention_layernorm", ("weight",)),
                 "intermediate": ("mlp.gate_proj", ("weight",)), "gate": ("mlp.up_proj", ("weight",)),
                 "output": ("mlp.down_proj", ("weight",))}
    for i in range(config.num_hidden_layers):
        for ours, (theirs, kinds) in per_layer.items():
            names.update({f"layers.{i}.{ours}.{k}": f"layers.{i}.{theirs}.{k}" for k in kinds})
    return names


def gemma3_checkpoint_names(config: EncoderConfig) -> dict[str, str]:
    """checkpoint_names for Gemma3TextModel: as Qwen3's, with four norms a layer (input_layernorm before attention,
    post_attention_layernorm on its output before the residual sum, pre_feedforward_layernorm and
    post_feedforward_layernorm around the feed-forward)."""
    names = qwen3_checkpoint_names(config)
    for i in range(config.num_hidden_layers):
        names.update({f"layers.{i}.output_norm.weight": f"layers.{i}.pre_feedforward_layernorm.weight",
                      f"layers.{i}.post_attention_norm.weight": f"layers.{i}.post_attention_layernorm.weight",
                      f"layers.{i}.post_output_norm.weight": f"layers.{i}.post_feedforward_layernorm.weight"})
    return names


# other names of a tensor in some checkpoints: T5's tied embeddings, saved twice by older transformers
T5_ALIASES = {"encoder.embed_tokens.weight": "shared.weight"}


# Tensors of published checkpoints that SBERT does not use: pretraining heads and buffers older files stored.
# The pooler is not used either, but kept (see Encoder.pooler_tensors).
IGNORED_PREFIXES = ("cls.", "lm_head.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "predictions.",
                    "sop_classifier.", "embeddings.position_ids", "embeddings.token_type_ids")
T5_IGNORED_PREFIXES = ("decoder.",)  # a whole T5's decoder


def plain_name(name: str, model_type: str) -> str:
    """A checkpoint name without its model prefix (`bert.`, `roberta.`), with TensorFlow-era gamma/beta renamed."""
    for prefix in ("bert.", "roberta.", model_type.replace("-", "_") + ".", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name
