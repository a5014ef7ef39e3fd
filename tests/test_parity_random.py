"""Small random BERT, RoBERTa (also as XLM-RoBERTa and CamemBERT), MPNet, DistilBERT, ALBERT, T5 and ModernBERT
encoders, and Qwen3 and Gemma 3 (as EmbeddingGemma) models built with transformers: the same hidden states as
transformers' models, and the same sentence embeddings as sentence-transformers, for every pooling mode, Dense and
Normalize."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers.sentence_transformer import modules as reference_modules
from transformers import AutoModel, AutoTokenizer, T5EncoderModel

from minisbert import SentenceTransformer
from minisbert.checkpoint import load_encoder
from minisbert.tokenize import Tokenizer

TEXTS = ["The quick brown fox", "", "Ça va très bien, naïve café", "emoji 🙂🚀", "UPPER case WORDS",
         "the lazy dog " * 30, "Москва", "  spaces around  "]


def both_hidden_states(folder, padding_side: str = "right", texts: list[str] = TEXTS):
    """(ours, transformers', the batch, our encoder) on `texts` padded on `padding_side`."""
    t5 = json.loads((folder / "config.json").read_text())["model_type"] == "t5"
    reference = (T5EncoderModel if t5 else AutoModel).from_pretrained(folder).eval()  # AutoModel: T5's decoder too
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = padding_side
    batch = tokenizer(texts, padding=True, truncation=True, max_length=60, return_tensors="pt")
    encoder, _ = load_encoder(folder)
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = encoder.eval()(batch["input_ids"], batch["attention_mask"])
    return got, expected, batch, encoder


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_xlm_roberta", "tiny_camembert", "tiny_mpnet",
                                  "tiny_distilbert", "tiny_albert", "tiny_t5", "tiny_t5_gated", "tiny_modernbert",
                                  "tiny_qwen3", "tiny_gemma3"])
def test_hidden_states_equal_transformers(name, request):
    got, expected, batch, _ = both_hidden_states(request.getfixturevalue(name))
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_albert", "tiny_t5", "tiny_modernbert", "tiny_qwen3",
                                  "tiny_gemma3"])
def test_each_layers_hidden_states_equal_transformers(name, request):
    # what goes into each layer and what comes out of the last (after the final norm where there is one), as
    # transformers' output_hidden_states; AdaptiveLayerLoss pools them
    folder = request.getfixturevalue(name)
    t5 = json.loads((folder / "config.json").read_text())["model_type"] == "t5"
    reference = (T5EncoderModel if t5 else AutoModel).from_pretrained(folder).eval()
    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, truncation=True, max_length=60,
                                                  return_tensors="pt")
    encoder, _ = load_encoder(folder)
    layers = []
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True).hidden_states
        encoder.eval()(batch["input_ids"], batch["attention_mask"], hidden_states=layers)
    mask = batch["attention_mask"].bool()
    assert len(layers) == len(expected) == len(encoder.layer_order) + 1  # ALBERT: its layers run more than once
    for got, theirs in zip(layers, expected):
        torch.testing.assert_close(got[mask], theirs[mask], atol=1e-5, rtol=0)
        assert got[~mask].abs().max() == 0


def assert_the_same_dropout(reference, encoder):
    """Both in training on rows of one length (no packing), from the same seed: equal only if they draw the same
    dropout masks in the same order."""
    input_ids = torch.randint(5, 200, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    torch.manual_seed(0)
    expected = reference.train()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch.manual_seed(0)
    got = encoder.train()(input_ids, attention_mask)
    assert not torch.allclose(got, encoder.eval()(input_ids, attention_mask), atol=1e-3)  # dropout did act
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,attention_dropout", [("tiny_bert", "attention_probs_dropout_prob"),
                                                    ("tiny_roberta", "attention_probs_dropout_prob"),
                                                    ("tiny_mpnet", "attention_probs_dropout_prob"),
                                                    ("tiny_distilbert", "attention_dropout"),
                                                    ("tiny_albert", "attention_probs_dropout_prob"),
                                                    ("tiny_modernbert", "attention_dropout")])
def test_dropout_in_training_falls_where_transformers_puts_it(name, attention_dropout, request, tmp_path):
    # With the attention's own dropout off, both draw the same masks in the same order (rows of one length: no
    # packing), so the outputs are equal only if each dropout is where transformers has it (DistilBERT: none after
    # attention; ALBERT: none after the feed-forward product, and the embeddings' before their projection;
    # ModernBERT: the embeddings' and one inside the feed-forward only)
    folder = tmp_path / name
    shutil.copytree(request.getfixturevalue(name), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, attention_dropout: 0.0}))
    reference = AutoModel.from_pretrained(folder)
    encoder, _ = load_encoder(folder)
    assert_the_same_dropout(reference, encoder)


@pytest.mark.parametrize("name", ["tiny_t5", "tiny_t5_gated"])
def test_t5_dropout_in_training_falls_where_transformers_puts_it(name, request):
    # T5 has one dropout rate, the attention's too: set to 0 there on both sides after loading, the other dropouts
    # (the embeddings', after each half of a layer, inside the feed-forward, after the last RMSNorm) draw alike
    folder = request.getfixturevalue(name)
    reference = T5EncoderModel.from_pretrained(folder)
    for block in reference.encoder.block:
        block.layer[0].SelfAttention.dropout = 0.0
    encoder, _ = load_encoder(folder)
    for layer in encoder.layers:
        layer.attention_dropout = 0.0
    assert_the_same_dropout(reference, encoder)


@pytest.mark.parametrize("name", ["tiny_t5", "tiny_t5_gated"])
@pytest.mark.parametrize("output_scale", [1.0, 1e5, 1e7])  # 1e7: weights past fp16's range themselves
def test_t5_in_fp16_keeps_its_feed_forward_output_in_fp32_as_transformers(name, output_scale, request, tmp_path):
    # transformers loads T5 in fp16 with each feed-forward output product (wo) in fp32, so that sums past fp16's
    # range (large T5 models reach them; here the weights scaled up) stay finite; its hidden states are fp16
    folder = tmp_path / name
    shutil.copytree(request.getfixturevalue(name), folder)
    reference = T5EncoderModel.from_pretrained(folder)
    with torch.no_grad():
        for block in reference.encoder.block:
            block.layer[-1].DenseReluDense.wo.weight.mul_(output_scale)
    reference.save_pretrained(folder)
    reference = T5EncoderModel.from_pretrained(folder, dtype=torch.float16).eval()
    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    encoder, _ = load_encoder(folder)
    half = encoder.in_dtype(torch.float16).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        got = half(batch["input_ids"], batch["attention_mask"])
        all_fp16 = encoder.half()(batch["input_ids"], batch["attention_mask"])
    assert got.dtype == expected.dtype == torch.float16
    assert half.layers[0].output.weight.dtype == torch.float32 and half.layers[0].query.weight.dtype == torch.float16
    torch.testing.assert_close(got[mask].float(), expected[mask].float(), atol=2e-2, rtol=0)
    assert all_fp16[mask].isfinite().all() == (output_scale == 1.0)  # the scaled sums do overflow fp16


def test_t5_fp16_sums_are_clamped_as_transformers_clamps_them(tiny_t5):
    # transformers' T5Block: to the largest fp16 value, or 1000 below it where any value is infinite
    layer = load_encoder(tiny_t5)[0].layers[0]
    largest = torch.finfo(torch.float16).max
    x = torch.tensor([1.0, -largest, largest], dtype=torch.float16)
    assert torch.equal(layer.clamp_fp16(x), x)
    x = torch.tensor([1.0, float("inf"), -float("inf"), 65000.0, float("nan")], dtype=torch.float16)
    expected = torch.tensor([1.0, largest - 1000, 1000 - largest, largest - 1000, float("nan")], dtype=torch.float16)
    torch.testing.assert_close(layer.clamp_fp16(x), expected, equal_nan=True, atol=0, rtol=0)
    x = torch.tensor([1e6, float("inf")])
    assert torch.equal(layer.clamp_fp16(x), x)  # fp32 as it is


def test_a_whole_t5_checkpoint_loads_its_encoder(tiny_t5_gated, tmp_path):
    # a T5ForConditionalGeneration's file: the decoder's tensors left out; older files hold the shared embeddings
    # twice (encoder.embed_tokens.weight), or only there
    from safetensors.torch import load_file, save_file
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(1)
    T5ForConditionalGeneration(T5Config.from_pretrained(tiny_t5_gated)).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert any(name.startswith("decoder.") for name in tensors)
    batch = AutoTokenizer.from_pretrained(tiny_t5_gated)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = T5EncoderModel.from_pretrained(tmp_path).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    embeddings = tensors["shared.weight"]
    unshared = {name: tensor for name, tensor in tensors.items() if name != "shared.weight"}
    for variant in ({**tensors, "encoder.embed_tokens.weight": embeddings.clone()},
                    {**unshared, "encoder.embed_tokens.weight": embeddings}, tensors):
        save_file({k: v.contiguous() for k, v in variant.items()}, tmp_path / "model.safetensors")
        encoder, _ = load_encoder(tmp_path)
        with torch.no_grad():
            got = encoder.eval()(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)


def test_a_modernbert_config_of_the_older_format_is_read_as_transformers_reads_it(tiny_modernbert, tmp_path):
    # before transformers 5: the layers' kinds as "every n-th attends to all keys", the rotary bases by name; here
    # every second layer global (not every third) and other bases, so that the defaults would not do
    folder = shutil.copytree(tiny_modernbert, tmp_path / "older")
    config = json.loads((folder / "config.json").read_text())
    del config["layer_types"], config["rope_parameters"]
    (folder / "config.json").write_text(json.dumps({**config, "global_attn_every_n_layers": 2, "global_rope_theta": 500.0,
                                                    "local_rope_theta": 50.0, "position_embedding_type": "absolute"}))
    got, expected, batch, encoder = both_hidden_states(folder)
    assert encoder.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert [layer.rope_theta for layer in encoder.layers] == [500.0, 50.0, 500.0]
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)


def test_a_gemma3_config_of_the_older_format_is_read_as_transformers_reads_it(tiny_gemma3, tmp_path):
    # EmbeddingGemma's config.json as transformers 4 wrote it: every sliding_window_pattern-th layer full, the rotary
    # bases as rope_theta and rope_local_base_freq; here every second layer full and other bases
    folder = shutil.copytree(tiny_gemma3, tmp_path / "older")
    config = json.loads((folder / "config.json").read_text())
    del config["layer_types"], config["rope_parameters"]
    config.pop("_sliding_window_pattern", None)
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window_pattern": 2, "rope_theta": 500.0,
                                                    "rope_local_base_freq": 50.0, "sliding_window": 4}))
    got, expected, batch, encoder = both_hidden_states(folder)
    assert encoder.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert [layer.rope_theta for layer in encoder.layers] == [50.0, 500.0, 50.0]
    assert [layer.window for layer in encoder.layers] == [2, None, 2]  # fewer than sliding_window // 2 + 1 away
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "sliding_window": 40}))
    wider, _, _, _ = both_hidden_states(folder)  # the window counts: rows of up to 60 tokens
    assert not torch.allclose(wider[mask], got[mask], atol=1e-3)


def test_a_modernbert_with_biases_and_layers_of_its_own_kinds_equals_transformers(tiny_modernbert, tmp_path):
    # attention_bias, mlp_bias and norm_bias (stacked biases split as the weights are), layer_types in an order no
    # global_attn_every_n_layers gives; saved back, every tensor as it was
    from safetensors.torch import load_file
    from transformers import ModernBertConfig, ModernBertModel

    from minisbert.checkpoint import encoder_state_for_checkpoint
    folder = shutil.copytree(tiny_modernbert, tmp_path / "biased")
    config = ModernBertConfig.from_pretrained(folder)
    config.update({"attention_bias": True, "mlp_bias": True, "norm_bias": True,
                   "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]})
    torch.manual_seed(1)
    reference = ModernBertModel(config)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.1)  # not zeros: a bias loaded into the wrong place must show
    reference.save_pretrained(folder)
    got, expected, batch, encoder = both_hidden_states(folder)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    saved, ours = load_file(folder / "model.safetensors"), encoder_state_for_checkpoint(encoder)
    assert saved.keys() == ours.keys() and all(torch.equal(saved[name], ours[name]) for name in saved)


@pytest.mark.parametrize("packed", [True, False])
def test_modernbert_sliding_attention_on_rows_longer_than_its_window_equals_transformers(packed, tiny_modernbert,
                                                                                        monkeypatch):
    # a window of 8 tokens (4 each side) over rows up to 60 long, with padded rows: packed and not, in fp32 and in
    # bf16 (against transformers' bf16: the rotary angles are rounded alike)
    from minisbert.encoder import Encoder
    monkeypatch.setattr(Encoder, "packs", lambda self, attention_mask: packed)
    got, expected, batch, encoder = both_hidden_states(tiny_modernbert)
    mask = batch["attention_mask"].bool()
    assert batch["input_ids"].shape[1] > 4 * encoder.config.local_attention and not mask.all()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    reference = AutoModel.from_pretrained(tiny_modernbert).eval().to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state.float()
        got = encoder.to(torch.bfloat16)(batch["input_ids"], batch["attention_mask"]).float()
    assert torch.nn.functional.cosine_similarity(got[mask], expected[mask]).min() > 0.999


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_modernbert"])
def test_attention_over_short_rows_through_two_products_equals_transformers(name, request, monkeypatch):
    # on the CPU at inference, rows of at most SHORT_ROWS tokens skip the fused attention kernel (Layer.attend);
    # TEXTS' longest row (60 tokens) keeps it, which the test above checks
    from minisbert.encoder import SHORT_ROWS, Layer
    choices = []
    attends_with_products = Layer.attends_with_products
    monkeypatch.setattr(Layer, "attends_with_products",
                        staticmethod(lambda *a: choices.append(attends_with_products(*a)) or choices[-1]))
    got, expected, batch, _ = both_hidden_states(request.getfixturevalue(name), texts=TEXTS[:5] + TEXTS[6:])
    assert 8 < batch["input_ids"].shape[1] <= SHORT_ROWS and choices and all(choices)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    both_hidden_states(request.getfixturevalue(name))
    assert not choices[-1]


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_distilbert", "tiny_albert"])
def test_bf16_products_on_packed_weights_equal_those_on_plain_weights(name, request):
    # bf16 inference copies on the CPU hand oneDNN weights laid out once in its own order (Layer.pack_weights)
    from minisbert import encoder as encoder_module
    if not encoder_module.onednn_packed_weights(torch.bfloat16):
        pytest.skip("oneDNN takes no packed bf16 weights on this CPU")
    model = SentenceTransformer(request.getfixturevalue(name))
    packed, plain = model.encoder.in_dtype(torch.bfloat16), model.encoder.in_dtype(torch.bfloat16)
    names = ("query", "key", "value", "attention_output", "intermediate", "output")
    assert all(getattr(layer, name).packed_weight.is_mkldnn for layer in packed.layers for name in names)
    for layer in plain.layers:
        for name in names:
            vars(getattr(layer, name)).pop("packed_weight", None)  # ALBERT's layers are one layer, met again
    batch = model.tokenize(TEXTS)
    with torch.inference_mode():
        got, expected = (encoder(batch["input_ids"], batch["attention_mask"]).float() for encoder in (packed, plain))
    real = batch["attention_mask"].bool()
    assert torch.nn.functional.cosine_similarity(got[real], expected[real]).min() > 0.9999


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet"])
def test_bf16_attention_over_short_rows_through_two_products(name, request, monkeypatch):
    # bf16 takes the two products over short rows (Layer.attends_with_products); its scores are rounded to bf16
    # before the softmax, the fused kernel's are not: it must stay as close to transformers' fp32 as the kernel
    # (mean error over the real tokens; the largest is set by bf16's rounding of the outputs, alike for both)
    from minisbert import encoder as encoder_module
    choices, attends_with_products = [], encoder_module.Layer.attends_with_products
    monkeypatch.setattr(encoder_module.Layer, "attends_with_products",
                        staticmethod(lambda *a: choices.append(attends_with_products(*a)) or choices[-1]))
    _, expected, batch, encoder = both_hidden_states(request.getfixturevalue(name), texts=TEXTS[:5] + TEXTS[6:])
    encoder = encoder.to(torch.bfloat16)
    mask = batch["attention_mask"].bool()
    errors = {}
    for short_rows in (encoder_module.SHORT_ROWS, 0):  # 0: the fused kernel only
        monkeypatch.setattr(encoder_module, "SHORT_ROWS", short_rows)
        choices.clear()
        with torch.no_grad():
            got = encoder(batch["input_ids"], batch["attention_mask"]).float()
        assert batch["input_ids"].shape[1] <= encoder_module.SHORT_ROWS or not short_rows
        assert choices and all(choices) == bool(short_rows)
        errors[bool(short_rows)] = (got[mask] - expected[mask]).abs().mean().item()
    assert errors[True] <= 1.05 * errors[False], errors  # measured: 1.0002x for all three


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_modernbert"])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("short_rows", [0, 32])  # 0: the fused kernel only; 32: two products for short rows
def test_attention_on_rows_lengthened_to_a_multiple_of_16_equals_transformers(name, packed, short_rows, request,
                                                                              monkeypatch):
    # on the CPU at inference, attention runs on rows of the next multiple of 16 tokens where that adds at most 8
    # (encoder.attention_length), in the packed layout and the padded one alike
    from minisbert import encoder as encoder_module
    monkeypatch.setattr(encoder_module, "SHORT_ROWS", short_rows)
    seen, attend = [], encoder_module.Layer.attend

    def watched_attend(self, q, k, v, packing, mask):
        seen.append((packing.shape[1], mask.shape[-1], packing.index is not None))
        return attend(self, q, k, v, packing, mask)

    monkeypatch.setattr(encoder_module.Layer, "attend", watched_attend)
    folder = request.getfixturevalue(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    longest = next(text for text in ("word " * n for n in range(4, 40)) if len(tokenizer(text)["input_ids"]) % 16 >= 8)
    # many short rows pad a lot (packed); many of the longest, a little (not packed: Encoder.packs)
    texts = [longest] + TEXTS[:5] if packed else [longest] * 40 + [longest[:-5]]
    got, expected, batch, encoder = both_hidden_states(folder, texts=texts)
    S = batch["input_ids"].shape[1]
    assert S % 16 >= 8 and seen and set(seen) == {(S, S + 16 - S % 16, packed)}
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert got[~mask].abs().max() == 0
    with torch.enable_grad():  # training and autograd keep the rows' length (dropout draws by shape)
        trained = encoder(batch["input_ids"], batch["attention_mask"])
    assert seen[-1][:2] == (S, S)
    torch.testing.assert_close(trained[mask], expected[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_modernbert"])
def test_a_batch_that_pads_little_runs_unpacked_on_the_cpu_and_equals_transformers(name, request, monkeypatch):
    # packing costs more than it saves where padding is under PACK_ABOVE of the batch (Encoder.packs)
    from minisbert import encoder as encoder_module
    packed, pack = [], encoder_module.Packing.pack

    def watched_pack(self, x):
        packed.append(self.index is not None)
        return pack(self, x)

    monkeypatch.setattr(encoder_module.Packing, "pack", watched_pack)
    texts = ["one two three four five six seven eight"] * 30 + ["one two three four five six seven"]
    got, expected, batch, encoder = both_hidden_states(request.getfixturevalue(name), texts=texts)
    mask = batch["attention_mask"].bool()
    assert 0 < (~mask).sum() < encoder_module.PACK_ABOVE * mask.numel() and packed and not any(packed)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert got[~mask].abs().max() == 0
    with pytest.raises(ValueError, match=r"lengths .* do not fit a batch of shape"):  # checked, packed or not
        encoder(batch["input_ids"], batch["attention_mask"], lengths=batch["attention_mask"].sum(1)[:-1])
    both_hidden_states(request.getfixturevalue(name))  # TEXTS pad a lot: packed
    assert packed[-1]


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_modernbert"])
def test_hidden_states_with_lengths_from_the_cpu_equal_transformers(name, request):
    # the row lengths encode() passes (no device sync on a GPU) must find the same real tokens as the mask
    folder = request.getfixturevalue(name)
    _, expected, batch, encoder = both_hidden_states(folder)
    with torch.no_grad():
        got = encoder(batch["input_ids"], batch["attention_mask"], lengths=batch["attention_mask"].sum(1))
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert got[~mask].abs().max() == 0
    with pytest.raises(ValueError, match=r"lengths .* do not fit a batch of shape"):
        encoder(batch["input_ids"], batch["attention_mask"], lengths=batch["attention_mask"].sum(1)[:-1])


def varlen_by_rows(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False, scale=None):
    """torch.nn.attention.varlen.varlen_attn as its documentation states it, row by row (it runs on CUDA only): the
    keys from window_size[0] before a query to window_size[1] after it (-1: all), fewer key heads with enable_gqa,
    the scores scaled by `scale` (1/sqrt(d) if None)."""
    rows = []
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1).float() for t in (q, k, v))  # (heads, n, d)
        if ks.shape[0] != qs.shape[0]:
            assert enable_gqa
            ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], dim=0) for t in (ks, vs))
        places = torch.arange(end - start)
        after = places[None, :] - places[:, None]  # key - query
        seen = ((after >= -window_size[0]) | (window_size[0] < 0)) & ((after <= window_size[1]) | (window_size[1] < 0))
        rows.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=seen,
                                                                     scale=scale).transpose(0, 1))
    return torch.cat(rows).to(q.dtype)


@pytest.mark.parametrize("config,options", [
    ({"model_type": "bert", "num_hidden_layers": 2}, [{}, {}]),
    ({"model_type": "modernbert", "num_hidden_layers": 3, "local_attention": 8, "pad_token_id": 0},
     [{}, {"window_size": (4, 4)}, {"window_size": (4, 4)}]),  # global, sliding, sliding
    ({"model_type": "qwen3", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 32},
     [{"window_size": (-1, 0), "enable_gqa": True}] * 2),
    ({"model_type": "gemma3_text", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 32,
      "use_bidirectional_attention": True, "sliding_window": 10, "query_pre_attn_scalar": 64,
      "layer_types": ["sliding_attention", "full_attention"]},
     [{"window_size": (5, 5), "enable_gqa": True, "scale": 0.125}, {"enable_gqa": True, "scale": 0.125}])])
def test_attention_on_packed_tokens_asks_varlen_attn_for_what_each_layer_attends_to(config, options, monkeypatch):
    # On a GPU, attention runs on the packed tokens through varlen_attn (CUDA only); here a row-by-row stand-in with
    # its documented meaning checks what each layer asks of it: ModernBERT's sliding layers a window, Qwen3's layers
    # causal attention and shared key heads, Gemma 3's its scale too. In bf16 the packed run must equal the padded one (to bf16's rounding)
    from minisbert import encoder as encoder_module
    from minisbert.encoder import Encoder, EncoderConfig
    calls = []
    monkeypatch.setattr(encoder_module, "varlen_attention",
                        lambda: lambda *args, **kwargs: calls.append(kwargs) or varlen_by_rows(*args, **kwargs))
    monkeypatch.setattr(encoder_module, "varlen_options", lambda: frozenset({"window_size", "enable_gqa", "scale"}))

    class PackingWithRows(encoder_module.Packing):  # as on a GPU: the rows' starts in the packed tokens
        def __init__(self, attention_mask, enabled=True, lengths=None):
            super().__init__(attention_mask, enabled, lengths)
            if lengths is not None and self.index is not None:
                lengths = torch.as_tensor(lengths)
                self.cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
                self.longest = int(lengths.max())

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig.from_dict({"vocab_size": 100, "hidden_size": 64, "num_attention_heads": 4,
                                               "intermediate_size": 96, **config}, "test"))
    encoder = encoder.eval().to(torch.bfloat16)
    lengths = torch.tensor([30, 7, 19, 1, 26])
    mask = torch.arange(30)[None, :] < lengths[:, None]  # padded on the right
    ids = torch.randint(1, 100, mask.shape).masked_fill(~mask, 0)
    with torch.no_grad():
        padded = encoder(ids, mask.long()).float()
        assert not calls
        monkeypatch.setattr(encoder_module, "Packing", PackingWithRows)
        packed = encoder(ids, mask.long(), lengths=lengths).float()
    assert calls == options
    assert torch.nn.functional.cosine_similarity(packed[mask], padded[mask]).min() > 0.999


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_qwen3", "tiny_gemma3"])
def test_position_numbering_equals_transformers_with_padding_on_the_left(name, request):
    # Left padding moves the real tokens: BERT numbers positions from the start of the row, padding included;
    # RoBERTa counts real tokens only, from padding_idx + 1. Right padding cannot tell the two apart. Qwen3's
    # rotary positions count from the row's start too, but only their distances count (and its causal mask)
    got, expected, batch, encoder = both_hidden_states(request.getfixturevalue(name), padding_side="left")
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    if name in ("tiny_qwen3", "tiny_gemma3"):
        return
    encoder.config.model_type = "roberta" if name == "tiny_bert" else "bert"  # the other numbering shows
    with torch.no_grad():
        other = encoder(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(other[mask], expected[mask], atol=1e-3)


def sentence_folder(tmp_path, encoder_folder, pooling_mode, dense=False, normalize=False, do_lower_case=False):
    """A sentence-transformers folder written by sentence-transformers itself."""
    transformer = reference_modules.Transformer(str(encoder_folder), max_seq_length=40, do_lower_case=do_lower_case)
    modules = [transformer, reference_modules.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling_mode)]
    if dense:
        torch.manual_seed(1)
        modules.append(reference_modules.Dense(modules[-1].get_embedding_dimension(), 24))
    if normalize:
        modules.append(reference_modules.Normalize())
    reference = Reference(modules=modules, device="cpu")
    reference.save(str(tmp_path / "st"))
    return tmp_path / "st", reference


CASES = [("tiny_bert", "mean", False, False), ("tiny_bert", "cls", True, True), ("tiny_bert", "max", False, True),
         ("tiny_bert", ("cls", "max", "mean"), False, False), ("tiny_roberta", "cls", True, False),
         ("tiny_roberta", "max", True, True), ("tiny_roberta", "mean", False, False),
         ("tiny_roberta", "mean_sqrt_len_tokens", False, False), ("tiny_mpnet", "mean", False, True),
         ("tiny_mpnet", "cls", True, False), ("tiny_bert", "weightedmean", False, False),
         ("tiny_roberta", "lasttoken", True, True),
         # concatenated in the order given, not in the order of the old boolean keys
         ("tiny_bert", ("mean", "cls"), False, False),
         ("tiny_mpnet", ("lasttoken", "weightedmean", "max"), True, False),
         ("tiny_distilbert", "mean", True, True), ("tiny_distilbert", "cls", False, False),
         ("tiny_xlm_roberta", "mean", False, True), ("tiny_camembert", "mean", False, False),
         ("tiny_albert", "mean", False, True), ("tiny_albert", "cls", True, False),
         ("tiny_t5", "mean", True, True), ("tiny_t5_gated", "mean", False, True),
         ("tiny_modernbert", "mean", False, True), ("tiny_modernbert", "cls", True, False),
         # Qwen3-Embedding's: the last token (<|endoftext|>), normalized; sentence-transformers pads it on the left
         ("tiny_qwen3", "lasttoken", False, True), ("tiny_qwen3", "mean", True, False),
         # EmbeddingGemma's: mean pooling, Dense layers, normalized
         ("tiny_gemma3", "mean", True, True), ("tiny_gemma3", "cls", False, False)]


@pytest.mark.parametrize("name,pooling_mode,dense,normalize", CASES)
def test_sentence_embeddings_equal_sentence_transformers(name, pooling_mode, dense, normalize, request, tmp_path):
    folder, _ = sentence_folder(tmp_path, request.getfixturevalue(name), pooling_mode, dense, normalize)
    reference = Reference(str(folder), device="cpu")
    ours = SentenceTransformer(folder)
    assert ours.get_sentence_embedding_dimension() == reference.get_embedding_dimension()
    assert ours.max_seq_length == reference.max_seq_length == 40
    np.testing.assert_allclose(ours.encode(TEXTS, batch_size=3), reference.encode(TEXTS, batch_size=3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_distilbert", "tiny_albert",
                                  "tiny_t5_gated", "tiny_modernbert", "tiny_qwen3", "tiny_gemma3"])
def test_fp16_on_the_cpu_is_as_close_to_fp32_as_sentence_transformers_fp16(name, request, tmp_path):
    # sentence-transformers computes in fp16 on the CPU when model_kwargs ask for it, and so does minisbert: its
    # embeddings must be as near the fp32 ones as sentence-transformers' fp16 ones are (mean error), and near those
    folder, _ = sentence_folder(tmp_path, request.getfixturevalue(name), "mean")
    fp16 = {"model_kwargs": {"torch_dtype": torch.float16}}
    expected = Reference(str(folder), device="cpu").encode(TEXTS, batch_size=3, convert_to_tensor=True)
    theirs = Reference(str(folder), device="cpu", **fp16).encode(TEXTS, batch_size=3, convert_to_tensor=True).float()
    ours = SentenceTransformer(folder, **fp16).encode(TEXTS, batch_size=3, convert_to_tensor=True)
    assert ours.dtype == torch.float32  # the output stays float32 (the README says so)
    ours_error, their_error = (ours - expected).abs().mean(), (theirs - expected).abs().mean()
    assert 0 < ours_error <= 1.5 * their_error, (ours_error, their_error)
    torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=0)  # measured: at most 1e-3


@pytest.mark.parametrize("name,pooling_mode", [("tiny_bert", "mean"), ("tiny_roberta", ("cls", "max")),
                                               ("tiny_mpnet", ("weightedmean", "lasttoken", "mean_sqrt_len_tokens"))])
def test_pooling_without_the_prompt_equals_sentence_transformers(name, pooling_mode, request, tmp_path):
    # include_prompt=False (as INSTRUCTOR models): the prompt's tokens, [CLS] included, are left out of the pooling
    transformer = reference_modules.Transformer(str(request.getfixturevalue(name)), max_seq_length=40)
    pooling = reference_modules.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling_mode,
                                        include_prompt=False)
    prompts = {"query": "Represent the question for retrieval: ", "long": "many words " * 30}
    Reference(modules=[transformer, pooling], device="cpu", prompts=prompts).save(str(tmp_path / "st"))
    reference = Reference(str(tmp_path / "st"), device="cpu")
    ours = SentenceTransformer(tmp_path / "st")
    for options in ({"prompt_name": "query"}, {"prompt_name": "long"}, {"prompt": "a"}, {}):
        expected = reference.encode(TEXTS, batch_size=3, **options)
        np.testing.assert_allclose(ours.encode(TEXTS, batch_size=3, **options), expected, atol=1e-5, rtol=0)
    with_prompt = ours.encode(TEXTS, prompt_name="query")
    ours.pooling.include_prompt = True
    assert not np.allclose(ours.encode(TEXTS, prompt_name="query"), with_prompt, atol=1e-3)
    ours.pooling.include_prompt = False
    ours.save(tmp_path / "ours")
    np.testing.assert_allclose(Reference(str(tmp_path / "ours"), device="cpu").encode(TEXTS, prompt_name="query"),
                               with_prompt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sentence_roberta_config.json", "sentence_xlm-roberta_config.json"])
def test_an_early_models_sentence_config_is_read_as_sentence_transformers_reads_it(name, tiny_roberta, tmp_path):
    # early sentence-transformers named the file after the architecture; max_seq_length 12 truncates most TEXTS
    folder, _ = sentence_folder(tmp_path, tiny_roberta, "mean")
    (folder / "sentence_bert_config.json").unlink()
    (folder / name).write_text('{"max_seq_length": 12, "do_lower_case": false}')
    reference = Reference(str(folder), device="cpu")
    ours = SentenceTransformer(folder)
    assert ours.max_seq_length == reference.max_seq_length == 12
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,architecture", [("tiny_distilbert", "DistilBertModel"), ("tiny_albert", "AlbertModel"),
                                               ("tiny_t5_gated", "T5EncoderModel"),
                                               ("tiny_modernbert", "ModernBertModel"), ("tiny_qwen3", "Qwen3Model"),
                                               ("tiny_gemma3", "Gemma3TextModel")])
def test_a_model_loaded_or_built_here_saves_a_folder_sentence_transformers_reads(name, architecture, request, tmp_path):
    from minisbert.encoder import Encoder, EncoderConfig

    folder = request.getfixturevalue(name)
    loaded = SentenceTransformer(folder)
    config = EncoderConfig.from_dict(json.loads((folder / "config.json").read_text()))
    torch.manual_seed(0)
    built = SentenceTransformer(encoder=Encoder(config), tokenizer=loaded.tokenizer)  # its config.json from to_dict
    for name, ours in (("loaded", loaded), ("built", built)):
        ours.save(tmp_path / name)
        reference = Reference(str(tmp_path / name), device="cpu")
        assert type(reference[0].auto_model).__name__ == architecture
        np.testing.assert_allclose(reference.encode(TEXTS), ours.encode(TEXTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta"])
def test_truncation_from_the_left_as_tokenizer_config_says(name, request, tmp_path):
    folder, _ = sentence_folder(tmp_path, request.getfixturevalue(name), "mean")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "truncation_side": "left"}))
    reference = Reference(str(folder), device="cpu")
    ours = SentenceTransformer(folder)
    for length in (40, 9):  # the folder's, then one set on the model
        ours.max_seq_length = reference.max_seq_length = length
        assert torch.equal(ours.tokenize(TEXTS)["input_ids"], reference.preprocess(TEXTS)["input_ids"])
        np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    ours.save(tmp_path / "saved")
    assert SentenceTransformer(tmp_path / "saved").tokenizer.truncation_side == "left"


@pytest.mark.parametrize("name,changes", [
    ("tiny_bert", {"do_lower_case": False}), ("tiny_bert", {"strip_accents": False}),
    ("tiny_bert", {"tokenize_chinese_chars": False}), ("tiny_roberta", {"add_prefix_space": True}),
    ("tiny_distilbert", {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": False}),
    ("tiny_bert", {"tokenizer_class": None, "do_lower_case": False}),  # BertTokenizer for a bert model
    ("tiny_roberta", {"tokenizer_class": None, "add_prefix_space": True}),
    ("tiny_bert", {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": False}),
    ("tiny_albert", {"do_lower_case": False}), ("tiny_albert", {"keep_accents": True}),
    ("tiny_albert", {"add_prefix_space": False}), ("tiny_albert", {"tokenizer_class": None, "do_lower_case": False})])
def test_a_tokenizer_follows_tokenizer_config_where_transformers_does(name, changes, request, tmp_path):
    # transformers builds a BertTokenizer's normalizer from tokenizer_config.json (do_lower_case, strip_accents,
    # tokenize_chinese_chars), an AlbertTokenizer's (do_lower_case, keep_accents), and a RobertaTokenizer's or
    # AlbertTokenizer's add_prefix_space, whatever tokenizer.json says; with no tokenizer_class, the model type's
    # class; another tokenizer_class keeps tokenizer.json's
    folder, _ = sentence_folder(tmp_path, request.getfixturevalue(name), "mean")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in ("BertTokenizer", "RobertaTokenizer", "AlbertTokenizer")
    config = {key: value for key, value in {**config, **changes}.items() if value is not None}  # None: left out
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    texts = TEXTS + ["中文字符 and Ünïcödé", "``Quoted'' words\tand\nlines"]
    reference = Reference(str(folder), device="cpu")
    ours = SentenceTransformer(folder)
    assert torch.equal(ours.tokenize(texts)["input_ids"], reference.preprocess(texts)["input_ids"])
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=1e-5, rtol=0)


def sentencepiece_tokenizer_folder(folder: Path, tokenizer_config: dict) -> Path:
    """A tiny Unigram tokenizer laid out as published XLM-RoBERTa ones are (tokenizers' from_spm without a charsmap:
    a Replace of repeated spaces, Metaspace with "▁" in front)."""
    import string

    from tokenizers import AddedToken, Regex, Tokenizer as FastTokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(prefix + c, -4.0 - len(prefix)) for c in string.ascii_letters + ".,!?" for prefix in ("", "▁")]
    pieces += [("▁" + word, -1.0) for word in ("the", "quick", "fox", "hello", "world", "spaces", "around")]
    tokenizer = FastTokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in ("<s>", "<pad>", "</s>", "<unk>")])
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
               "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({**special, **tokenizer_config}))
    return folder


def test_a_qwen2_tokenizer_is_built_as_transformers_builds_it(tiny_qwen3):
    # transformers' Qwen2Tokenizer replaces tokenizer.json's normalizer and pre-tokenizer with its own (NFC, its
    # split, bytes without a prefix space) and keeps its post-processor (<|endoftext|> last)
    from tokenizers import Tokenizer as FastTokenizer

    texts = [text for text in TEXTS if len(text) < 100] + ["line\nbreak  and 123 numbers's", "Don't STOP—now!",
                                                           "café and café"]  # untruncated
    expected = [AutoTokenizer.from_pretrained(tiny_qwen3)(text)["input_ids"] for text in texts]
    assert SentenceTransformer(tiny_qwen3).tokenizer.token_ids(texts) == expected
    as_stored = FastTokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))
    assert [as_stored.encode(text).ids for text in texts] != expected  # what the file alone would give
    assert {ids[-1] for ids in expected} == {as_stored.token_to_id("<|endoftext|>")}


def test_embeddinggemma_s_modules_and_prompts_equal_sentence_transformers(tiny_gemma3, tmp_path):
    # EmbeddingGemma's layout: mean pooling, two Dense without bias or activation (wider, then back), Normalize, and
    # prompts for queries and documents; in bf16 as near fp32 as sentence-transformers' bf16
    transformer = reference_modules.Transformer(str(tiny_gemma3), max_seq_length=40)
    torch.manual_seed(2)
    modules = [transformer, reference_modules.Pooling(32, "mean"),
               reference_modules.Dense(32, 96, bias=False, activation_function=torch.nn.Identity()),
               reference_modules.Dense(96, 32, bias=False, activation_function=torch.nn.Identity()),
               reference_modules.Normalize()]
    prompts = {"query": "task: search result | query: ", "document": "title: none | text: "}
    Reference(modules=modules, device="cpu", prompts=prompts).save(str(tmp_path / "st"))
    reference, ours = Reference(str(tmp_path / "st"), device="cpu"), SentenceTransformer(tmp_path / "st")
    np.testing.assert_allclose(ours.encode_query(TEXTS), reference.encode_query(TEXTS), atol=1e-5, rtol=0)
    expected = reference.encode_document(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(ours.encode_document(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=0)
    theirs = Reference(str(tmp_path / "st"), device="cpu", model_kwargs={"torch_dtype": torch.bfloat16})
    their_bf16 = theirs.encode_document(TEXTS, convert_to_tensor=True).float()
    our_bf16 = ours.encode_document(TEXTS, convert_to_tensor=True, dtype="bf16")
    ours_error, their_error = (our_bf16 - expected).abs().mean(), (their_bf16 - expected).abs().mean()
    assert 0 < ours_error <= 1.5 * their_error, (ours_error, their_error)


def test_a_gemma_tokenizer_is_built_as_transformers_builds_it(tiny_gemma3):
    # transformers' GemmaTokenizer builds its BPE (byte fallback), normalizer (spaces to "▁") and pre-tokenizer from
    # tokenizer.json's vocabulary and merges, and keeps its post-processor (<bos> first, <eos> last)
    from tokenizers import Tokenizer as FastTokenizer

    texts = [text for text in TEXTS if len(text) < 100] + ["line\nbreak", "ｆｕｌｌ width", "ﬁ ligature", "  "]
    expected = [AutoTokenizer.from_pretrained(tiny_gemma3)(text)["input_ids"] for text in texts]
    assert SentenceTransformer(tiny_gemma3).tokenizer.token_ids(texts) == expected
    as_stored = FastTokenizer.from_file(str(tiny_gemma3 / "tokenizer.json"))
    assert [as_stored.encode(text).ids for text in texts] != expected  # what the file alone would give
    assert {ids[0] for ids in expected} == {2} and {ids[-1] for ids in expected} == {1}


@pytest.mark.parametrize("tokenizer_config", [{"tokenizer_class": "XLMRobertaTokenizer"},
                                              {"tokenizer_class": "XLMRobertaTokenizer", "add_prefix_space": False},
                                              {"tokenizer_class": "CamembertTokenizer"},
                                              {"tokenizer_class": "T5Tokenizer"},
                                              {"tokenizer_class": "PreTrainedTokenizerFast"}])
def test_a_sentencepiece_tokenizer_splits_whitespace_as_transformers_does(tokenizer_config, tmp_path):
    # transformers' XLM-RoBERTa, CamemBERT and T5 tokenizers split words at any whitespace first; tokenizer.json's own
    # Metaspace would make tokens of leading, trailing and repeated whitespace, tabs and line ends
    folder = sentencepiece_tokenizer_folder(tmp_path / "tokenizer", tokenizer_config)
    texts = ["the quick fox", "  spaces around  ", "hello\tworld\n", "a  b", " lead", "trail ", "", " "]
    expected = AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]
    assert Tokenizer.from_folder(folder, max_seq_length=60, max_tokens=512).token_ids(texts) == expected


@pytest.mark.parametrize("tokenizer_class", ["XLMRobertaTokenizer", "CamembertTokenizer", "T5Tokenizer",
                                             "PreTrainedTokenizerFast"])
def test_a_sentencepiece_tokenizer_puts_the_special_tokens_where_transformers_does(tokenizer_class, tmp_path):
    # transformers' XLM-RoBERTa and CamemBERT tokenizers put <s> and </s> around a text, T5's </s> after it, whatever
    # tokenizer.json's post-processor says; another class keeps tokenizer.json's (here: none)
    folder = sentencepiece_tokenizer_folder(tmp_path / "tokenizer", {"tokenizer_class": tokenizer_class})
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    texts = ["the quick fox", "hello world", ""]
    expected = AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]
    assert Tokenizer.from_folder(folder, max_seq_length=60, max_tokens=512).token_ids(texts) == expected
    assert expected[2] == {"XLMRobertaTokenizer": [0, 2], "CamembertTokenizer": [0, 2], "T5Tokenizer": [2],
                           "PreTrainedTokenizerFast": []}[tokenizer_class]


@pytest.mark.parametrize("tokenizer_class,unknown", [("XLMRobertaTokenizer", 3), ("CamembertTokenizer", 3),
                                                     ("AlbertTokenizer", 1), ("T5Tokenizer", 2)])
@pytest.mark.parametrize("unk_id", [None, 0])
def test_a_sentencepiece_tokenizer_gives_unknown_pieces_the_id_transformers_does(tokenizer_class, unknown, unk_id,
                                                                                 request, tmp_path):
    # transformers builds these classes' Unigram model with an unknown id of its own (XLM-RoBERTa 3, ALBERT 1, T5 2,
    # CamemBERT the place of its unk_token), whatever tokenizer.json says; without one, tokenizers refuses a text
    # with a character outside the vocabulary
    own = {"AlbertTokenizer": "tiny_albert", "T5Tokenizer": "tiny_t5"}
    if tokenizer_class in own:
        folder = shutil.copytree(request.getfixturevalue(own[tokenizer_class]), tmp_path / "tokenizer")
    else:
        folder = sentencepiece_tokenizer_folder(tmp_path / "tokenizer", {"tokenizer_class": tokenizer_class})
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["model"]["unk_id"] = unk_id
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    texts = ["the quick fox", "Москва и 中文", "hello ☃ world"]
    expected = AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]
    assert unknown in expected[1]  # where each vocabulary has <unk>
    assert Tokenizer.from_folder(folder, max_seq_length=60, max_tokens=512).token_ids(texts) == expected


def test_a_bert_with_a_sentencepiece_tokenizer_equals_sentence_transformers(tiny_bert, tmp_path):
    # as paraphrase-multilingual-MiniLM-L12-v2 and multilingual-e5: a BertModel (positions from 0, token types) with
    # an XLM-RoBERTa tokenizer (<s> ... </s>, padding id 1 where config.json says 0)
    folder = tmp_path / "multilingual"
    shutil.copytree(tiny_bert, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = sentencepiece_tokenizer_folder(tmp_path / "tokenizer", {"tokenizer_class": "XLMRobertaTokenizer"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)
    st_folder, _ = sentence_folder(tmp_path, folder, "mean", normalize=True)
    reference = Reference(str(st_folder), device="cpu")
    ours = SentenceTransformer(st_folder)
    texts = ["the quick fox", "  spaces around  ", "hello\tworld\n", "Москва", "", "the " * 50]
    assert ours.tokenizer.pad_token_id == 1 and ours.encoder.config.pad_token_id == 0
    assert torch.equal(ours.tokenize(texts)["input_ids"], reference.preprocess(texts)["input_ids"])
    np.testing.assert_allclose(ours.encode(texts, batch_size=4), reference.encode(texts, batch_size=4), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_albert"])
def test_do_lower_case_of_a_cased_model_survives_saving(name, request, tmp_path):
    # sentence-transformers 6 saves do_lower_case as a Lowercase in front of tokenizer.json's normalizer, which its
    # own reload of a BertTokenizer or AlbertTokenizer loses (transformers rebuilds the normalizer from
    # tokenizer_config.json); we keep it, as the model that was saved lowercased
    shutil.copytree(request.getfixturevalue(name), tmp_path / "cased")
    config = json.loads((tmp_path / "cased" / "tokenizer_config.json").read_text())
    (tmp_path / "cased" / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    transformer = reference_modules.Transformer(str(tmp_path / "cased"), max_seq_length=40, do_lower_case=True)
    saved = Reference(modules=[transformer, reference_modules.Pooling(48)], device="cpu")
    saved.save(str(tmp_path / "st"))
    ours = SentenceTransformer(tmp_path / "st")
    assert torch.equal(ours.tokenize(TEXTS)["input_ids"], saved.preprocess(TEXTS)["input_ids"])
    np.testing.assert_allclose(ours.encode(TEXTS), saved.encode(TEXTS), atol=1e-5, rtol=0)
    assert not np.allclose(ours.encode(["UPPER Case"]), SentenceTransformer(tmp_path / "cased").encode(["UPPER Case"]),
                           atol=1e-3)  # the saved model lower-cases, the one it came from does not


def test_do_lower_case_lowercases_like_sentence_transformers(tiny_roberta, tmp_path):
    texts = ["UPPER case WORDS", "Ça Va"]
    # sentence-transformers >= 6 bakes the Lowercase normalizer into the tokenizer.json it saves
    folder, reference = sentence_folder(tmp_path, tiny_roberta, "mean", do_lower_case=True)
    ours = SentenceTransformer(folder)
    assert torch.equal(ours.tokenizer(texts)["input_ids"], reference.preprocess(texts)["input_ids"])
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.encode(["upper case words"]), ours.encode(["UPPER CASE WORDS"]), atol=1e-6)
    # older folders say do_lower_case in sentence_bert_config.json and keep a case-sensitive tokenizer.json
    shutil.copy(tiny_roberta / "tokenizer.json", folder / "tokenizer.json")
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 40, "do_lower_case": true}')
    reference = Reference(str(folder), device="cpu")
    ours = SentenceTransformer(folder)
    assert torch.equal(ours.tokenizer(texts)["input_ids"], reference.preprocess(texts)["input_ids"])
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,kept", [("minilm_folder", ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]),
                                       ("tiny_roberta", ["vocab.json", "merges.txt", "tokenizer_config.json"])])
def test_tokenizer_built_from_vocab_files_equals_transformers(name, kept, request, tmp_path):
    source = request.getfixturevalue(name)
    for file in kept:
        if (source / file).exists():
            shutil.copy(source / file, tmp_path / file)
    expected = AutoTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, truncation=True, max_length=50,
                                                      return_tensors="pt")
    got = Tokenizer.from_folder(tmp_path, max_seq_length=50, max_tokens=512)(TEXTS)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta"])
def test_plain_encoder_folder_loads_with_mean_pooling(name, request):
    folder = request.getfixturevalue(name)
    reference = Reference(str(folder), device="cpu")  # sentence-transformers also falls back to mean pooling
    ours = SentenceTransformer(folder)
    assert ours.pooling.modes == ["mean"]
    texts = TEXTS[:5]
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=1e-5, rtol=0)


def test_old_style_pytorch_model_bin_loads(tiny_bert, tmp_path):
    """A TensorFlow-era checkpoint: bert. prefix, LayerNorm gamma/beta, pretraining heads and position_ids."""
    from safetensors.torch import load_file

    old = {}
    for name, tensor in load_file(tiny_bert / "model.safetensors").items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old["bert." + name] = tensor
    old["bert.embeddings.position_ids"] = torch.arange(128)[None]
    old["cls.predictions.bias"] = torch.zeros(30522)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, tmp_path / name)
    torch.save(old, tmp_path / "pytorch_model.bin")
    expected, _ = load_encoder(tiny_bert)
    got, _ = load_encoder(tmp_path)
    for (name, a), (_, b) in zip(sorted(expected.state_dict().items()), sorted(got.state_dict().items())):
        assert torch.equal(a, b), name
    old["bert.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(1)
    torch.save(old, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*unexpected tensors: bert\.encoder\.layer\.0\.attention\.self\.extra\.weight"):
        load_encoder(tmp_path)


@pytest.mark.parametrize("hidden_act", ["gelu", "relu", "gelu_new", "gelu_pytorch_tanh"])
def test_products_fused_by_onednn_at_inference_equal_transformers(hidden_act, minilm_folder, tmp_path, monkeypatch):
    # at inference on the CPU each product adds its bias, activation and residual in oneDNN's pass (Layer.fuses_on_cpu)
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from minisbert.encoder import Layer, onednn_products
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN's fused products are checked on x86 only")
    assert onednn_products()  # on x86 a failing probe would silently leave the faster path unused
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=128, hidden_act=hidden_act)
    BertModel(config).save_pretrained(tmp_path)
    BertTokenizerFast.from_pretrained(minilm_folder).save_pretrained(tmp_path)
    fused_calls = []
    fused_forward = Layer.fused_forward
    monkeypatch.setattr("minisbert.encoder.fused_fp32_products", lambda: True)  # also where fp32 is faster unfused
    monkeypatch.setattr(Layer, "fused_forward", lambda *a: fused_calls.append(1) or fused_forward(*a))
    got, expected, batch, encoder = both_hidden_states(tmp_path)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert len(fused_calls) == 2  # both layers
    with torch.enable_grad():  # with autograd (training), the plain path
        plain = encoder(batch["input_ids"], batch["attention_mask"])
    assert len(fused_calls) == 2
    torch.testing.assert_close(plain[mask].detach(), expected[mask], atol=1e-5, rtol=0)


def test_bf16_runs_the_plain_path_where_onednn_has_no_bf16_products(tiny_bert):
    # oneDNN capped at AVX2 (as on CPUs without AVX-512) has fp32 products but no bf16 ones
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN's fused products are checked on x86 only")
    code = ("import sys, torch; from minisbert import SentenceTransformer; from minisbert.encoder import onednn_products;"
            " e = SentenceTransformer(sys.argv[1]).encode(['A man plays.', 'word ' * 30], dtype='bf16');"
            " print(onednn_products(torch.float32), onednn_products(torch.bfloat16), bool((abs(e).sum(1) > 0).all()))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bert)], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "True"]
