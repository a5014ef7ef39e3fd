"""Text to token ids with `tokenizers`, padded and truncated the way sentence-transformers does it.

A `tokenizer.json` often carries padding and truncation settings of its own (all-MiniLM-L6-v2's pads
to a fixed 128); sentence-transformers ignores them, pads each batch to its longest text and truncates
at `max_seq_length`. So do we. Where tokenizer_config.json says so, texts are cut at the start instead
(`truncation_side`); a BERT, DistilBERT or MPNet tokenizer's normalizer (lower-casing, accents, Chinese
characters), an ALBERT tokenizer's (lower-casing, accents) and a RoBERTa tokenizer's `add_prefix_space` follow it,
and an XLM-RoBERTa, CamemBERT, ALBERT or T5 tokenizer splits words at whitespace and gets its unknown id and (but
ALBERT) its special tokens from its class, as transformers builds them (CONFIG_NORMALIZED_CLASSES,
SENTENCEPIECE_CLASSES); a Qwen2 tokenizer (Qwen3's) gets its class's normalizer and pre-tokenizer (QWEN2_CLASSES).
"""

import base64
import json
import re
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

# The files of a tokenizer that a saved model folder carries along unchanged.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "added_tokens.json")


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _token_text(token) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as {"content": ...} objects
    return token.get("content") if isinstance(token, dict) else token


def _has_lowercase(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    if normalizer["type"] == "Lowercase" or (normalizer["type"] == "BertNormalizer" and normalizer.get("lowercase")):
        return True
    return any(_has_lowercase(n) for n in normalizer.get("normalizers", []))


# tokenizer_class names whose normalizer transformers builds from tokenizer_config.json (its defaults where a key is
# missing) instead of taking tokenizer.json's; sentence-transformers tokenizes with that normalizer. We do so where
# tokenizer.json's is a BertNormalizer whose settings may disagree, and keep one that was changed on purpose (a
# Lowercase put in front by sentence-transformers' do_lower_case, which its own reload loses)
CONFIG_NORMALIZED_CLASSES = ("BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer", "DistilBertTokenizerFast",
                             "MPNetTokenizer", "MPNetTokenizerFast")
# SentencePiece tokenizers whose words transformers splits at any whitespace before putting "▁" in front of each,
# whatever tokenizer.json says (its own Metaspace also makes tokens of leading, trailing and repeated whitespace),
# whose Unigram model it builds with the unknown token's id its class fixes (_unknown_id), and (but ALBERT's) whose
# special tokens around a text it puts there itself
SENTENCEPIECE_CLASSES = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast", "CamembertTokenizer",
                         "CamembertTokenizerFast", "AlbertTokenizer", "AlbertTokenizerFast", "T5Tokenizer",
                         "T5TokenizerFast")
# Qwen2Tokenizer (Qwen3's) builds its BPE's normalizer (NFC) and pre-tokenizer (this split, then bytes) itself,
# whatever tokenizer.json holds; it keeps tokenizer.json's post-processor (Qwen3-Embedding's puts <|endoftext|> last)
QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# GemmaTokenizer (EmbeddingGemma's) builds its BPE (byte fallback, unknown pieces fused), normalizer (spaces to "▁"),
# pre-tokenizer and decoder itself from tokenizer.json's vocabulary and merges; it keeps tokenizer.json's
# post-processor
GEMMA_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")
# the class transformers picks by the encoder's model_type where tokenizer_config.json names none
TOKENIZER_CLASSES = {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer", "mpnet": "MPNetTokenizer",
                     "roberta": "RobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer",
                     "camembert": "CamembertTokenizer", "albert": "AlbertTokenizer", "t5": "T5Tokenizer",
                     "qwen3": "Qwen2Tokenizer", "gemma3_text": "GemmaTokenizer"}


def _bert_normalizer(config: dict) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))


def _albert_normalizer(config: dict, charsmap: bytes | None) -> normalizers.Normalizer:
    """An ALBERT tokenizer's normalizer as transformers builds it: `` and '' as ", accents removed unless
    keep_accents, lower-cased if do_lower_case, then the SentencePiece model's own character map, if any."""
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not config.get("keep_accents", False):
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if config.get("do_lower_case", True):
        steps.append(normalizers.Lowercase())
    if charsmap is not None:
        steps.append(normalizers.Precompiled(charsmap))
    return normalizers.Sequence(steps)


def _precompiled_charsmap(normalizer: dict | None) -> bytes | None:
    """The character map of a SentencePiece model in tokenizer.json's normalizer, where transformers looks for it
    (the normalizer itself, or one of a Sequence)."""
    if not normalizer:
        return None
    steps = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
    for step in steps:
        if step.get("type") == "Precompiled" and step.get("precompiled_charsmap"):
            return base64.b64decode(step["precompiled_charsmap"])
    return None


def _unknown_id(family: str, model: models.Unigram, config: dict) -> int:
    """The id a SentencePiece tokenizer class's Unigram model gives unknown pieces in transformers, whatever
    tokenizer.json says: fixed by the class (XLM-RoBERTa 3, ALBERT 1, T5 2); CamemBERT's is its unknown token's place
    in the vocabulary."""
    if family == "Camembert":
        found = model.token_to_id(_token_text(config.get("unk_token", "<unk>")))
        return 0 if found is None else found
    return {"Albert": 1, "T5": 2}.get(family, 3)


def _unigram_settings(model: models.Unigram) -> tuple[int | None, bool]:
    """A Unigram model's unk_id and byte_fallback. tokenizers writes them before and after the vocabulary, which
    takes a quarter of a second to parse for XLM-RoBERTa's 250,000 pieces: read at the ends where they are there."""
    state = model.__getstate__()  # JSON, as bytes
    unknown = re.search(rb'"unk_id":(null|\d+),', state[:100])
    fallback = re.search(rb'"byte_fallback":(true|false)}$', state[-50:])
    if not (unknown and fallback):
        saved = json.loads(state)
        return saved.get("unk_id"), bool(saved.get("byte_fallback"))
    return (None if unknown[1] == b"null" else int(unknown[1])), fallback[1] == b"true"


def _as_transformers_builds_it(tokenizer: FastTokenizer, config: dict, tokenizer_class: str | None) -> None:
    """Change tokenizer.json's pipeline where transformers' `tokenizer_class` builds its own instead (the tables
    above), so that texts are tokenized as sentence-transformers tokenizes them."""
    if tokenizer_class in CONFIG_NORMALIZED_CLASSES and isinstance(tokenizer.normalizer, normalizers.BertNormalizer):
        tokenizer.normalizer = _bert_normalizer(config)
    if (tokenizer_class in ("RobertaTokenizer", "RobertaTokenizerFast")
            and isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel)):  # add_prefix_space from the config
        tokenizer.pre_tokenizer.add_prefix_space = config.get("add_prefix_space", False)
    if tokenizer_class in QWEN2_CLASSES and isinstance(tokenizer.model, models.BPE):
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space")), use_regex=False)])
    if tokenizer_class in GEMMA_CLASSES and isinstance(tokenizer.model, models.BPE):
        tokenizer.model.byte_fallback, tokenizer.model.fuse_unk = True, True
        tokenizer.model.ignore_merges, tokenizer.model.dropout = False, None
        tokenizer.model.unk_token = _token_text(config.get("unk_token", "<unk>"))
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    if tokenizer_class not in SENTENCEPIECE_CLASSES or not isinstance(tokenizer.model, models.Unigram):
        return
    family = tokenizer_class.removesuffix("Fast").removesuffix("Tokenizer")  # XLMRoberta, Camembert, Albert, T5
    unknown_id = _unknown_id(family, tokenizer.model, config)
    if _unigram_settings(tokenizer.model) != (unknown_id, False):
        vocab = [tuple(piece) for piece in json.loads(tokenizer.model.__getstate__())["vocab"]]
        tokenizer.model = models.Unigram(vocab, unk_id=unknown_id, byte_fallback=False)
    if family == "Albert":
        normalizer = json.loads(tokenizer.normalizer.__getstate__()) if tokenizer.normalizer else None
        rebuilt = _albert_normalizer(config, _precompiled_charsmap(normalizer))
        if normalizer and normalizer.get("normalizers", [{}])[0].get("type") == "Lowercase":
            # put in front by sentence-transformers' do_lower_case (ALBERT's own starts with its Replaces): kept
            rebuilt = normalizers.Sequence([normalizers.Lowercase(), rebuilt])
        tokenizer.normalizer = rebuilt
    else:  # the special tokens around a text, whatever tokenizer.json says (ALBERT's come from tokenizer.json)
        bos, eos = _token_text(config.get("bos_token", "<s>")), _token_text(config.get("eos_token", "</s>"))
        template = ["$A", eos] if family == "T5" else [bos, "$A", eos]
        special = {token: tokenizer.token_to_id(token) for token in template if token != "$A"}
        if None not in special.values():
            tokenizer.post_processor = processors.TemplateProcessing(single=template,
                                                                    special_tokens=list(special.items()))
    prefix = family == "T5" or config.get("add_prefix_space", True)  # T5's always has the "▁" in front
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always" if prefix else "never", split=True)])


def _wordpiece_from_vocab(folder: Path, config: dict) -> FastTokenizer:
    """What transformers builds from a bare `vocab.txt` (BertTokenizerFast)."""
    unk, cls, sep = (_token_text(config.get(k, d)) for k, d in
                     (("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]")))
    # one token a line, as transformers reads it: split at line ends only (str.splitlines would also split at
    # characters such as U+0085 that some vocabularies hold as tokens)
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = {token: i for i, token in enumerate(tokens[:-1] if tokens[-1] == "" else tokens)}
    for token in (unk, cls, sep):
        if token not in vocab:
            raise ValueError(f"{folder / 'vocab.txt'}: the special token {token} is not in the vocabulary")
    tokenizer = FastTokenizer(models.WordPiece(vocab, unk_token=unk))
    tokenizer.normalizer = _bert_normalizer(config)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _byte_level_bpe_from_vocab(folder: Path, config: dict) -> FastTokenizer:
    """What transformers builds from `vocab.json` + `merges.txt` (RobertaTokenizerFast)."""
    cls, sep = _token_text(config.get("cls_token", "<s>")), _token_text(config.get("sep_token", "</s>"))
    add_prefix_space = config.get("add_prefix_space", False)
    vocab, merges = models.BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer = FastTokenizer(models.BPE(vocab, merges, unk_token=_token_text(config.get("unk_token", "<unk>"))))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(
        (sep, vocab[sep]), (cls, vocab[cls]), add_prefix_space=add_prefix_space, trim_offsets=True)
    return tokenizer


def _encode_batch(tokenizer: FastTokenizer, texts: list[str]):
    # encode_batch_fast (tokenizers 0.20 and later) leaves out the character offsets, which nothing here reads: the
    # same ids, 1.1 to 1.4 times as fast (batches of 1,024 to 32 sentences, AMD EPYC, 2 cores)
    return getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)(texts)


class Tokenizer:
    """Texts in, `input_ids` and `attention_mask` tensors (B, S) out, S the longest text in the batch."""

    def __init__(self, tokenizer: FastTokenizer, max_seq_length: int, pad_token_id: int,
                 do_lower_case: bool = False, files: dict[str, bytes] | None = None, truncation_side: str = "right",
                 unk_token: str | None = None):
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.do_lower_case = do_lower_case  # already applied by the tokenizer's normalizer; kept for save()
        self.files = files or {}  # the original files, written back unchanged by files_to_save()
        self.truncation_side = truncation_side  # "left" keeps a long text's end (and its special tokens)
        self.unk_token = unk_token  # tokenizer_config.json's, for convert_tokens_to_ids
        self._untruncated = None
        tokenizer.no_padding()
        self.truncate_at(max_seq_length)

    def truncate_at(self, max_seq_length: int) -> None:
        self.max_seq_length = max_seq_length
        self.tokenizer.enable_truncation(max_seq_length, direction=self.truncation_side)

    @classmethod
    def from_folder(cls, folder: Path, max_seq_length: int | None, max_tokens: int,
                    do_lower_case: bool = False, config_pad_token_id: int = 0,
                    model_type: str | None = None) -> "Tokenizer":
        """Load `tokenizer.json`, or build the tokenizer from `vocab.txt` or `vocab.json` + `merges.txt`.

        `max_seq_length` comes from sentence_bert_config.json; without it, tokenizer_config.json's
        `model_max_length` counts, capped at what the encoder's position table holds (`max_tokens`). `model_type`
        (the encoder's) stands for the tokenizer class where tokenizer_config.json names none.
        """
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        config.update({k: v for k, v in _read_json(folder / "special_tokens_map.json").items() if k not in config})
        tokenizer_class = config.get("tokenizer_class") or TOKENIZER_CLASSES.get(model_type)
        if (folder / "tokenizer.json").exists():
            try:
                tokenizer = FastTokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as error:
                raise ValueError(f"{folder / 'tokenizer.json'}: cannot read the tokenizer ({error})") from None
            _as_transformers_builds_it(tokenizer, config, tokenizer_class)
        elif (folder / "vocab.txt").exists():
            tokenizer = _wordpiece_from_vocab(folder, config)
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            tokenizer = _byte_level_bpe_from_vocab(folder, config)
        else:
            raise FileNotFoundError(f"{folder}: no tokenizer found; looked for tokenizer.json, vocab.txt, "
                                    "and vocab.json with merges.txt")
        if not (folder / "tokenizer.json").exists():
            special = [_token_text(config[k]) for k in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")
                       if config.get(k)]
            tokenizer.add_special_tokens([t for t in special if tokenizer.token_to_id(t) is not None])
        if do_lower_case and not _has_lowercase(json.loads(tokenizer.to_str()).get("normalizer")):
            # sentence-transformers lower-cases by putting Lowercase in front of the tokenizer's normalizer
            tokenizer.normalizer = normalizers.Sequence(
                [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer else []))

        if max_seq_length is None:
            max_seq_length = int(min(config.get("model_max_length", max_tokens), max_tokens))
        pad_token = _token_text(config.get("pad_token"))
        pad_token_id = tokenizer.token_to_id(pad_token) if pad_token else None
        truncation_side = config.get("truncation_side", "right")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"{folder / 'tokenizer_config.json'}: truncation_side must be 'left' or 'right', "
                             f"not {truncation_side!r}")
        files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}
        # where tokenizer_config.json names none, the class's default
        unk_token = config.get("unk_token", "<|endoftext|>" if tokenizer_class in QWEN2_CLASSES else None)
        return cls(tokenizer, min(max_seq_length, max_tokens),
                   config_pad_token_id if pad_token_id is None else pad_token_id, do_lower_case, files, truncation_side,
                   _token_text(unk_token))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text with its special tokens, truncated at max_seq_length, not padded."""
        return [encoding.ids for encoding in _encode_batch(self.tokenizer, texts)]

    def prompt_length(self, prompt: str) -> int:
        """How many tokens a prompt puts in front of each text, counted as sentence-transformers counts them: the
        prompt tokenized alone (truncated at max_seq_length), without its last token if that is a special one
        ([SEP], </s>), so with the [CLS] in front."""
        ids = self.token_ids([prompt])[0]
        special = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        return len(ids) - bool(ids and ids[-1] in special)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Length of each text in tokens, special tokens included, before truncation."""
        return [len(encoding.ids) for encoding in _encode_batch(self.untruncated(), texts)]

    def pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        longest = max(len(row) for row in ids)
        input_ids = np.full((len(ids), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = row
            attention_mask[i, :len(row)] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}

    def __call__(self, texts: list[str], padding: bool | str = True, truncation: bool | str = True,
                 return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (B, S) of `texts`, padded to the longest and truncated at max_seq_length: what
        transformers' tokenizer gives with padding=True, truncation=True and return_tensors="pt" (without
        token_type_ids), the only settings taken."""
        if isinstance(texts, str):
            raise TypeError("model.tokenizer(texts) takes a list of texts and gives padded tensors; for one text's "
                            "ids, model.tokenizer.encode(text)")
        settings = {"padding": padding, "truncation": truncation, "return_tensors": return_tensors}
        if padding not in (True, "longest") or truncation not in (True, "longest_first") or return_tensors != "pt":
            raise ValueError(f"model.tokenizer pads to the longest text, truncates at max_seq_length and gives "
                             f"tensors (padding=True, truncation=True, return_tensors='pt'), not {settings}")
        return self.pad(self.token_ids(texts))

    # transformers' tokenizer methods, as code written for sentence-transformers calls them on model.tokenizer

    def tokenize(self, text: str) -> list[str]:
        """The text's tokens as strings, without special tokens and not truncated."""
        return self.untruncated().encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The text's ids, not truncated (transformers truncates only when asked)."""
        return self.untruncated().encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in rows]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.tokenizer.id_to_token(ids)
        return [self.tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Each token's id; a token not in the vocabulary gets the unknown token's (None without one)."""
        if isinstance(tokens, str):
            return self.convert_tokens_to_ids([tokens])[0]
        unknown = self.tokenizer.token_to_id(self.unk_token or getattr(self.tokenizer.model, "unk_token", None) or "")
        ids = [self.tokenizer.token_to_id(token) for token in tokens]
        return [unknown if i is None else i for i in ids]

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The vocabulary without the tokens added to it, as transformers counts it; len() counts them too."""
        return self.tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def model_max_length(self) -> int:
        return self.max_seq_length

    def untruncated(self) -> FastTokenizer:
        """The tokenizer without truncation at max_seq_length."""
        if self._untruncated is None:
            self._untruncated = FastTokenizer.from_str(self.tokenizer.to_str())
            self._untruncated.no_truncation()
        return self._untruncated

    def files_to_save(self) -> dict[str, bytes]:
        """The files a saved model folder gets: those read, unchanged; for a tokenizer built in code, a
        tokenizer.json and the tokenizer_config.json that tells transformers its padding token."""
        if self.files:
            return self.files
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": self.max_seq_length,
                  "pad_token": self.tokenizer.id_to_token(self.pad_token_id)}
        return {"tokenizer.json": self.tokenizer.to_str().encode("utf-8"),
                "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode("utf-8")}
