"""The sentence model: tokenize -> encode -> pool -> (Dense, Normalize), and `encode()`."""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint
from .encoder import Encoder
from .pooling import Normalize, Pooling
from .tokenize import Tokenizer

PRECISIONS = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}


def check_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


class SentenceTransformer(nn.Module):
    """A model folder or hub id in, sentence embeddings out; the same names as sentence-transformers.

    Texts longer than `max_seq_length` tokens are truncated, as sentence-transformers does:
    `count_tokens()` tells how many tokens a text has before truncation.
    """

    def __init__(self, model_name_or_path: str | Path | None = None, device: str | None = None, *,
                 encoder: Encoder | None = None, tokenizer: Tokenizer | None = None, pooling: Pooling | None = None,
                 after: list[nn.Module] = ()):
        """Load a model folder or hub id (all-MiniLM-L6-v2 if none is named); or build one from its parts:
        `encoder` and `tokenizer`, then `pooling` (mean pooling if None) and the Dense/Normalize modules `after` it."""
        super().__init__()
        config = None
        if encoder is None:
            if tokenizer is not None or pooling is not None or after:
                raise ValueError("the parts of a model start with its encoder: pass encoder= and tokenizer= too")
            parts = checkpoint.load(model_name_or_path or checkpoint.DEFAULT_MODEL)
            encoder, config, tokenizer, pooling, after = (parts[k] for k in ("encoder", "config", "tokenizer",
                                                                             "pooling", "after"))
        elif model_name_or_path is not None or tokenizer is None:
            raise ValueError("pass either a model name or path, or the parts (encoder= and tokenizer=), not both")
        self.encoder = encoder
        self.config = config or encoder.config.to_dict()  # config.json as read, written back by save()
        self.tokenizer = tokenizer
        self.pooling = pooling or Pooling(encoder.config.hidden_size, "mean")
        self.after = nn.ModuleList(after)  # Dense and Normalize modules, in modules.json order
        self._low_precision_encoders = {}
        self.eval()
        if device is not None:
            self.to(check_device(device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if not 0 < value <= self.encoder.config.max_tokens:
            raise ValueError(f"max_seq_length must be in 1..{self.encoder.config.max_tokens}, got {value}")
        self.tokenizer.max_seq_length = value
        self.tokenizer.tokenizer.enable_truncation(value)

    def get_sentence_embedding_dimension(self) -> int:
        dimension = self.pooling.output_dimension
        for module in self.after:
            if not isinstance(module, Normalize):
                dimension = module.linear.out_features
        return dimension

    def count_tokens(self, sentences: list[str]) -> list[int]:
        """Token count of each text with its special tokens, before truncation at max_seq_length."""
        return self.tokenizer.count_tokens(sentences)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder: nn.Module | None = None):
        """Token ids (B, S) -> sentence embeddings (B, dim), with autograd; `encoder` may be a low-precision copy."""
        token_embeddings = (self.encoder if encoder is None else encoder)(input_ids, attention_mask)  # (B, S, D)
        embeddings = self.pooling(token_embeddings.float(), attention_mask)  # pool and what follows in float32
        for module in self.after:
            embeddings = module(embeddings)
        return embeddings

    def _encoder_in(self, dtype: torch.dtype) -> nn.Module:
        """The encoder in `dtype`: a cached copy for bf16/fp16, remade whenever the fp32 weights change."""
        if dtype == torch.float32:
            return self.encoder
        weights = tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())  # _version counts in-place updates
        cached = self._low_precision_encoders.get(dtype)
        if cached is None or cached[0] != weights:
            self._low_precision_encoders[dtype] = (weights, copy.deepcopy(self.encoder).to(dtype))
        return self._low_precision_encoders[dtype][1]

    def encode(self, sentences: str | list[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, normalize_embeddings: bool = False,
               device: str | None = None, precision: str = "fp32"):
        """Embed `sentences`: a float32 array (N, dim), or a tensor with `convert_to_tensor=True`.

        Texts are sorted by token count so that each batch pads little; the output keeps the input order.
        `precision` is fp32, bf16 (CPU or GPU) or fp16 (GPU); pooling and what follows always run in fp32.
        """
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        if not isinstance(sentences, (list, tuple)):
            raise TypeError(f"sentences must be a str or a list of str, not {type(sentences).__name__}")
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentences[{i}] is {type(sentence).__name__}, not str")
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        for i, sentence in enumerate(sentences):
            if not sentence.isascii():
                try:
                    sentence.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise ValueError(f"sentences[{i}] holds a lone surrogate ({sentence[error.start]!r} at character "
                                     f"{error.start}), which is not text; decode the input with errors='replace'"
                                     ) from None
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if device is not None:
            self.to(check_device(device))
        dtype = PRECISIONS[precision]
        if dtype == torch.float16 and self.device.type == "cpu":
            raise ValueError("precision fp16 needs a GPU; on the CPU use bf16 or fp32")

        embeddings = torch.empty(len(sentences), self.get_sentence_embedding_dimension(), device=self.device)
        token_ids = self.tokenizer.token_ids(list(sentences))
        order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
        batches = range(0, len(sentences), batch_size)
        if show_progress_bar is None:
            show_progress_bar = len(batches) > 20 and sys.stderr.isatty()
        was_training = self.training
        self.eval()
        encoder = self._encoder_in(dtype)
        try:
            with torch.inference_mode():
                for start in tqdm(batches, desc="Batches", disable=not show_progress_bar):
                    index = order[start:start + batch_size]
                    batch = self.tokenizer.pad([token_ids[i] for i in index])
                    batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                    embedded = self(batch["input_ids"], batch["attention_mask"], encoder)
                    if normalize_embeddings:
                        embedded = F.normalize(embedded, p=2, dim=-1)
                    embeddings[torch.from_numpy(index).to(self.device)] = embedded
        finally:
            self.train(was_training)
        broken = (~torch.isfinite(embeddings)).any(dim=1).nonzero()
        if len(broken):
            i = broken[0, 0].item()
            raise ValueError(f"the embedding of sentences[{i}] ({sentences[i][:60]!r}) holds NaN or infinite values"
                             + (f" in {precision}; try fp32" if precision not in ("fp32", "float32") else ""))
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        return embeddings.cpu().numpy() if convert_to_numpy else list(embeddings)

    def save(self, path: str | Path) -> None:
        """Write a sentence-transformers folder (safetensors) that both libraries load; other files in it stay."""
        checkpoint.save_folder(self, path)
