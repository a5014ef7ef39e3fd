"""The sentence model: tokenize -> encode -> pool -> (Dense, Normalize), and `encode()`.

The names, arguments and meanings are sentence-transformers' (5 and 6), so that inference code moves over
unchanged: `precision` is the output's quantization ("float32", "int8", "uint8", "binary", "ubinary"); the
arithmetic of the encoder is minisbert's own `dtype` ("fp32", "bf16", "fp16", "int8").
"""

import contextlib
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, similarity
from .encoder import Encoder
from .hardware import auto_dtype, in_flight
from .int8 import int8_encoder
from .models import Transformer, check_token_features
from .pooling import Dense, Normalize, Pooling, prompt_length_of
from .quantization import ALLOWED_PRECISIONS, quantize_embeddings
from .tokenize import Tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "int8": torch.int8}
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)


def default_device() -> str:
    """Where a model goes when no device is named, as in sentence-transformers: the first GPU where there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_dtype(dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name (or torch dtype) as a torch dtype; "auto" is hardware.auto_dtype's choice for `device`."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype == "auto":
        return DTYPES[auto_dtype(device or torch.device("cpu"))]
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class SentenceTransformer(nn.Module):
    """A model folder or hub id in, sentence embeddings out; the names and meanings of sentence-transformers.

    Texts longer than `max_seq_length` tokens are truncated, as sentence-transformers does:
    `count_tokens()` tells how many tokens a text has before truncation.
    """

    def __init__(self, model_name_or_path: str | Path | None = None, *, modules: list[nn.Module] | None = None,
                 device: str | None = None,
                 prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                 cache_folder: str | Path | None = None, revision: str | None = None, local_files_only: bool = False,
                 token: str | bool | None = None, similarity_fn_name: str | None = None,
                 truncate_dim: int | None = None, dtype: str | torch.dtype = "fp32", encoder: Encoder | None = None,
                 tokenizer: Tokenizer | None = None, pooling: Pooling | None = None, after: list[nn.Module] = (),
                 model_kwargs: dict | None = None, trust_remote_code: bool = False, backend: str = "torch",
                 use_auth_token: str | bool | None = None, processor_kwargs: dict | None = None,
                 config_kwargs: dict | None = None, tokenizer_kwargs: dict | None = None, model_card_data=None,
                 use_kernels: bool = False, kernel_config=None):
        """Load a model folder or hub id (all-MiniLM-L6-v2 if none is named); or build one from sentence-transformers'
        `modules` (minisbert.models: a Transformer, a Pooling, then Dense or Normalize modules), or from its parts:
        `encoder` and `tokenizer`, then `pooling` (mean pooling if None) and the Dense/Normalize modules `after` it.

        The other arguments are sentence-transformers': `device` None is the first GPU where there is one, else the CPU;
        prompts and similarity_fn_name override what the folder's config_sentence_transformers.json says; cache_folder,
        revision, token and local_files_only steer a download. `dtype` is the encoder's arithmetic in encode(): fp32,
        bf16 or fp16 (on the CPU each fast only where the CPU has instructions for it: see the README), int8 (the linear
        layers, on x86 CPUs; see int8.py: it costs some accuracy, how much depends on the model), or auto: the fastest
        that stays as accurate as fp32 on the device (bf16 on a GPU and on CPUs where it is faster than fp32,
        hardware.fast_cpu_bf16; else fp32; never int8, nor fp16 on the CPU). sentence-transformers' `model_kwargs` (what it passes to transformers) may set
        it instead: {"torch_dtype" or "dtype": float32, bfloat16, float16 (as torch dtypes or names) or "auto", the type
        config.json names, fp32 where it names none}; its "attn_implementation" changes nothing here (minisbert picks
        its attention kernels itself, and they all compute the same attention), nor does "device_map": "auto"; any
        other key is an error. `config_kwargs` replace values of config.json (the dropout rates, say), as there.
        `processor_kwargs` (or its old name `tokenizer_kwargs`) may hold "padding_side", which changes nothing (see
        _check_processor_kwargs). `trust_remote_code` and `backend` are sentence-transformers'
        too: minisbert runs no code from a model repository and runs PyTorch only, so True and any backend but "torch"
        are errors. `use_auth_token` is `token`'s old name, taken with sentence-transformers' FutureWarning.
        `model_card_data` (what sentence-transformers writes in the model card, which minisbert does not write),
        `use_kernels` and `kernel_config` (kernels from the Hugging Face Hub in place of transformers' own; minisbert
        runs its own) are taken and change nothing.
        """
        if use_auth_token is not None:
            warnings.warn("The `use_auth_token` argument is deprecated and will be removed in a future release of "
                          "SentenceTransformers.", FutureWarning, stacklevel=2)
            if token is not None:
                raise ValueError("Both `token` and `use_auth_token` are specified. Please only specify the `token` "
                                 "argument.")
            token = use_auth_token
        if tokenizer_kwargs is not None:
            warnings.warn("The `tokenizer_kwargs` argument was renamed and is now deprecated. Please use "
                          "`processor_kwargs` instead.", FutureWarning, stacklevel=2)
            processor_kwargs = tokenizer_kwargs if processor_kwargs is None else processor_kwargs
        _check_processor_kwargs(processor_kwargs or {})
        if trust_remote_code:
            raise ValueError("trust_remote_code=True: minisbert runs no code from a model repository; it loads the "
                             "architectures it knows (see architectures.py) from their weights")
        if backend != "torch":
            raise ValueError(f"backend {backend!r}: minisbert runs PyTorch only (sentence-transformers' onnx and "
                             f"openvino backends are not here)")
        super().__init__()
        config, settings = None, {}
        if config_kwargs and (modules is not None or encoder is not None):
            raise ValueError("config_kwargs change the config.json of a model loaded by name; a model built from "
                             "modules or parts has its config already (models.Transformer takes config_kwargs)")
        if modules is not None:
            if model_name_or_path is not None or encoder is not None or tokenizer is not None or pooling or after:
                raise ValueError("pass either a model name or path, modules=, or the parts (encoder=, tokenizer=)")
            transformer, pooling, after = _from_modules(modules)
            encoder, config, tokenizer = transformer.encoder, transformer.config, transformer.tokenizer
            if check_dtype(transformer.dtype_name) != torch.float32:  # its model_kwargs, as sentence-transformers
                if not _is_default_dtype(dtype) or any(key in (model_kwargs or {}) for key in ("torch_dtype", "dtype")):
                    raise ValueError("the dtype is given twice: by the Transformer's model_kwargs and here")
                dtype = transformer.dtype_name
        if encoder is None:
            if tokenizer is not None or pooling is not None or after:
                raise ValueError("the parts of a model start with its encoder: pass encoder= and tokenizer= too")
            parts = checkpoint.load(model_name_or_path or checkpoint.DEFAULT_MODEL, config_kwargs,
                                    cache_folder=cache_folder, revision=revision, token=token,
                                    local_files_only=local_files_only)
            encoder, config, tokenizer, pooling, after, settings = (
                parts[k] for k in ("encoder", "config", "tokenizer", "pooling", "after", "settings"))
        elif model_name_or_path is not None or tokenizer is None:
            raise ValueError("pass either a model name or path, or the parts (encoder= and tokenizer=), not both")
        self.encoder = encoder
        self.config = config or encoder.config.to_dict()  # config.json as read, written back by save()
        self.tokenizer = tokenizer
        self.pooling = pooling or Pooling(encoder.config.hidden_size, "mean")
        self.after = nn.ModuleList(after)  # Dense and Normalize modules, in modules.json order
        # config_sentence_transformers.json as read: written back by save(), with these three as they are then
        self.settings = settings
        # as sentence-transformers: "query" and "document" always exist (blank unless given), the prompts passed
        # here win, the folder's fill in the rest
        self.prompts = {"query": None, "document": None, **(prompts or {})}
        for name, text in (settings.get("prompts") or {}).items():
            if self.prompts.get(name) is None:
                self.prompts[name] = text
        self.prompts = {name: "" if text is None else text for name, text in self.prompts.items()}
        self.default_prompt_name = default_prompt_name or settings.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {self.default_prompt_name!r} is not among the prompts "
                             f"{list(self.prompts)}")
        self.similarity_fn_name = similarity_fn_name or settings.get("similarity_fn_name") or "cosine"
        if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer, not {truncate_dim!r}")
        # sentence-transformers 6 saves truncate_dim with the model (a Matryoshka model's chosen size)
        self.truncate_dim = settings.get("truncate_dim") if truncate_dim is None else truncate_dim
        self.dtype_name = _dtype_from_model_kwargs(model_kwargs or {}, dtype, self.config)
        check_dtype(self.dtype_name)
        self._low_precision_encoders = {}
        if modules is not None:  # model[0] is the Transformer given, as in sentence-transformers (_first_module)
            self.__dict__["_transformer"] = transformer
        self.eval()
        self.to(check_device(default_device() if device is None else device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The type encode() computes in by default, what sentence-transformers' model.dtype (its parameters' type)
        says of a model loaded in it: bf16 or fp16 (the parameters stay fp32 here, with a copy in that type), int8,
        "auto"'s choice on the model's device, and else the parameters' type (fp16 after model.half())."""
        dtype = check_dtype(self.dtype_name, self.device)
        return next(self.parameters()).dtype if dtype == torch.float32 else dtype

    # A model whose parameters are given a floating type (half(), float(), double(), bfloat16(), to(dtype)) computes
    # in it from then on, as sentence-transformers' does: the type it was loaded in (dtype_name) no longer counts.
    def to(self, *args, **kwargs):
        dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
        if dtype is not None and dtype.is_floating_point:
            self.dtype_name = "fp32"  # encode()'s default: the encoder as it is, in its parameters' type
        return super().to(*args, **kwargs)

    def half(self):
        return self.to(torch.float16)

    def bfloat16(self):
        return self.to(torch.bfloat16)

    def float(self):
        return self.to(torch.float32)

    def double(self):
        return self.to(torch.float64)

    def get_backend(self) -> str:
        return "torch"  # sentence-transformers' onnx and openvino backends are not here

    @property
    def modalities(self) -> list[str]:
        """What sentence-transformers 6 calls the kinds of input a model embeds: text only here."""
        return ["text"]

    def supports(self, modality: str | tuple[str, ...]) -> bool:
        return modality == "text"

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self[0].max_seq_length = value

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str | similarity.SimilarityFunction | None) -> None:
        # None: the default, cosine, as in sentence-transformers
        self._similarity_fn_name = "cosine" if name is None else similarity.similarity_name(name, "similarity_fn_name")

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        """Every row of embeddings1 against every row of embeddings2, by `similarity_fn_name`: (N, M)."""
        return similarity.SIMILARITY_FUNCTIONS[self.similarity_fn_name][0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        """Row i of embeddings1 against row i of embeddings2, by `similarity_fn_name`: (N,)."""
        return similarity.SIMILARITY_FUNCTIONS[self.similarity_fn_name][1](embeddings1, embeddings2)

    def get_sentence_embedding_dimension(self) -> int:
        """The dimension of encode()'s embeddings: the last module's, or truncate_dim if smaller."""
        return self._output_dimension(self.truncate_dim)

    def _output_dimension(self, truncate_dim: int | None) -> int:
        dimension = self.pooling.output_dimension
        for module in self.after:
            if not isinstance(module, Normalize):
                dimension = module.linear.out_features
        return dimension if truncate_dim is None else min(dimension, truncate_dim)

    get_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers 6's name

    def count_tokens(self, sentences: list[str]) -> list[int]:
        """Token count of each text with its special tokens, before truncation at max_seq_length."""
        return self.tokenizer.count_tokens(sentences)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (B, S) of `texts`, padded to the longest, as the model sees them."""
        return self._first_module().tokenize(texts)

    def preprocess(self, inputs: list[str], prompt: str | None = None) -> dict:
        """sentence-transformers 6's tokenize(): with a `prompt`, in front of each text, and its token count as
        `prompt_length` (what pooling with include_prompt=False leaves out); an empty dict for no texts."""
        return self._first_module().preprocess(inputs, prompt)

    def smart_batching_collate(self, batch: list) -> tuple[list[dict], torch.Tensor]:
        """A DataLoader's collate_fn over InputExamples, as sentence-transformers': the features of each text column
        (preprocess's) and the labels as one tensor, what the losses and LabelAccuracyEvaluator take."""
        features = [self.preprocess(list(column)) for column in zip(*(example.texts for example in batch))]
        labels = [example.label for example in batch]
        arrays = bool(labels) and isinstance(labels[0], np.ndarray)  # a label per example that is a vector
        return features, torch.from_numpy(np.stack(labels)) if arrays else torch.tensor(labels)

    def __getitem__(self, index: int) -> nn.Module:
        """The modules as sentence-transformers lists them, model[0] to model[-1]: a models.Transformer over this
        model's own encoder and tokenizer (its max_seq_length may be set), the Pooling, then the Dense and
        Normalize modules. Each may be called on a features dict, as there."""
        return [self._first_module(), self.pooling, *self.after][index]

    def _first_module(self) -> Transformer:
        """model[0], sentence-transformers' name: the same object on each access while the encoder, tokenizer and
        compute type stay; kept outside nn.Module's registry, so that the encoder's parameters are listed once."""
        view = self.__dict__.get("_transformer")
        if (view is None or view.encoder is not self.encoder or view.tokenizer is not self.tokenizer
                or view.dtype_name != self.dtype_name):
            view = Transformer.over(self.encoder, self.tokenizer, self.config, self.dtype_name)
            self.__dict__["_transformer"] = view
        return view

    def _last_module(self) -> nn.Module:
        """model[-1], sentence-transformers' name."""
        return self[-1]

    def __len__(self) -> int:
        return 2 + len(self.after)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """Whether pooling takes in the prompt's tokens (False for INSTRUCTOR models), as sentence-transformers'."""
        self.pooling.include_prompt = include_prompt

    @contextlib.contextmanager
    def truncate_embeddings(self, truncate_dim: int | None):
        """Within the block, encode() gives embeddings cut to `truncate_dim` (None: whole), as
        sentence-transformers' context manager of the same name."""
        if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer or None, not {truncate_dim!r}")
        before = self.truncate_dim
        self.truncate_dim = truncate_dim
        try:
            yield
        finally:
            self.truncate_dim = before

    truncate_sentence_embeddings = truncate_embeddings  # its name before sentence-transformers 6

    def forward(self, input_ids: torch.Tensor | dict, attention_mask: torch.Tensor | None = None,
                encoder: nn.Module | None = None, lengths=None):
        """Token ids (B, S) -> sentence embeddings (B, dim), with autograd; `encoder` may be a low-precision copy,
        `lengths` each row's token count on the CPU (see Encoder.forward).

        Or sentence-transformers' call, model(features): a dict holding input_ids and attention_mask
        (model.preprocess's, with prompt_length for a model that leaves the prompt out of its pooling) gets
        "token_embeddings" (B, S, D; zeros at padding) and "sentence_embedding" (B, dim) added, in place, and is
        returned, as there."""
        if isinstance(input_ids, dict):
            features = input_ids
            check_token_features(features, "model")
            tokens, embeddings = self.embed(features["input_ids"], features["attention_mask"], encoder,
                                            prompt_length=prompt_length_of(features))
            features.update(token_embeddings=tokens, sentence_embedding=embeddings)
            return features
        return self.embed(input_ids, attention_mask, encoder, lengths)[1]

    def embed(self, input_ids, attention_mask, encoder: nn.Module | None = None, lengths=None,
              prompt_length: int | None = None, hidden_states: list | None = None):
        """(token embeddings (B, S, D) in float32, sentence embeddings (B, dim)); `lengths` and `hidden_states` as in
        Encoder.forward, `prompt_length` the tokens of a prompt in front of each text (see Pooling)."""
        encoder = self.encoder if encoder is None else encoder
        asked = {} if hidden_states is None else {"hidden_states": hidden_states}  # (only Encoder takes it)
        token_embeddings = encoder(input_ids, attention_mask, lengths=lengths, **asked).float()
        return token_embeddings, self.sentence_embedding(token_embeddings, attention_mask, prompt_length)

    def sentence_embedding(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_length: int | None = None) -> torch.Tensor:
        """Token embeddings (B, S, D) pooled, then through the Dense and Normalize modules: (B, dim), in float32."""
        embeddings = self.pooling(token_embeddings.float(), attention_mask, prompt_length)
        for module in self.after:
            embeddings = module(embeddings)
        return embeddings

    def _encoder_in(self, dtype: torch.dtype) -> nn.Module:
        """The encoder in `dtype`: a cached copy for bf16, fp16 and int8 (int8.py), remade whenever the fp32 weights change."""
        if dtype == torch.float32:
            return self.encoder
        weights = tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())  # _version counts in-place updates
        cached = self._low_precision_encoders.get(dtype)
        if cached is None or cached[0] != weights:
            low_precision = (int8_encoder(self.encoder) if dtype == torch.int8
                             else self.encoder.in_dtype(dtype))
            self._low_precision_encoders[dtype] = (weights, low_precision)
        return self._low_precision_encoders[dtype][1]

    def __getstate__(self) -> dict:
        # without the cached low-precision copies: a worker process remakes what it needs, and int8's oneDNN weights
        # (int8.py) cannot be pickled
        return {**self.__dict__, "_low_precision_encoders": {}}

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """As sentence-transformers: `prompt` wins, then `prompt_name`, then the default prompt name, if any."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"Prompt name '{prompt_name}' not found in the configured prompts dictionary with "
                                 f"keys {list(self.prompts.keys())!r}.")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name) if self.default_prompt_name is not None else None

    def encode(self, inputs: str | Iterable[str] = None, prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str | None = "sentence_embedding", precision: str | None = "float32",
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, device=None,
               normalize_embeddings: bool = False, truncate_dim: int | None = None, pool: dict | None = None,
               chunk_size: int | None = None, *, dtype: str | torch.dtype | None = None, sentences=None):
        """Embed `inputs` (a str, or any sequence or iterable of str): by default a float32 array (N, dim).
        `sentences` is their old name (sentence-transformers before 6, and minisbert before it followed).

        The arguments, in sentence-transformers' order, mean what they mean there: `precision` quantizes the
        output, `output_value="token_embeddings"` gives each text's token embeddings without padding, and None
        both (a dict per text); `device` may name several devices, which encode in processes of their own, as a
        `pool` from start_multi_process_pool does. `dtype` (minisbert's) is the encoder's arithmetic: fp32, bf16,
        fp16, int8 (CPU) or auto (see __init__); pooling and what follows run in fp32. Texts are sorted by token
        count so that each batch pads little; the output keeps the input order.
        """
        sentences = _renamed_inputs(inputs, sentences)
        single = isinstance(sentences, str)
        sentences = [sentences] if single else _as_text_list(sentences)
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        if precision is not None and precision not in ALLOWED_PRECISIONS:
            raise ValueError(f"Precision {precision!r} is not supported, must be one of {ALLOWED_PRECISIONS}")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value {output_value!r} is not one of {OUTPUT_VALUES}")
        if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer, not {truncate_dim!r}")
        if pool is not None or isinstance(device, (list, tuple)):
            from .multiprocess import encode_in_processes
            return encode_in_processes(self, sentences, single, pool, device, chunk_size, prompt_name=prompt_name,
                                       prompt=prompt, batch_size=batch_size, output_value=output_value,
                                       precision=precision, convert_to_numpy=convert_to_numpy,
                                       convert_to_tensor=convert_to_tensor, normalize_embeddings=normalize_embeddings,
                                       truncate_dim=truncate_dim, dtype=dtype)
        if device is not None:
            self.to(check_device(device))
        dtype = check_dtype(dtype or self.dtype_name, self.device)
        prompt = self._resolve_prompt(prompt, prompt_name)
        truncate_dim = truncate_dim or self.truncate_dim
        texts = sentences if not prompt else [prompt + sentence for sentence in sentences]
        prompt_length = self.tokenizer.prompt_length(prompt) if prompt else None

        token_ids = self.tokenizer.token_ids(texts)
        order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
        batches = range(0, len(texts), batch_size)
        if show_progress_bar is None:
            show_progress_bar = len(batches) > 20 and sys.stderr.isatty()
        embeddings = torch.empty(len(texts), self._output_dimension(truncate_dim), device=self.device)
        per_text = [None] * len(texts)  # for token embeddings: one dict per text, padding removed
        was_training = self.training
        self.eval()
        encoder = self._encoder_in(dtype)
        def embed_batch(start: int):
            index = order[start:start + batch_size]
            batch = self.tokenizer.pad([token_ids[i] for i in index])
            lengths = batch["attention_mask"].sum(1)  # on the CPU: the GPU need not be asked (Packing)
            if self.device.type == "cuda":  # pinned: the copy runs while the CPU pads the next batch
                batch = {k: v.pin_memory() for k, v in batch.items()}
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with torch.inference_mode():
                tokens, embedded = self.embed(batch["input_ids"], batch["attention_mask"], encoder, lengths,
                                              prompt_length)
                embedded = embedded[:, :truncate_dim] if truncate_dim else embedded
                if normalize_embeddings:
                    embedded = F.normalize(embedded, p=2, dim=-1)
            return index, batch, tokens, embedded

        results = in_flight(embed_batch, batches, self.device)
        try:
            for index, batch, tokens, embedded in tqdm(results, total=len(batches), desc="Batches",
                                                       disable=not show_progress_bar):
                embeddings[torch.from_numpy(index).to(self.device)] = embedded
                if output_value != "sentence_embedding":
                    for row, i in enumerate(index):
                        length = len(token_ids[i])
                        per_text[i] = {"input_ids": batch["input_ids"][row, :length],
                                       "attention_mask": batch["attention_mask"][row, :length],
                                       "token_embeddings": tokens[row, :length], "sentence_embedding": embedded[row]}
        finally:
            results.close()  # the threads stopped and the thread count restored, also when a batch failed
            self.train(was_training)
        broken = (~torch.isfinite(embeddings)).any(dim=1).nonzero()
        if len(broken):
            i = broken[0, 0].item()
            raise ValueError(f"the embedding of sentences[{i}] ({sentences[i][:60]!r}) holds NaN or infinite values"
                             + (f" in {dtype}; try fp32" if dtype != torch.float32 else ""))
        if output_value is not None and output_value != "sentence_embedding":
            result = [item[output_value] for item in per_text]
        elif output_value is None:
            result = per_text
        else:
            result = _convert(embeddings, precision, convert_to_numpy, convert_to_tensor)
        return result[0] if single else result

    def encode_query(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, *arguments,
                     **options):
        """encode() with the model's "query" prompt, if it has one and no other is named; encode()'s other
        arguments in its order."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name, prompt, *arguments, **options)

    def encode_document(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, *arguments,
                        **options):
        """encode() with the model's "document", "passage" or "corpus" prompt (the first it has), if no other is
        named; encode()'s other arguments in its order."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in ("document", "passage", "corpus") if name in self.prompts), None)
        return self.encode(inputs, prompt_name, prompt, *arguments, **options)

    def start_multi_process_pool(self, target_devices: list[str] | None = None) -> dict:
        """Processes that encode in parallel, one per device (default: every GPU, else 4 CPU processes)."""
        from .multiprocess import start_pool
        return start_pool(self, target_devices)

    def encode_multi_process(self, sentences: list[str], pool: dict, prompt_name: str | None = None,
                             prompt: str | None = None, batch_size: int = 32, chunk_size: int | None = None,
                             show_progress_bar: bool | None = None, precision: str = "float32",
                             normalize_embeddings: bool = False, truncate_dim: int | None = None) -> np.ndarray:
        """sentence-transformers' older call: encode(sentences, pool=pool, ...), with its warning."""
        warnings.warn("The `encode_multi_process` method has been deprecated, and its functionality has been "
                      "integrated into `encode`. You can now call `encode` with the same parameters to achieve "
                      "multi-process encoding.", DeprecationWarning, stacklevel=2)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                           show_progress_bar=show_progress_bar, precision=precision,
                           normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim, pool=pool,
                           chunk_size=chunk_size)

    @staticmethod
    def stop_multi_process_pool(pool: dict) -> None:
        from .multiprocess import stop_pool
        stop_pool(pool)

    def save(self, path: str | Path, model_name: str | None = None, create_model_card: bool = True,
             train_datasets: list[str] | None = None, safe_serialization: bool = True) -> None:
        """Write a sentence-transformers folder (safetensors) that both libraries load; other files in it stay.
        sentence-transformers' arguments are taken: `model_name`, `create_model_card` and `train_datasets` describe
        the model card it writes (README.md), which minisbert does not write; `safe_serialization=False`, its
        pickled weights (pytorch_model.bin), is an error."""
        if not safe_serialization:
            raise ValueError("safe_serialization=False: minisbert writes its weights as safetensors only, which "
                             "sentence-transformers and transformers load too, never as a pickle (pytorch_model.bin)")
        checkpoint.save_folder(self, path)

    save_pretrained = save  # sentence-transformers' other name for it

    def evaluate(self, evaluator, output_path: str | Path | None = None):
        """`evaluator(self, output_path)`, as sentence-transformers' (the evaluators in minisbert.evaluation)."""
        if output_path is not None:
            Path(output_path).mkdir(parents=True, exist_ok=True)
        return evaluator(self, output_path)


def _from_modules(modules) -> tuple[Transformer, Pooling, list[nn.Module]]:
    """sentence-transformers' modules= as minisbert's parts: a Transformer, a Pooling, then Dense or Normalize
    modules, each taking the size the one before gives."""
    modules = list(modules)
    for i in range(max(len(modules), 2)):
        module = modules[i] if i < len(modules) else None
        if not isinstance(module, (Transformer, Pooling)[i] if i < 2 else (Dense, Normalize)):
            what = "missing" if module is None else f"{type(module).__module__}.{type(module).__qualname__}"
            raise ValueError(f"modules[{i}] is {what}: minisbert builds a model from minisbert.models' Transformer, "
                             "then a Pooling (sentence-transformers needs one too), then Dense or Normalize modules")
    size = modules[0].get_embedding_dimension()
    for i, module in enumerate(modules[1:], start=1):
        if isinstance(module, Normalize):
            continue
        takes = module.embedding_dimension if isinstance(module, Pooling) else module.linear.in_features
        if takes != size:
            raise ValueError(f"modules[{i}] takes {takes} values, but the module before it gives {size}")
        size = module.get_embedding_dimension()
    return modules[0], modules[1], modules[2:]


def _check_processor_kwargs(processor_kwargs: dict) -> None:
    """sentence-transformers' processor_kwargs (what it passes to the tokenizer): its padding_side only, which
    changes nothing here: texts are padded on the right, so that a text's embedding never depends on its batch (the
    README's "Padding"; Qwen3-Embedding's own example asks for "left")."""
    unknown = set(processor_kwargs) - {"padding_side"}
    if unknown:
        raise ValueError(f"processor_kwargs {sorted(unknown)} mean nothing here: minisbert takes padding_side only")
    if processor_kwargs.get("padding_side", "right") not in ("left", "right"):
        raise ValueError(f"processor_kwargs' padding_side must be 'left' or 'right', not "
                         f"{processor_kwargs['padding_side']!r}")


def _is_default_dtype(dtype) -> bool:
    """Whether the constructor's `dtype` is fp32 in any of its spellings, so it does not clash with model_kwargs'."""
    return dtype in ("fp32", "float32", torch.float32)


def _dtype_from_model_kwargs(model_kwargs: dict, dtype, config: dict):
    """The encoder's dtype, from the constructor's `dtype` or sentence-transformers' model_kwargs (see __init__)."""
    unknown = set(model_kwargs) - {"torch_dtype", "dtype", "attn_implementation", "device_map"}
    if unknown:
        raise ValueError(f"model_kwargs {sorted(unknown)} mean nothing here: minisbert loads the checkpoint itself, "
                         f"without transformers; it takes torch_dtype (or dtype), attn_implementation and "
                         f"device_map \"auto\"")
    if model_kwargs.get("device_map", "auto") != "auto":
        raise ValueError(f"model_kwargs' device_map {model_kwargs['device_map']!r}: minisbert puts the whole model on "
                         f"one device (device=); it takes device_map \"auto\", which changes nothing")
    given = [model_kwargs[key] for key in ("torch_dtype", "dtype") if key in model_kwargs]
    if not given:
        return dtype
    if len(given) > 1 or not _is_default_dtype(dtype):
        raise ValueError("the dtype is given twice: pass dtype= or model_kwargs' torch_dtype (or dtype), not both")
    [wanted] = given
    if wanted == "auto":  # as transformers: the type config.json names
        wanted = config.get("dtype") or config.get("torch_dtype") or "float32"
    if isinstance(wanted, str):
        wanted = wanted.removeprefix("torch.")  # as str(torch.float16) writes it
    if wanted not in (torch.float32, torch.bfloat16, torch.float16, "float32", "bfloat16", "float16"):
        raise ValueError(f"model_kwargs' dtype {wanted!r} is not one of float32, bfloat16, float16 or auto")
    return wanted


def _renamed_inputs(inputs, sentences):
    """encode()'s texts, given as `inputs` (sentence-transformers 6's name) or `sentences` (the name before)."""
    if sentences is None:
        if inputs is None:
            raise TypeError("encode() needs the texts to embed: encode(inputs)")
        return inputs
    if inputs is not None:
        raise TypeError("encode() got its texts twice: as inputs and as sentences (the old name of inputs)")
    warnings.warn("encode()'s sentences is now named inputs, as in sentence-transformers 6", DeprecationWarning,
                  stacklevel=3)
    return sentences


def _as_text_list(sentences) -> list[str]:
    """Any sequence or iterable of str (a list, a numpy array of str, a generator, a datasets column) as a list."""
    if isinstance(sentences, np.ndarray):
        sentences = sentences.tolist()
    elif not isinstance(sentences, list):
        if not isinstance(sentences, Iterable) or isinstance(sentences, (bytes, dict)):
            raise TypeError(f"sentences must be a str or an iterable of str, not {type(sentences).__name__}")
        sentences = list(sentences)
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"sentences[{i}] is {type(sentence).__name__}, not str")
        if not sentence.isascii():
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"sentences[{i}] holds a lone surrogate ({sentence[error.start]!r} at character "
                                 f"{error.start}), which is not text; decode the input with errors='replace'") from None
    return sentences


def _convert(embeddings: torch.Tensor, precision: str | None, convert_to_numpy: bool, convert_to_tensor: bool):
    """The (N, dim) embeddings as sentence-transformers returns them: quantized by `precision`, then one tensor,
    one array, or a list of 1-D tensors."""
    if precision not in (None, "float32") and len(embeddings):
        embeddings = torch.from_numpy(quantize_embeddings(embeddings, precision))
    if convert_to_tensor:
        return embeddings
    if convert_to_numpy:
        return embeddings.cpu().numpy()
    return list(embeddings)
