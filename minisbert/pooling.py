"""From token embeddings to one sentence embedding: pooling, then optional Dense and Normalize modules.

Each class reads and writes the config of the sentence-transformers module of the same name.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# the boolean keys of the long-standing 1_Pooling/config.json format, one per mode; several modes set this way are
# concatenated in this order
LEGACY_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
               "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
               "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def prompt_length_of(features: dict) -> int | None:
    """The token count of the prompt in front of each text that a features dict carries (preprocess's
    `prompt_length`: an int, or a tensor of equal values in sentence-transformers' training batches), or None."""
    prompt_length = features.get("prompt_length")
    if isinstance(prompt_length, torch.Tensor):
        prompt_length = int(prompt_length.flatten()[0])
    return prompt_length


def on_sentence_embedding(module: nn.Module, features: dict) -> dict:
    """sentence-transformers' call of a Dense or Normalize module, module(features): the features dict, its
    sentence embedding replaced by the module's output (in place, as there)."""
    if "sentence_embedding" not in features:
        raise KeyError(f"{type(module).__name__}(features): features must hold a sentence_embedding (the pooling's "
                       f"output); it holds {sorted(features)}")
    features["sentence_embedding"] = module(features["sentence_embedding"])
    return features


class Pooling(nn.Module):
    """Token embeddings to one vector per text, by each of the modes in `pooling_mode` in turn, concatenated in the
    order given (as sentence-transformers does). With include_prompt False, the tokens of a prompt put in front of
    the texts ([CLS] included) are left out, as INSTRUCTOR-style models are trained.

    The arguments of sentence-transformers before 6 are taken as sentence-transformers 6 takes them, with its
    FutureWarning: `word_embedding_dimension`, and the boolean `pooling_mode_*_tokens` keys (LEGACY_KEYS), the modes
    set True pooled in LEGACY_KEYS' order; a key left out counts as False, so that
    `pooling_mode_cls_token=True` alone is CLS pooling, not CLS and mean as before 6."""

    def __init__(self, embedding_dimension: int | None = None, pooling_mode: str | list[str] | None = None,
                 include_prompt: bool = True, **legacy):
        super().__init__()
        if "word_embedding_dimension" in legacy:
            warnings.warn("Pooling's word_embedding_dimension is now named embedding_dimension", FutureWarning,
                          stacklevel=2)
            embedding_dimension = legacy.pop("word_embedding_dimension")
        flags = {mode: legacy.pop(key) for mode, key in LEGACY_KEYS.items() if key in legacy}
        if legacy:
            raise TypeError(f"Pooling() got an unexpected keyword argument {next(iter(legacy))!r}")
        if flags:
            warnings.warn(f"Pooling's boolean keys ({', '.join(LEGACY_KEYS[mode] for mode in flags)}) are "
                          "deprecated: name the modes in pooling_mode", FutureWarning, stacklevel=2)
            pooling_mode = pooling_mode or [mode for mode in POOLING_MODES if flags.get(mode)] or "mean"
        if embedding_dimension is None:
            raise TypeError("Pooling() needs embedding_dimension, the token embeddings' size")
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = pooling_mode or "mean"
        self.include_prompt = include_prompt

    POOLING_MODES = POOLING_MODES

    @property
    def pooling_mode(self) -> str | tuple[str, ...]:
        """The modes as sentence-transformers holds them: one mode's name, or a tuple of several (`modes` is the
        list). May be set, as there."""
        return self.modes[0] if len(self.modes) == 1 else tuple(self.modes)

    @pooling_mode.setter
    def pooling_mode(self, pooling_mode: str | list[str] | tuple[str, ...]) -> None:
        modes = [pooling_mode] if isinstance(pooling_mode, str) else list(pooling_mode)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"pooling mode {unknown or modes} is not supported; choose from {', '.join(POOLING_MODES)}")
        self.modes = modes

    @property
    def output_dimension(self) -> int:
        return self.embedding_dimension * len(self.modes)

    pooling_output_dimension = output_dimension  # sentence-transformers' name

    def get_embedding_dimension(self) -> int:  # sentence-transformers' name
        return self.output_dimension

    get_sentence_embedding_dimension = get_embedding_dimension  # its name before sentence-transformers 6

    def forward(self, token_embeddings: torch.Tensor | dict, attention_mask: torch.Tensor | None = None,
                prompt_length: int | None = None) -> torch.Tensor | dict:
        # (B, S, D), (B, S) -> (B, D * len(modes)); padding never contributes; `prompt_length` is the number of
        # tokens in front of each text that are the prompt's (padding is on the right).
        # Or sentence-transformers' call, pooling(features): the dict, with sentence_embedding added (in place).
        if isinstance(token_embeddings, dict):
            features = token_embeddings
            if "token_embeddings" not in features:
                raise KeyError("Pooling(features): features must hold token_embeddings (model[0]'s output); it holds "
                               f"{sorted(features)}")
            tokens = features["token_embeddings"]
            mask = features.get("attention_mask")
            if mask is None or mask.shape[-1] != tokens.shape[1]:  # no mask that fits: every token counts, as there
                mask = torch.ones(tokens.shape[:-1], dtype=torch.int64, device=tokens.device)
            features["sentence_embedding"] = self(tokens, mask, prompt_length_of(features))
            return features
        if prompt_length and not self.include_prompt:
            attention_mask = attention_mask.clone()
            attention_mask[:, :prompt_length] = 0
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, S, 1)
        rows = torch.arange(len(token_embeddings), device=token_embeddings.device)
        pooled = []
        for mode in self.modes:
            if mode == "cls":  # the first token counted: [CLS], or the first after a left-out prompt
                first = attention_mask.int().argmax(dim=1)  # (B,); 0 where no token counts
                pooled.append(token_embeddings[rows, first])
            elif mode == "max":
                pooled.append(token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
            elif mode == "lasttoken":  # the last token counted; a zero vector where no token counts
                last = attention_mask.shape[1] - 1 - attention_mask.int().flip(1).argmax(dim=1)
                pooled.append(token_embeddings[rows, last] * mask[rows, last])
            else:
                # sum in float32 even for bf16/fp16 token embeddings; clamp keeps an all-padding row finite.
                # weightedmean weighs the token at position i (from 1) by i; a prompt left out leaves the others'
                # positions as they are
                weights = mask.float()
                if mode == "weightedmean":
                    weights = weights * torch.arange(1, mask.shape[1] + 1, device=mask.device).view(1, -1, 1)
                summed = (token_embeddings * weights).sum(dim=1, dtype=torch.float32)
                count = weights.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
                divisor = count.sqrt() if mode == "mean_sqrt_len_tokens" else count
                pooled.append((summed / divisor).to(token_embeddings.dtype))
        return torch.cat(pooled, dim=-1)

    def config(self) -> dict:
        # The long-standing format, which every sentence-transformers version reads, where it can say the modes'
        # order; sentence-transformers 6's list where not. include_prompt only where it is not the default.
        config = {"word_embedding_dimension": self.embedding_dimension}
        if self.modes == sorted(set(self.modes), key=POOLING_MODES.index):
            config.update({LEGACY_KEYS[mode]: mode in self.modes for mode in POOLING_MODES})
        else:
            config["pooling_mode"] = self.modes
        return config if self.include_prompt else {**config, "include_prompt": False}

    @classmethod
    def from_config(cls, config: dict, source: str) -> "Pooling":
        dimension = config.get("embedding_dimension", config.get("word_embedding_dimension"))
        if "pooling_mode" in config:  # sentence-transformers >= 6
            modes = config["pooling_mode"]
        else:
            modes = [m for m in POOLING_MODES if config.get(LEGACY_KEYS[m])] or ["mean"]  # as sentence-transformers 6
            others = [k for k, v in config.items()
                      if k.startswith("pooling_mode_") and v and k not in LEGACY_KEYS.values()]
            if others:
                raise ValueError(f"{source}: {others[0]} is not supported; minisbert pools with {', '.join(POOLING_MODES)}")
        if dimension is None:
            raise ValueError(f"{source}: no word_embedding_dimension")
        try:
            return cls(dimension, modes, config.get("include_prompt", True))
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


# Activation functions a Dense config may name, by their sentence-transformers spelling.
ACTIVATIONS = {f"torch.nn.modules.{module}.{name}": getattr(nn, name) for module, name in
               [("activation", "Tanh"), ("activation", "ReLU"), ("activation", "GELU"), ("activation", "Sigmoid"),
                ("linear", "Identity")]}


def check_sentence_embedding_module(config: dict, source: str) -> None:
    """A Dense or Normalize config of sentence-transformers may name the features it reads and writes; minisbert's
    act on the sentence embedding only, which is what those names say unless a model is multi-vector."""
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, "sentence_embedding"):
            raise ValueError(f"{source}: {key} {config[key]!r} is not supported; minisbert's Dense and Normalize "
                             "modules act on the sentence embedding")


class Dense(nn.Module):
    """activation(W x + b) on the sentence embedding, as sentence-transformers' Dense: `activation_function` an
    activation module (nn.Tanh(), as there), its class, the name its config.json holds, or None for none;
    `init_weight` and `init_bias` the starting W and b (random otherwise, as nn.Linear's). With `use_residual`
    (sentence-transformers 5.7), the input is added to that: x itself where the sizes are equal, else R x, R a
    product of its own without bias (`residual`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation_function: nn.Module | type | str | None = "torch.nn.modules.activation.Tanh",
                 init_weight: torch.Tensor | None = None, init_bias: torch.Tensor | None = None,
                 module_input_name: str = "sentence_embedding", module_output_name: str | None = None,
                 use_residual: bool = False):
        super().__init__()
        check_sentence_embedding_module({"module_input_name": module_input_name,
                                         "module_output_name": module_output_name}, "Dense")
        if activation_function is None:
            activation_function = nn.Identity
        if not isinstance(activation_function, str):  # a module or its class: the name config.json gives it
            kind = activation_function if isinstance(activation_function, type) else type(activation_function)
            activation_function = f"{kind.__module__}.{kind.__name__}"
        if activation_function not in ACTIVATIONS:
            raise ValueError(f"Dense activation_function {activation_function!r} is not supported; "
                             f"choose from {', '.join(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        with torch.no_grad():
            for name, given in (("weight", init_weight), ("bias", init_bias)):
                if given is not None:
                    target = getattr(self.linear, name)
                    if target is None or given.shape != target.shape:
                        raise ValueError(f"Dense init_{name} has shape {tuple(given.shape)}, not "
                                         f"{None if target is None else tuple(target.shape)}")
                    target.copy_(given)
        self.activation_function = activation_function
        self.activation = ACTIVATIONS[activation_function]()
        self.use_residual = bool(use_residual)
        # where the sizes differ, a product of its own (made after linear: the same random stream as there)
        self.residual = (nn.Linear(in_features, out_features, bias=False)
                         if self.use_residual and in_features != out_features else None)

    def get_embedding_dimension(self) -> int:  # sentence-transformers' name
        return self.linear.out_features

    get_sentence_embedding_dimension = get_embedding_dimension  # its name before sentence-transformers 6

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor | dict:
        if isinstance(x, dict):  # sentence-transformers' call, module(features)
            return on_sentence_embedding(self, x)
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out

    def config(self) -> dict:
        config = {"in_features": self.linear.in_features, "out_features": self.linear.out_features,
                  "bias": self.linear.bias is not None, "activation_function": self.activation_function}
        if self.use_residual:  # left out when False, as sentence-transformers does, for releases before 5.7
            config["use_residual"] = True
        return config

    @classmethod
    def from_config(cls, config: dict, source: str) -> "Dense":
        check_sentence_embedding_module(config, source)
        if not isinstance(config.get("use_residual", False), bool):
            raise ValueError(f"{source}: use_residual must be true or false, not {config['use_residual']!r}")
        try:
            return cls(config["in_features"], config["out_features"], config.get("bias", True),
                       config.get("activation_function", "torch.nn.modules.activation.Tanh"),
                       use_residual=config.get("use_residual", False))
        except (KeyError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


class Normalize(nn.Module):
    def __init__(self, module_input_name: str = "sentence_embedding", module_output_name: str | None = None):
        super().__init__()
        check_sentence_embedding_module({"module_input_name": module_input_name,
                                         "module_output_name": module_output_name}, "Normalize")

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor | dict:
        if isinstance(x, dict):  # sentence-transformers' call, module(features); without an embedding, as it came
            return on_sentence_embedding(self, x) if "sentence_embedding" in x else x
        return F.normalize(x, p=2, dim=-1)

    def config(self) -> dict:
        return {}
