"""sentence-transformers' modules under the names its users build models with (sentence_transformers.models), so
that a model put together from parts ports with its import line changed:

    from minisbert import SentenceTransformer, models
    transformer = models.Transformer("bert-base-uncased", max_seq_length=128)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()])

Transformer holds an encoder and its tokenizer, loaded as sentence-transformers' Transformer loads them; Pooling,
Dense and Normalize are minisbert's own (pooling.py).
"""

from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .encoder import Encoder
from .pooling import Dense, Normalize, Pooling
from .tokenize import Tokenizer

__all__ = ["Dense", "Normalize", "Pooling", "Transformer"]


def check_token_features(features: dict, caller: str) -> None:
    """A KeyError naming what is missing where a features dict lacks the tokens a forward pass needs."""
    missing = [key for key in ("input_ids", "attention_mask") if key not in features]
    if missing:
        raise KeyError(f"{caller}(features): features must hold input_ids and attention_mask, as preprocess gives "
                       f"them; {missing} missing from {sorted(features)}")


class Transformer(nn.Module):
    """An encoder and its tokenizer from a model folder or hub id, as sentence-transformers' Transformer loads them:
    the encoder from `model_name_or_path` itself (its config.json and weights; a sentence-transformers folder's other
    modules are not read), texts truncated at `max_seq_length`, or else at tokenizer_config.json's
    model_max_length capped at what the position table holds (sentence_bert_config.json is not read either, as
    there), lower-cased first where `do_lower_case`, the tokenizer taken from `tokenizer_name_or_path` where given.
    `model_kwargs` may set the compute type as in SentenceTransformer ({"torch_dtype": ...}), `config_kwargs` replace
    values of config.json, `processor_kwargs` may hold padding_side, which changes nothing (as in SentenceTransformer);
    `cache_folder`, `revision`, `token` and `local_files_only` steer a download, as in SentenceTransformer."""

    def __init__(self, model_name_or_path: str | Path, *, max_seq_length: int | None = None,
                 do_lower_case: bool = False, model_kwargs: dict | None = None,
                 tokenizer_name_or_path: str | Path | None = None, backend: str = "torch",
                 cache_folder: str | Path | None = None, revision: str | None = None, token: str | bool | None = None,
                 local_files_only: bool = False, config_kwargs: dict | None = None,
                 processor_kwargs: dict | None = None):
        from .model import _check_processor_kwargs, _dtype_from_model_kwargs, check_dtype
        super().__init__()
        _check_processor_kwargs(processor_kwargs or {})
        if backend != "torch":
            raise ValueError(f"backend {backend!r}: minisbert runs PyTorch only")
        if max_seq_length is not None and (type(max_seq_length) is not int or max_seq_length < 1):
            raise ValueError(f"max_seq_length must be a positive integer, not {max_seq_length!r}")
        where = {"cache_folder": cache_folder, "revision": revision, "token": token,
                 "local_files_only": local_files_only}
        folder = checkpoint.resolve_model(str(model_name_or_path), **where)
        self.encoder, self.config = checkpoint.load_encoder(folder, config_kwargs)
        tokenizer_folder = folder if tokenizer_name_or_path is None else checkpoint.resolve_model(
            str(tokenizer_name_or_path), **where)
        config = self.encoder.config
        if max_seq_length is not None and max_seq_length > config.max_tokens:
            raise ValueError(f"max_seq_length {max_seq_length} is more than the {config.max_tokens} positions "
                             f"{folder / 'config.json'} has")
        self.tokenizer = Tokenizer.from_folder(tokenizer_folder, max_seq_length, config.max_tokens, do_lower_case,
                                               config.pad_token_id, config.model_type)
        self.dtype_name = _dtype_from_model_kwargs(model_kwargs or {}, "fp32", self.config)
        check_dtype(self.dtype_name)

    @classmethod
    def over(cls, encoder: Encoder, tokenizer: Tokenizer, config: dict, dtype_name="fp32") -> "Transformer":
        """A Transformer holding an encoder and tokenizer that are already loaded (a model's: SentenceTransformer's
        model[0]), computing in `dtype_name` (the model's)."""
        transformer = cls.__new__(cls)
        nn.Module.__init__(transformer)
        transformer.encoder, transformer.tokenizer, transformer.config = encoder, tokenizer, config
        transformer.dtype_name = dtype_name
        return transformer

    def __getattr__(self, name: str):
        if name == "auto_model":  # a common call on sentence-transformers' Transformer, whose answer differs here
            raise AttributeError("minisbert's Transformer holds no transformers model (auto_model): its encoder is "
                                 "`encoder`, minisbert's own (minisbert.encoder.Encoder), which takes input_ids and "
                                 "attention_mask and gives the token embeddings (B, S, D)")
        return super().__getattr__(name)

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if type(value) is not int or not 0 < value <= self.encoder.config.max_tokens:
            raise ValueError(f"max_seq_length must be an integer in 1..{self.encoder.config.max_tokens}, got {value!r}")
        self.tokenizer.truncate_at(value)

    def get_embedding_dimension(self) -> int:
        return self.encoder.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (B, S) of `texts`, padded to the longest."""
        return self.tokenizer(list(texts))

    def preprocess(self, inputs: list[str], prompt: str | None = None) -> dict:
        """sentence-transformers 6's preprocess: tokenize's dict of `inputs`, each with `prompt` in front, and then the
        prompt's token count as `prompt_length` (what pooling with include_prompt=False leaves out); an empty dict
        for no inputs."""
        if not inputs:
            return {}
        features = self.tokenize([prompt + text for text in inputs] if prompt else inputs)
        if prompt:
            features["prompt_length"] = self.tokenizer.prompt_length(prompt)
        return features

    def forward(self, features: dict) -> dict:
        """sentence-transformers' call, transformer(features): the features dict (preprocess's) with
        `token_embeddings` (B, S, D) added in place, as there: computed in the type of the encoder's parameters,
        with autograd, zeros at padding (transformers leaves numbers there, which pooling never reads)."""
        check_token_features(features, "Transformer")
        features["token_embeddings"] = self.encoder(features["input_ids"], features["attention_mask"])
        return features

    get_word_embedding_dimension = get_embedding_dimension  # its name before sentence-transformers 6
