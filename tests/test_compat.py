"""sentence-transformers code moved to minisbert means the same thing: the same arguments in the same order,
the same outputs, on the same inputs (sentence-transformers itself is the reference in every test)."""

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import copy_changing
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers.sentence_transformer import modules as reference_models
from sentence_transformers import util as reference_util
from torch import nn

from minisbert import SentenceTransformer, models, util

TEXTS = ["A man is playing guitar.", "Someone plays an instrument.", "A woman slices an onion.", "The cat sleeps.",
         "Ça va très bien 🙂", "", "word " * 300, "A man plays the guitar."]


@pytest.fixture(scope="module")
def both(minilm_folder):
    return SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")


@pytest.fixture(scope="module")
def embeddings(both):
    return torch.as_tensor(both[1].encode(TEXTS * 5))


# ---------------------------------------------------------------- search and mining: order of arguments, scores

@pytest.mark.parametrize("score_function", ["cos_sim", "dot_score", "manhattan_sim"])
def test_semantic_search_takes_sentence_transformers_positional_arguments(embeddings, score_function):
    ours_function, their_function = getattr(util, score_function), getattr(reference_util, score_function)
    queries = embeddings[:7]
    ours = util.semantic_search(queries, embeddings, 3, 11, 4, ours_function)  # query chunk 3, corpus chunk 11, top 4
    theirs = reference_util.semantic_search(queries, embeddings, 3, 11, 4, their_function)
    full = their_function(queries, embeddings)
    for q, (our_row, their_row) in enumerate(zip(ours, theirs)):
        assert [hit["score"] for hit in our_row] == pytest.approx([hit["score"] for hit in their_row], abs=1e-5)
        for mine, other in zip(our_row, their_row):  # exact duplicates (TEXTS * 5) may swap, nothing else
            assert mine["corpus_id"] == other["corpus_id"] or abs(full[q, mine["corpus_id"]] - full[q, other["corpus_id"]]) < 1e-5


@pytest.mark.parametrize("score_function", ["cos_sim", "dot_score"])
def test_paraphrase_mining_embeddings_takes_sentence_transformers_positional_arguments(embeddings, score_function):
    unique = embeddings[:len(TEXTS)]
    ours = util.paraphrase_mining_embeddings(unique, 3, 5, 10, 2, getattr(util, score_function))
    theirs = reference_util.paraphrase_mining_embeddings(unique, 3, 5, 10, 2, getattr(reference_util, score_function))
    assert [score for score, _, _ in ours] == pytest.approx([score for score, _, _ in theirs], abs=1e-5)
    assert [(i, j) for _, i, j in ours] == [(i, j) for _, i, j in theirs]


def test_paraphrase_mining_of_a_model_and_sentences_equals_sentence_transformers(both):
    ours, reference = both
    mined, expected = util.paraphrase_mining(ours, TEXTS, False, 4, top_k=3), reference_util.paraphrase_mining(
        reference, TEXTS, False, 4, top_k=3)
    assert [(i, j) for _, i, j in mined] == [(i, j) for _, i, j in expected]


# ---------------------------------------------------------------- encode()

def test_one_text_without_numpy_is_one_1d_tensor(both):
    ours, reference = both
    mine, theirs = ours.encode("one text", convert_to_numpy=False), reference.encode("one text", convert_to_numpy=False)
    assert isinstance(mine, torch.Tensor) and mine.shape == theirs.shape == (384,)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    assert isinstance(ours.encode(TEXTS[:2], convert_to_numpy=False), list)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary", None])
def test_precision_quantizes_the_output_as_sentence_transformers_does(both, precision):
    ours, reference = both
    mine = ours.encode(TEXTS, precision=precision)
    theirs = reference.encode(TEXTS, precision=precision)
    assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
    # the same float embeddings quantize to the same codes; ours come from our own float embeddings
    np.testing.assert_array_equal(mine, util.quantize_embeddings(ours.encode(TEXTS), precision or "float32"))
    floats = reference.encode(TEXTS)
    for name in ("int8", "uint8", "binary", "ubinary"):
        np.testing.assert_array_equal(util.quantize_embeddings(floats, name),
                                      reference_util.quantize_embeddings(floats, name))


def test_an_unknown_precision_gives_sentence_transformers_message(both):
    for model in both:
        with pytest.raises(ValueError, match=r"Precision 'fp16' is not supported, must be one of \{"):
            model.encode(["a"], precision="fp16")


def test_any_iterable_of_text(both):
    ours, _ = both
    expected = ours.encode(TEXTS[:3])
    for given in (np.array(TEXTS[:3]), tuple(TEXTS[:3]), (text for text in TEXTS[:3]), iter(TEXTS[:3])):
        np.testing.assert_array_equal(ours.encode(given), expected)


def test_token_embeddings_and_both_outputs_equal_sentence_transformers(both):
    ours, reference = both
    mine = ours.encode(TEXTS, output_value="token_embeddings")
    theirs = reference.encode(TEXTS, output_value="token_embeddings")
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    everything = ours.encode(TEXTS[:2], output_value=None)
    assert set(everything[0]) >= {"token_embeddings", "sentence_embedding", "input_ids", "attention_mask"}
    torch.testing.assert_close(everything[1]["sentence_embedding"], torch.as_tensor(ours.encode(TEXTS[1])))


def test_padding_is_on_the_right_whatever_tokenizer_config_says(minilm_folder, tmp_path):
    # sentence-transformers pads on the left where tokenizer_config.json says so; BERT numbers positions from the
    # padded row's start, so its embedding of a text then moves with the longest text of the batch. minisbert pads
    # on the right: each text gets the embedding sentence-transformers gives it alone (the README says so)
    folder = copy_changing(minilm_folder, tmp_path, "tokenizer_config.json", padding_side="left")
    reference = Reference(str(folder), device="cpu")
    texts = TEXTS[:4] + ["A much longer sentence about a man who plays a guitar in the street for money."]
    alone = np.stack([reference.encode([text])[0] for text in texts])
    np.testing.assert_allclose(SentenceTransformer(folder).encode(texts), alone, atol=1e-5, rtol=0)
    assert np.abs(reference.encode(texts) - alone).max() > 1e-2  # the reason: padded on the left, it differs


def test_truncate_dim_as_sentence_transformers(minilm_folder):
    ours, reference = SentenceTransformer(minilm_folder, truncate_dim=64), Reference(str(minilm_folder), device="cpu",
                                                                                      truncate_dim=64)
    assert ours.get_sentence_embedding_dimension() == reference.get_embedding_dimension() == 64
    np.testing.assert_allclose(ours.encode(TEXTS, normalize_embeddings=True),
                               reference.encode(TEXTS, normalize_embeddings=True), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.encode(TEXTS, truncate_dim=32), reference.encode(TEXTS, truncate_dim=32),
                               atol=1e-5, rtol=0)


def test_truncate_dim_is_saved_and_read_as_sentence_transformers_does(minilm_folder, tmp_path):
    # sentence-transformers 6 keeps truncate_dim in config_sentence_transformers.json: a Matryoshka model's size
    Reference(str(minilm_folder), device="cpu", truncate_dim=48).save(str(tmp_path / "theirs"))
    ours = SentenceTransformer(tmp_path / "theirs")
    reference = Reference(str(tmp_path / "theirs"), device="cpu")
    assert ours.truncate_dim == reference.truncate_dim == 48
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    assert SentenceTransformer(tmp_path / "theirs", truncate_dim=96).encode(TEXTS).shape == (len(TEXTS), 96)
    ours.truncate_dim = 32
    ours.save(tmp_path / "ours")
    assert Reference(str(tmp_path / "ours"), device="cpu").truncate_dim == 32
    ours.truncate_dim = None
    ours.save(tmp_path / "ours")
    assert Reference(str(tmp_path / "ours"), device="cpu").truncate_dim is None


def test_save_takes_sentence_transformers_arguments(both, tmp_path):
    import inspect
    ours, reference = both
    for name in ("save", "save_pretrained"):
        assert (list(inspect.signature(getattr(ours, name)).parameters)
                == list(inspect.signature(getattr(reference, name)).parameters))
    ours.save(tmp_path / "ours", "a-model", False, ["snli"], True)  # positionally, as sentence-transformers takes them
    np.testing.assert_allclose(Reference(str(tmp_path / "ours"), device="cpu").encode(TEXTS), reference.encode(TEXTS),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="safetensors only"):
        ours.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_follows_similarity_fn_name(minilm_folder, name):
    ours = SentenceTransformer(minilm_folder, similarity_fn_name=name)
    reference = Reference(str(minilm_folder), device="cpu", similarity_fn_name=name)
    a, b = reference.encode(TEXTS[:4]), reference.encode(TEXTS[4:])
    torch.testing.assert_close(ours.similarity(a, b), reference.similarity(a, b), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.similarity_pairwise(a, b), reference.similarity_pairwise(a, b), atol=1e-5, rtol=0)


def test_encode_puts_back_the_training_mode_where_sentence_transformers_leaves_it_off(minilm_folder):
    # a difference kept on purpose (README): a training loop that calls encode() between steps keeps its dropout
    ours, reference = SentenceTransformer(minilm_folder).train(), Reference(str(minilm_folder), device="cpu").train()
    ours.encode(TEXTS[:2])
    reference.encode(TEXTS[:2])
    assert ours.training and ours.encoder.training and not reference.training


def test_max_seq_length_and_tokenize(both):
    ours, reference = both
    assert ours.get_max_seq_length() == reference.get_max_seq_length() == 256
    mine, theirs = ours.tokenize(TEXTS[:3]), reference.tokenize(TEXTS[:3])
    for key in ("input_ids", "attention_mask"):
        torch.testing.assert_close(mine[key], theirs[key].to(mine[key].dtype))


@pytest.mark.parametrize("include_prompt", [True, False])
def test_a_model_called_on_features_gives_what_sentence_transformers_gives(minilm_folder, include_prompt):
    # model(features), as in training loops of one's own: the embeddings, and the gradients through them
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu").eval()
    for model in (ours, reference):
        model.set_pooling_include_prompt(include_prompt)
    texts = [text for text in TEXTS if len(text) < 100]  # none truncated
    got = ours(util.batch_to_device(ours.preprocess(texts, prompt="query: "), "cpu"))
    expected = reference(reference_util.batch_to_device(reference.preprocess(texts, prompt="query: "), "cpu"))
    assert set(expected) - set(got) == {"token_type_ids", "modality"}  # transformers' inputs, not ours
    torch.testing.assert_close(got["sentence_embedding"], expected["sentence_embedding"], atol=1e-5, rtol=0)
    real = got["attention_mask"].bool()
    torch.testing.assert_close(got["token_embeddings"][real], expected["token_embeddings"][real], atol=1e-5, rtol=0)
    assert (got["token_embeddings"][~real] == 0).all()  # transformers leaves numbers there; pooling never reads them
    with torch.no_grad():  # prompt_length counts where the pooling leaves the prompt out
        whole = ours({"input_ids": got["input_ids"], "attention_mask": got["attention_mask"]})["sentence_embedding"]
    assert torch.allclose(whole, got["sentence_embedding"], atol=1e-5, rtol=0) == include_prompt
    with pytest.raises(KeyError, match=r"\['attention_mask'\] missing from \['input_ids'\]"):
        ours({"input_ids": got["input_ids"]})
    for output in (got, expected):
        output["sentence_embedding"][:, :10].sum().backward()
    torch.testing.assert_close(ours.encoder.layers[0].query.weight.grad,
                               reference[0].auto_model.encoder.layer[0].attention.self.query.weight.grad,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("folder", ["minilm_folder", "tiny_roberta", "tiny_mpnet", "tiny_albert", "tiny_t5",
                                    "tiny_modernbert", "tiny_qwen3", "tiny_gemma3"])
def test_the_tokenizer_answers_transformers_calls_as_transformers_does(request, folder):
    # the calls code written for sentence-transformers makes on model.tokenizer (transformers' tokenizer there)
    from transformers import AutoTokenizer
    folder = request.getfixturevalue(folder)
    ours, theirs = models.Transformer(folder).tokenizer, AutoTokenizer.from_pretrained(str(folder))
    # the last text is longer than max_seq_length: only __call__ truncates it
    for text in ["Hello, World! Ça va? 🙂 unaffable", "  The cat's   sleeping isn't it .  ",
                 "日本語 and CamelCase", "word " * 600]:
        ids = theirs(text)["input_ids"]
        assert ours.tokenize(text) == theirs.tokenize(text)
        assert ours.encode(text) == theirs.encode(text) == ids
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
        assert ours.decode(torch.tensor(ids)) == theirs.decode(ids)
        assert ours.batch_decode([ids, ids[:3]], skip_special_tokens=True) == theirs.batch_decode(
            [ids, ids[:3]], skip_special_tokens=True)
        tokens = theirs.convert_ids_to_tokens(ids)
        assert ours.convert_ids_to_tokens(ids) == tokens and ours.convert_ids_to_tokens(ids[1]) == tokens[1]
        assert ours.convert_tokens_to_ids(tokens + ["never-a-token"]) == theirs.convert_tokens_to_ids(
            tokens + ["never-a-token"])
        assert ours.convert_tokens_to_ids(tokens[1]) == theirs.convert_tokens_to_ids(tokens[1])
    assert (len(ours), ours.vocab_size, ours.get_vocab()) == (len(theirs), theirs.vocab_size, theirs.get_vocab())


def test_calling_the_tokenizer_as_transformers_gives_what_tokenize_gives(both):
    ours, reference = both
    assert ours.tokenizer.model_max_length == reference.tokenizer.model_max_length == 256
    mine = ours.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    theirs = reference.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(mine[key], theirs[key]) and torch.equal(mine[key], ours.tokenize(TEXTS)[key])
    with pytest.raises(TypeError, match=r"for one text's ids, model.tokenizer.encode\(text\)"):
        ours.tokenizer("one text")
    with pytest.raises(ValueError, match="model.tokenizer pads to the longest text"):
        ours.tokenizer(TEXTS, padding="max_length")


# ---------------------------------------------------------------- prompts from config_sentence_transformers.json

@pytest.fixture(scope="module")
def prompted_folder(tmp_path_factory, minilm_folder):
    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(minilm_folder, folder, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    settings.update(prompts={"query": "query: ", "passage": "passage: ", "classification": "topic: "},
                    default_prompt_name="classification", similarity_fn_name="dot")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return folder


def test_prompts_and_the_default_prompt_are_used_as_sentence_transformers_uses_them(prompted_folder):
    ours, reference = SentenceTransformer(prompted_folder), Reference(str(prompted_folder), device="cpu")
    assert ours.prompts == reference.prompts and ours.default_prompt_name == reference.default_prompt_name
    assert ours.similarity_fn_name == reference.similarity_fn_name == "dot"
    for call in (lambda m: m.encode(TEXTS), lambda m: m.encode(TEXTS, prompt_name="query"),
                 lambda m: m.encode(TEXTS, prompt="custom: "), lambda m: m.encode_query(TEXTS),
                 lambda m: m.encode_document(TEXTS),
                 # encode()'s arguments in its order: batch size, progress bar, output, precision, numpy, tensor
                 lambda m: m.encode_query(TEXTS, None, None, 3, False, "sentence_embedding", "float32", False, True),
                 lambda m: m.encode_document(TEXTS, "query", None, 2)):
        np.testing.assert_allclose(call(ours), call(reference), atol=1e-5, rtol=0)
    assert not np.allclose(ours.encode(TEXTS), ours.encode(TEXTS, prompt=""), atol=1e-3)  # the default prompt counts
    with pytest.raises(ValueError, match="Prompt name 'nope' not found"):
        ours.encode(TEXTS, prompt_name="nope")


def test_the_texts_are_inputs_as_in_sentence_transformers_6_and_sentences_still_works(prompted_folder):
    ours, reference = SentenceTransformer(prompted_folder), Reference(str(prompted_folder), device="cpu")
    for method in ("encode", "encode_query", "encode_document"):
        expected = getattr(reference, method)(inputs=TEXTS)
        np.testing.assert_allclose(getattr(ours, method)(inputs=TEXTS), expected, atol=1e-5, rtol=0)
        with pytest.warns(DeprecationWarning, match="sentences is now named inputs"):
            np.testing.assert_allclose(getattr(ours, method)(sentences=TEXTS), expected, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="got its texts twice"):
        ours.encode(TEXTS, sentences=TEXTS)
    with pytest.raises(TypeError, match="needs the texts to embed"):
        ours.encode()


@pytest.mark.parametrize("model_kwargs, dtype", [
    ({"torch_dtype": torch.bfloat16}, "bf16"), ({"dtype": "bfloat16", "attn_implementation": "eager"}, "bf16"),
    ({"torch_dtype": torch.float16}, "fp16"), ({"torch_dtype": "auto"}, "fp32"),
    ({"torch_dtype": "float32", "attn_implementation": "sdpa"}, "fp32")])
def test_model_kwargs_dtype_is_the_encoders_dtype_as_in_sentence_transformers(minilm_folder, model_kwargs, dtype):
    # sentence-transformers hands model_kwargs to transformers, which then computes in that type; minisbert's
    # encoder runs in it (pooling in fp32 in both), fp16 on the CPU too; "auto" is config.json's type, fp32 for this
    # checkpoint.
    # trust_remote_code=False and backend="torch", its defaults, are taken as they are
    ours = SentenceTransformer(minilm_folder, model_kwargs=model_kwargs, trust_remote_code=False, backend="torch")
    reference = Reference(str(minilm_folder), device="cpu", model_kwargs=model_kwargs)
    got = ours.encode(TEXTS)
    np.testing.assert_array_equal(got, SentenceTransformer(minilm_folder, dtype=dtype).encode(TEXTS))
    expected = reference.encode(TEXTS, convert_to_tensor=True).float().numpy()
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > {"bf16": 0.999, "fp16": 0.9999, "fp32": 1 - 1e-6}[dtype]


def test_a_checkpoint_that_names_bf16_runs_in_fp32_unless_auto_is_asked(minilm_folder, tmp_path):
    # sentence-transformers (with transformers 5) computes in the type config.json names unless told otherwise;
    # minisbert keeps fp32 (the README says so), and model_kwargs' "auto" takes config.json's type, as there
    folder = copy_changing(minilm_folder, tmp_path, "config.json", torch_dtype="bfloat16")
    reference = Reference(str(folder), device="cpu")
    assert next(reference.parameters()).dtype == torch.bfloat16
    np.testing.assert_array_equal(SentenceTransformer(folder).encode(TEXTS),
                                  SentenceTransformer(minilm_folder).encode(TEXTS))
    auto = SentenceTransformer(folder, model_kwargs={"torch_dtype": "auto"})
    assert auto.dtype_name == "bfloat16"
    got, expected = auto.encode(TEXTS), reference.encode(TEXTS)
    assert ((got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)).min() > 0.999


def test_qwen3_embeddings_own_example_arguments_are_taken(minilm_folder):
    # Qwen3-Embedding's model card loads it with model_kwargs={"attn_implementation": "flash_attention_2",
    # "device_map": "auto"} and tokenizer_kwargs={"padding_side": "left"}; sentence-transformers takes them (the last
    # under its new name, processor_kwargs, with a warning). Here they change nothing: one device, the first GPU if
    # any (as device=None), and padding on the right (README)
    options = {"model_kwargs": {"attn_implementation": "flash_attention_2", "device_map": "auto"}}
    Reference(str(minilm_folder), device="cpu", model_kwargs={"device_map": "auto"},
              processor_kwargs={"padding_side": "left"})
    with pytest.warns(FutureWarning, match="`tokenizer_kwargs` argument was renamed"):
        ours = SentenceTransformer(minilm_folder, tokenizer_kwargs={"padding_side": "left"}, **options)
    np.testing.assert_array_equal(ours.encode(TEXTS), SentenceTransformer(minilm_folder).encode(TEXTS))
    SentenceTransformer(minilm_folder, processor_kwargs={"padding_side": "right"})
    # and so does the Transformer module, as sentence-transformers' own
    reference_models.Transformer(str(minilm_folder), processor_kwargs={"padding_side": "left"})
    transformer = models.Transformer(minilm_folder, max_seq_length=256, processor_kwargs={"padding_side": "left"})
    built = SentenceTransformer(modules=[transformer, models.Pooling(384), models.Normalize()])
    np.testing.assert_array_equal(built.encode(TEXTS), ours.encode(TEXTS))
    with pytest.raises(ValueError, match=r"processor_kwargs \['truncation_side'\] mean nothing here"):
        models.Transformer(minilm_folder, processor_kwargs={"truncation_side": "left"})


def test_modalities_as_sentence_transformers_gives_them_for_a_text_model(both):
    ours, reference = both
    assert ours.modalities == reference.modalities == ["text"]
    for modality in ("text", "image", "audio", "message", ("image", "text")):
        assert ours.supports(modality) == reference.supports(modality)


def test_model_card_data_and_kernel_arguments_are_taken_and_change_nothing(minilm_folder):
    from sentence_transformers import SentenceTransformerModelCardData
    options = {"model_card_data": SentenceTransformerModelCardData(language="en", license="apache-2.0"),
               "use_kernels": False, "kernel_config": None}
    Reference(str(minilm_folder), device="cpu", **options)
    ours = SentenceTransformer(minilm_folder, **options)
    np.testing.assert_array_equal(ours.encode(TEXTS), SentenceTransformer(minilm_folder).encode(TEXTS))


def test_config_kwargs_replace_config_values_as_in_sentence_transformers(minilm_folder, tmp_path):
    # sentence-transformers hands config_kwargs to transformers' config; the dropout rates are what training sets
    changes = {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2}
    ours = SentenceTransformer(minilm_folder, config_kwargs=changes)
    reference = Reference(str(minilm_folder), device="cpu", config_kwargs=changes)
    their_config = reference[0].auto_model.config
    assert (their_config.hidden_dropout_prob, their_config.attention_probs_dropout_prob) == (0.3, 0.2)
    layer = ours.encoder.layers[0]
    assert (layer.dropout.p, layer.attention_dropout) == (0.3, 0.2)
    transformer = models.Transformer(minilm_folder, config_kwargs=changes)
    their_transformer = reference_models.Transformer(str(minilm_folder), config_kwargs=changes)
    assert their_transformer.auto_model.config.hidden_dropout_prob == transformer.encoder.layers[0].dropout.p == 0.3
    ours.save(tmp_path / "saved")  # written back, and read so by sentence-transformers
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert {key: saved[key] for key in changes} == changes
    assert Reference(str(tmp_path / "saved"), device="cpu")[0].auto_model.config.hidden_dropout_prob == 0.3
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)  # inference: no dropout
    with pytest.raises(ValueError, match=r"hidden_dropout_prob must be a number in \[0, 1\).*not 2"):
        SentenceTransformer(minilm_folder, config_kwargs={"hidden_dropout_prob": 2})
    with pytest.raises(ValueError, match="config_kwargs change the config.json of a model loaded by name"):
        SentenceTransformer(modules=[transformer, models.Pooling(384)], config_kwargs=changes)


def test_no_device_is_the_first_gpu_where_there_is_one_as_in_sentence_transformers(minilm_folder, monkeypatch):
    from minisbert import model as model_module
    assert model_module.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(model_module, "default_device", lambda: "meta")  # a device this machine surely has
    assert SentenceTransformer(minilm_folder).device.type == "meta"
    assert SentenceTransformer(minilm_folder, device="cpu").device.type == "cpu"


@pytest.mark.parametrize("options, message", [
    ({"model_kwargs": {"low_cpu_mem_usage": True}}, r"model_kwargs \['low_cpu_mem_usage'\] mean nothing here"),
    ({"model_kwargs": {"device_map": "balanced"}}, "device_map 'balanced': minisbert puts the whole model on one"),
    ({"processor_kwargs": {"truncation_side": "left"}}, r"processor_kwargs \['truncation_side'\] mean nothing here"),
    ({"processor_kwargs": {"padding_side": "middle"}}, "padding_side must be 'left' or 'right', not 'middle'"),
    ({"model_kwargs": {"torch_dtype": "int4"}}, "model_kwargs' dtype 'int4' is not one of"),
    ({"model_kwargs": {"torch_dtype": torch.float16}, "dtype": "bf16"}, "the dtype is given twice"),
    ({"trust_remote_code": True}, "runs no code from a model repository"),
    ({"backend": "onnx"}, "backend 'onnx': minisbert runs PyTorch only")])
def test_arguments_it_cannot_follow_are_errors(minilm_folder, options, message):
    with pytest.raises(ValueError, match=message):
        SentenceTransformer(minilm_folder, **options)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16, "float16", "auto"])
def test_dtype_tells_what_sentence_transformers_model_dtype_tells(minilm_folder, dtype):
    options = {} if dtype is None else {"model_kwargs": {"torch_dtype": dtype}}
    ours, reference = SentenceTransformer(minilm_folder, **options), Reference(str(minilm_folder), device="cpu",
                                                                                **options)
    assert ours.dtype == reference.dtype and ours.get_backend() == reference.get_backend() == "torch"


@pytest.mark.parametrize("convert,expected", [(lambda model: model.half(), torch.float16),
                                              (lambda model: model.float(), torch.float32),
                                              (lambda model: model.to(torch.float16), torch.float16),
                                              (lambda model: model.to("cpu", dtype=torch.float32), torch.float32)])
def test_a_model_given_a_type_computes_in_it_as_in_sentence_transformers(minilm_folder, convert, expected):
    # loaded in bf16, then given another type: sentence-transformers' model computes in that type from then on
    bf16 = {"model_kwargs": {"torch_dtype": torch.bfloat16}}
    ours, reference = SentenceTransformer(minilm_folder, **bf16), Reference(str(minilm_folder), device="cpu", **bf16)
    assert convert(ours).dtype == convert(reference).dtype == expected
    got = ours.encode(TEXTS)
    np.testing.assert_array_equal(got, SentenceTransformer(minilm_folder, dtype=expected).encode(TEXTS))
    # sentence-transformers' weights went through bf16 on the way; ours kept them
    np.testing.assert_allclose(got, reference.encode(TEXTS, convert_to_tensor=True).float(), atol=2e-2, rtol=0)
    ours.to("cpu")  # no type given: the model computes as before
    assert ours.dtype == expected


def test_a_model_given_float64_computes_in_it_as_in_sentence_transformers(minilm_folder):
    bf16 = {"model_kwargs": {"torch_dtype": torch.bfloat16}}
    ours, reference = SentenceTransformer(minilm_folder, **bf16), Reference(str(minilm_folder), device="cpu")
    assert ours.double().dtype == reference.double().dtype == torch.float64
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-7, rtol=0)  # output: float32


def test_use_auth_token_is_tokens_old_name_as_in_sentence_transformers(minilm_folder, monkeypatch):
    from minisbert import checkpoint
    for library in (Reference, SentenceTransformer):
        with pytest.warns(FutureWarning, match="The `use_auth_token` argument is deprecated"):
            library(str(minilm_folder), use_auth_token="hf_xyz", device="cpu")
        with pytest.raises(ValueError, match="Both `token` and `use_auth_token` are specified"), \
                pytest.warns(FutureWarning):
            library(str(minilm_folder), use_auth_token="hf_xyz", token="hf_abc", device="cpu")
    seen, load = [], checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda *args, **kwargs: seen.append(kwargs["token"]) or load(*args, **kwargs))
    with pytest.warns(FutureWarning):
        SentenceTransformer(minilm_folder, use_auth_token="hf_xyz")
    assert seen == ["hf_xyz"]


def test_saving_writes_the_prompts_back(prompted_folder, tmp_path):
    SentenceTransformer(prompted_folder).save(tmp_path / "saved")
    reference = Reference(str(tmp_path / "saved"), device="cpu")
    assert reference.prompts["query"] == "query: " and reference.default_prompt_name == "classification"
    assert reference.similarity_fn_name == "dot"


# ---------------------------------------------------------------- util

@pytest.mark.parametrize("name", ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim",
                                  "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim",
                                  "pairwise_angle_sim", "normalize_embeddings"])
@pytest.mark.parametrize("width", [384, 101])  # an odd width: AnglE's halves need a zero added
def test_util_functions_equal_sentence_transformers(embeddings, name, width):
    a, b = embeddings[:6, :width], embeddings[6:12, :width]
    args = (a,) if name == "normalize_embeddings" else (a, b)
    torch.testing.assert_close(getattr(util, name)(*args), getattr(reference_util, name)(*args), atol=1e-5, rtol=0)


@pytest.mark.parametrize("truncate_dim", [None, 1, 100, 1000])
def test_truncate_embeddings_as_sentence_transformers(embeddings, truncate_dim):
    for given in (embeddings, embeddings.numpy()):
        got, expected = util.truncate_embeddings(given, truncate_dim), reference_util.truncate_embeddings(given,
                                                                                                      truncate_dim)
        assert type(got) is type(expected) and got.shape == expected.shape and (got == expected).all()


def test_similarity_function_enum_as_sentence_transformers(minilm_folder, embeddings):
    from sentence_transformers import SimilarityFunction as ReferenceFunction

    from sentence_transformers.sentence_transformer import evaluation as reference_evaluation

    from minisbert import SimilarityFunction, evaluation
    from minisbert.evaluation import EmbeddingSimilarityEvaluator
    # imported from the evaluators' module too, as code written for sentence-transformers often does
    assert evaluation.SimilarityFunction is SimilarityFunction
    assert reference_evaluation.SimilarityFunction is ReferenceFunction
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    supported = ["cosine", "dot", "euclidean", "manhattan"]
    assert SimilarityFunction.possible_values() == supported == ReferenceFunction.possible_values()[:4]
    a, b = embeddings[:6], embeddings[6:12]
    for name in supported:
        for given in (name, SimilarityFunction(name), ReferenceFunction(name)):
            for convert in ("to_similarity_fn", "to_similarity_pairwise_fn"):
                torch.testing.assert_close(getattr(SimilarityFunction, convert)(given)(a, b),
                                           getattr(ReferenceFunction, convert)(name)(a, b), atol=1e-5, rtol=0)
            ours.similarity_fn_name = given
            reference.similarity_fn_name = given if isinstance(given, str) else ReferenceFunction(name)
            assert ours.similarity_fn_name == reference.similarity_fn_name == name
            torch.testing.assert_close(ours.similarity(a, b), reference.similarity(a, b), atol=1e-5, rtol=0)
            evaluator = EmbeddingSimilarityEvaluator(["a"], ["b"], [1.0], main_similarity=given)
            assert evaluator.main_similarity == name and evaluator.similarity_fn_names == [name]
    assert SimilarityFunction.DOT is SimilarityFunction.DOT_PRODUCT
    ours.similarity_fn_name = reference.similarity_fn_name = None  # the default again in either
    assert ours.similarity_fn_name == reference.similarity_fn_name == "cosine"
    with pytest.raises(ValueError, match="similarity_fn_name 'maxsim' is not one of cosine, dot, euclidean, manhattan"):
        ours.similarity_fn_name = ReferenceFunction.MAXSIM
    with pytest.raises(ValueError, match="similarity function 'maxsim' is not one of"):
        SimilarityFunction.to_similarity_fn("maxsim")


@pytest.mark.parametrize("threshold,min_size", [(0.75, 3), (0.5, 2), (0.9, 5), (0.3, 10)])
def test_community_detection_equals_sentence_transformers(data_dir, minilm_folder, threshold, min_size):
    from minisbert.data import distinct_sentences, read_sts_benchmark
    sentences = distinct_sentences(read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv"))[:400]
    embeddings = torch.as_tensor(Reference(str(minilm_folder), device="cpu").encode(sentences))
    ours = util.community_detection(embeddings, threshold, min_size, batch_size=64)
    theirs = reference_util.community_detection(embeddings, threshold, min_size, batch_size=64)
    assert [sorted(c) for c in ours] == [sorted(c) for c in theirs]
    assert [c[0] for c in ours] == [c[0] for c in theirs]


# ---------------------------------------------------------------- several processes

def test_two_cpu_processes_give_the_embeddings_of_one(both):
    import inspect
    ours, reference = both
    assert (list(inspect.signature(ours.encode_multi_process).parameters)
            == list(inspect.signature(reference.encode_multi_process).parameters))
    expected = ours.encode(TEXTS * 3)
    pool = ours.start_multi_process_pool(["cpu", "cpu"])
    try:
        got = ours.encode(TEXTS * 3, pool=pool, chunk_size=5)
        tokens = ours.encode(TEXTS[:4], pool=pool, output_value="token_embeddings", chunk_size=1)
        with pytest.warns(DeprecationWarning, match="The `encode_multi_process` method has been deprecated"):
            older = ours.encode_multi_process(TEXTS * 3, pool, None, None, 32, 5)  # its order of arguments
    finally:
        ours.stop_multi_process_pool(pool)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(older, got)
    for a, b in zip(tokens, ours.encode(TEXTS[:4], output_value="token_embeddings")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # batches of one text: other matrix shapes, other rounding
    np.testing.assert_allclose(ours.encode(TEXTS[:3], device=["cpu", "cpu"], precision="int8"),
                               ours.encode(TEXTS[:3], precision="int8"), atol=1, rtol=0)



def test_a_pool_whose_workers_stopped_is_an_error_not_a_wait(both):
    ours, _ = both
    pool = ours.start_multi_process_pool(["cpu", "cpu"])
    try:
        for process in pool["processes"]:
            process.kill()
            process.join()
        with pytest.raises(RuntimeError, match=r"every worker process of the pool has stopped \(exit codes cpu: -9"):
            ours.encode(TEXTS, pool=pool)
    finally:
        ours.stop_multi_process_pool(pool)


def test_a_worker_that_stops_holding_a_chunk_is_named():
    # one worker took chunk 1 and stopped; the other is alive and sent chunk 0: waiting longer would wait for ever
    import queue
    from types import SimpleNamespace

    from minisbert.multiprocess import collect
    alive = SimpleNamespace(pid=11, exitcode=None, is_alive=lambda: True)
    stopped = SimpleNamespace(pid=12, exitcode=-9, is_alive=lambda: False)

    def pool(*messages):
        output = queue.Queue()
        for message in messages:
            output.put(message)
        return {"output": output, "processes": [alive, stopped], "devices": ["cuda:0", "cuda:1"]}

    zeros, ones = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(RuntimeError, match=r"on cuda:1 stopped \(exit code -9\) while it encoded chunk 1"):
        collect(pool(("taken", 0, 11), ("taken", 1, 12), ("done", 0, zeros, None)), 2, wait=0.01)
    # a stopped worker that held nothing is no loss; the chunks come back in order
    done = collect(pool(("taken", 1, 11), ("taken", 0, 11), ("done", 1, ones, None), ("done", 0, zeros, None)), 2,
                   wait=0.01)
    assert [chunk for chunk, _, _ in done] == [0, 1] and torch.equal(done[1][1], ones)


# ---------------------------------------------------------------- sentence-transformers 6's other names

def test_preprocess_with_a_prompt_as_sentence_transformers(both):
    ours, reference = both
    for prompt in (None, "query: "):
        mine, theirs = ours.preprocess(TEXTS[:3], prompt=prompt), reference.preprocess(TEXTS[:3], prompt=prompt)
        for key in ("input_ids", "attention_mask"):
            torch.testing.assert_close(mine[key], theirs[key].to(mine[key].dtype))
        assert mine.get("prompt_length") == theirs.get("prompt_length") == (3 if prompt else None)
    assert ours.preprocess([]) == reference.preprocess([]) == {}


def test_truncate_embeddings_for_a_block_as_sentence_transformers(both):
    ours, reference = both
    for truncate_dim in (16, None):
        with ours.truncate_embeddings(truncate_dim), reference.truncate_embeddings(truncate_dim):
            assert ours.get_embedding_dimension() == reference.get_embedding_dimension() == (truncate_dim or 384)
            np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    assert ours.truncate_dim is None and ours.encode(TEXTS).shape == (len(TEXTS), 384)
    with pytest.raises(ValueError, match="truncate_dim must be a positive integer or None, not 0"):
        with ours.truncate_embeddings(0):
            pass


def test_pooling_without_the_prompt_set_on_the_model_as_sentence_transformers(minilm_folder, tmp_path):
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    prompt = "Represent this: "
    with_prompt = ours.encode(TEXTS, prompt=prompt)
    ours.set_pooling_include_prompt(False)
    reference.set_pooling_include_prompt(False)
    without = ours.encode(TEXTS, prompt=prompt)
    np.testing.assert_allclose(without, reference.encode(TEXTS, prompt=prompt), atol=1e-5, rtol=0)
    assert not np.allclose(without, with_prompt, atol=1e-3)
    ours.save_pretrained(tmp_path / "saved")  # sentence-transformers' other name for save()
    np.testing.assert_allclose(Reference(str(tmp_path / "saved"), device="cpu").encode(TEXTS, prompt=prompt), without,
                               atol=1e-5, rtol=0)


def test_input_examples_as_sentence_transformers_makes_them(both, tmp_path):
    from sentence_transformers import InputExample as ReferenceExample
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as ReferenceEvaluator

    from minisbert import InputExample
    from minisbert.evaluation import EmbeddingSimilarityEvaluator
    rows = [("a", [TEXTS[0], TEXTS[1]], 0.9), ("b", [TEXTS[2], TEXTS[3]], 0.1), ("c", [TEXTS[0], TEXTS[7]], 1.0),
            ("d", [TEXTS[3], TEXTS[4]], 0.0)]
    ours, theirs = [InputExample(*row) for row in rows], [ReferenceExample(*row) for row in rows]
    assert [(e.guid, e.texts, e.label, str(e)) for e in ours] == [(e.guid, e.texts, e.label, str(e)) for e in theirs]
    assert InputExample(texts=["x"], label=2).texts == ReferenceExample(texts=["x"], label=2).texts
    got, expected = evaluate_both(*both, EmbeddingSimilarityEvaluator.from_input_examples(ours),
                                  ReferenceEvaluator.from_input_examples(theirs), tmp_path)
    assert got == pytest.approx(expected, abs=1e-6)


def evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path):
    """Each library's evaluator on its own model, writing under tmp_path/ours and tmp_path/theirs: their metrics."""
    return (ours.evaluate(evaluator, str(tmp_path / "ours")),
            reference.evaluate(reference_evaluator, str(tmp_path / "theirs")))


def assert_same_csv_file(tmp_path, atol: float):
    """Each evaluator wrote one CSV file under tmp_path/ours and tmp_path/theirs: the same name, header and row
    (to `atol`, and to 1e-5 of the value: distances summed over the embedding, such as manhattan thresholds near 14,
    carry float32 rounding of their own size where fp32 takes oneDNN's products, as on AMD's CPUs)."""
    [ours_csv] = (tmp_path / "ours").iterdir()
    [their_csv] = (tmp_path / "theirs").iterdir()
    assert ours_csv.name == their_csv.name
    mine, theirs = (path.read_text().splitlines() for path in (ours_csv, their_csv))
    assert mine[0] == theirs[0] and len(mine) == len(theirs) == 2
    np.testing.assert_allclose(np.array(mine[1].split(","), dtype=float), np.array(theirs[1].split(","), dtype=float),
                               atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- a model built from modules

def modules_of(library, folder, dense=None, **pooling_options):
    """A Transformer, a Pooling, a Dense (ReLU; the weights of `dense`, another Dense, if given) and a Normalize
    from `library`: sentence-transformers' models or minisbert's."""
    transformer = library.Transformer(str(folder), max_seq_length=20, do_lower_case=True)
    pooling = library.Pooling(transformer.get_embedding_dimension(), **pooling_options)
    weights = {} if dense is None else {"init_weight": dense.linear.weight.detach(),
                                        "init_bias": dense.linear.bias.detach()}
    dense = library.Dense(pooling.get_embedding_dimension(), 24, activation_function=nn.ReLU(), **weights)
    return [transformer, pooling, dense, library.Normalize()]


@pytest.mark.parametrize("name", ["minilm_folder", "tiny_roberta", "tiny_mpnet"])
def test_a_model_built_from_modules_equals_sentence_transformers(name, request, tmp_path):
    folder = request.getfixturevalue(name)
    theirs = modules_of(reference_models, folder, pooling_mode=("cls", "mean"))
    ours = SentenceTransformer(modules=modules_of(models, folder, theirs[2], pooling_mode=("cls", "mean")))
    reference = Reference(modules=theirs, device="cpu")
    assert ours.max_seq_length == reference.max_seq_length == 20
    assert ours.get_embedding_dimension() == reference.get_embedding_dimension() == 24
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    # unless given, the length is the tokenizer's model_max_length within the position table, as there
    # (sentence_bert_config.json is not read); capped at the positions RoBERTa's table holds, where
    # sentence-transformers caps at max_position_embeddings (two more: RoBERTa numbers from padding_idx + 1)
    transformer = models.Transformer(folder)
    their_length = reference_models.Transformer(str(folder)).max_seq_length
    assert transformer.max_seq_length == min(their_length, transformer.encoder.config.max_tokens)
    ours.save(tmp_path / "saved")
    np.testing.assert_allclose(Reference(str(tmp_path / "saved"), device="cpu").encode(TEXTS), ours.encode(TEXTS),
                               atol=1e-5, rtol=0)


def test_each_module_called_on_features_as_in_sentence_transformers(minilm_folder):
    # for module in model: features = module(features), and model[0](features) for the token embeddings: each module
    # adds or replaces its output in the dict it was given, as there
    theirs = modules_of(reference_models, minilm_folder, pooling_mode=("cls", "mean"), include_prompt=False)
    given = modules_of(models, minilm_folder, theirs[2], pooling_mode=("cls", "mean"), include_prompt=False)
    ours = SentenceTransformer(modules=given)
    reference = Reference(modules=theirs, device="cpu")
    assert [ours[i] for i in range(4)] == given and [reference[i] for i in range(4)] == theirs  # the objects given
    assert ours[0] is ours[0] is ours._first_module() and ours._last_module() is ours[-1] is ours.after[-1]
    assert [type(module).__name__ for module in ours] == [type(module).__name__ for module in reference]
    texts = [text for text in TEXTS if 0 < len(text) < 60]  # none truncated
    mine, expected = ours.preprocess(texts, prompt="query: "), reference.preprocess(texts, prompt="query: ")
    assert mine["prompt_length"] == expected["prompt_length"]
    real = mine["attention_mask"].bool()
    for index, (our_module, their_module) in enumerate(zip(ours, reference)):
        assert our_module(mine) is mine and their_module(expected) is expected
        key = "token_embeddings" if index == 0 else "sentence_embedding"
        got, want = (mine[key][real], expected[key][real]) if index == 0 else (mine[key], expected[key])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    whole = ours({key: mine[key] for key in ("input_ids", "attention_mask", "prompt_length")})
    torch.testing.assert_close(whole["sentence_embedding"], mine["sentence_embedding"], atol=1e-6, rtol=0)
    features = ours.preprocess(texts)
    assert ours(features) is features and "sentence_embedding" in features  # in place, as there
    for module, needs in [(ours[0], "input_ids and attention_mask"), (ours[1], "token_embeddings"),
                          (ours[2], "a sentence_embedding")]:
        with pytest.raises(KeyError, match=f"{type(module).__name__}\\(features\\): features must hold {needs}"):
            module({"attention_mask": features["attention_mask"]})
    without = {"attention_mask": features["attention_mask"]}  # Normalize passes it on, as there
    assert ours[3](without) is without and reference[3](dict(without)).keys() == without.keys()
    with pytest.raises(AttributeError, match="holds no transformers model"):  # not our encoder: it answers otherwise
        ours[0].auto_model


def test_pooling_mode_reads_and_sets_as_in_sentence_transformers(minilm_folder):
    for given in ["cls", ["mean"], ("cls", "max"), ["mean", "max", "lasttoken"]]:
        ours, theirs = models.Pooling(384, given), reference_models.Pooling(384, given)
        assert ours.pooling_mode == theirs.pooling_mode and type(ours.pooling_mode) is type(theirs.pooling_mode)
        assert ours.pooling_output_dimension == theirs.pooling_output_dimension == ours.get_embedding_dimension()
    assert models.Pooling.POOLING_MODES == reference_models.Pooling.POOLING_MODES
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours[1].pooling_mode = reference[1].pooling_mode = "max"  # pooled otherwise from then on, in either
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"pooling mode \['sum'\] is not supported"):
        ours[1].pooling_mode = "sum"


@pytest.mark.parametrize("options", [{"pooling_mode_cls_token": True},
                                     {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": True},
                                     {"pooling_mode_mean_tokens": False}, {"pooling_mode": "max"}])
def test_pooling_takes_the_arguments_before_sentence_transformers_6_as_it_does(options, minilm_folder):
    # sentence-transformers 6 turns the boolean keys into modes (a key left out is False) with a FutureWarning
    legacy = any(key.startswith("pooling_mode_") for key in options)
    with pytest.warns(FutureWarning) if legacy else contextlib.nullcontext():
        theirs = modules_of(reference_models, minilm_folder, **options)
    with pytest.warns(FutureWarning) if legacy else contextlib.nullcontext():
        ours_modules = modules_of(models, minilm_folder, theirs[2], **options)
    ours = SentenceTransformer(modules=ours_modules)
    np.testing.assert_allclose(ours.encode(TEXTS), Reference(modules=theirs, device="cpu").encode(TEXTS),
                               atol=1e-5, rtol=0)
    with pytest.warns(FutureWarning, match="word_embedding_dimension is now named embedding_dimension"):
        assert models.Pooling(word_embedding_dimension=384).get_embedding_dimension() == 384
    # the dimension getters' names before sentence-transformers 6
    transformer, pooling, dense, _ = ours_modules
    assert transformer.get_word_embedding_dimension() == 384
    assert [pooling.get_sentence_embedding_dimension(), dense.get_sentence_embedding_dimension()] == [
        module.get_embedding_dimension() for module in ours_modules[1:3]]


def test_a_transformer_takes_its_tokenizer_from_another_folder_as_in_sentence_transformers(tiny_mpnet, tiny_roberta):
    ours = models.Transformer(tiny_mpnet, tokenizer_name_or_path=tiny_roberta)
    theirs = reference_models.Transformer(str(tiny_mpnet), tokenizer_name_or_path=str(tiny_roberta))
    texts = [text for text in TEXTS if len(text) < 100]  # none truncated
    assert ours.tokenizer.token_ids(texts) == [theirs.tokenizer(text)["input_ids"] for text in texts]
    assert ours.tokenizer.token_ids(texts) != models.Transformer(tiny_mpnet).tokenizer.token_ids(texts)


def test_a_transformers_model_kwargs_set_the_compute_type_as_in_sentence_transformers(minilm_folder):
    bf16 = {"model_kwargs": {"torch_dtype": torch.bfloat16}}
    ours = SentenceTransformer(modules=[models.Transformer(minilm_folder, **bf16), models.Pooling(384)])
    plain = SentenceTransformer(modules=[models.Transformer(minilm_folder), models.Pooling(384)], dtype="bf16")
    np.testing.assert_array_equal(ours.encode(TEXTS), plain.encode(TEXTS))
    reference = Reference(modules=[reference_models.Transformer(str(minilm_folder), **bf16),
                                   reference_models.Pooling(384)], device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True).float().numpy()
    got = ours.encode(TEXTS)
    assert ((got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)).min() > 0.999
    with pytest.raises(ValueError, match="the dtype is given twice"):
        SentenceTransformer(modules=[models.Transformer(minilm_folder, **bf16), models.Pooling(384)], dtype="fp16")


@pytest.mark.parametrize("fp32", [torch.float32, "float32", "torch.float32"])
def test_a_transformer_asked_for_fp32_in_any_spelling_leaves_the_models_dtype_free(minilm_folder, fp32):
    # fp32 is the default, so it is not a second dtype beside the model's own dtype=
    transformer = models.Transformer(minilm_folder, model_kwargs={"torch_dtype": fp32})
    ours = SentenceTransformer(modules=[transformer, models.Pooling(384)], dtype="bf16")
    plain = SentenceTransformer(modules=[models.Transformer(minilm_folder), models.Pooling(384)], dtype="bf16")
    np.testing.assert_array_equal(ours.encode(TEXTS), plain.encode(TEXTS))
    assert not np.array_equal(ours.encode(TEXTS), SentenceTransformer(
        modules=[models.Transformer(minilm_folder), models.Pooling(384)]).encode(TEXTS))


def test_a_model_lists_its_modules_as_sentence_transformers_does(minilm_folder, tmp_path):
    # model[i], len(model) and iteration, as on sentence-transformers' nn.Sequential; model[0]'s max_seq_length is
    # the model's
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    assert len(ours) == len(reference) == 3
    assert [type(module).__name__ for module in ours] == [type(module).__name__ for module in reference]
    assert isinstance(ours[-1], models.Normalize) and ours[1] is ours.pooling
    assert ours[0].max_seq_length == reference[0].max_seq_length == 256
    ours[0].max_seq_length = reference[0].max_seq_length = 5
    assert ours.max_seq_length == reference.max_seq_length == 5
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    assert ours[0].get_embedding_dimension() == reference[0].get_embedding_dimension() == 384
    with pytest.raises(ValueError, match=r"max_seq_length must be an integer in 1\.\.512, got 513"):
        ours[0].max_seq_length = 513
    rebuilt = SentenceTransformer(modules=list(SentenceTransformer(minilm_folder, dtype="bf16")))
    assert rebuilt.dtype_name == "bf16" and len(rebuilt) == 3  # a model rebuilt from its modules computes as it did


def test_modules_it_cannot_build_from_are_named(minilm_folder):
    transformer = models.Transformer(minilm_folder)
    for modules, message in [
            ([models.Pooling(384)], r"modules\[0\] is minisbert.pooling.Pooling"),
            ([transformer], r"modules\[1\] is missing: .*then a Pooling"),
            ([transformer, models.Normalize()], r"modules\[1\] is minisbert.pooling.Normalize"),
            ([transformer, reference_models.Pooling(384)], r"modules\[1\] is sentence_transformers\..*Pooling"),
            ([transformer, models.Pooling(384, "max"), models.Pooling(384)],
             r"modules\[2\] is minisbert.pooling.Pooling"),
            ([transformer, models.Pooling(256)], r"modules\[1\] takes 256 values, but the module before it gives 384"),
            ([transformer, models.Pooling(384, ["cls", "max"]), models.Dense(384, 8)],
             r"modules\[2\] takes 384 values, but the module before it gives 768")]:
        with pytest.raises(ValueError, match=message):
            SentenceTransformer(modules=modules)
    with pytest.raises(ValueError, match="either a model name or path, modules=, or the parts"):
        SentenceTransformer(minilm_folder, modules=[transformer, models.Pooling(384)])
    with pytest.raises(ValueError, match="Dense activation_function 'torch.nn.modules.activation.Softmax'"):
        models.Dense(384, 8, activation_function=nn.Softmax())
    with pytest.raises(ValueError, match=r"Dense init_weight has shape \(4, 4\), not \(8, 384\)"):
        models.Dense(384, 8, init_weight=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="max_seq_length 1000 is more than the 512 positions"):
        models.Transformer(minilm_folder, max_seq_length=1000)


# ---------------------------------------------------------------- evaluation

@pytest.mark.parametrize("options", [{}, {"name": "sts-dev", "similarity_fn_names": ["cosine", "dot", "euclidean",
                                                                                    "manhattan"]},
                                     {"main_similarity": "manhattan", "precision": "int8"},
                                     {"name": "b", "precision": "ubinary", "truncate_dim": 128},
                                     {"precision": "binary"}])
def test_embedding_similarity_evaluator_as_sentence_transformers(both, data_dir, options, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as ReferenceEvaluator

    from minisbert.data import read_sts_benchmark
    from minisbert.evaluation import EmbeddingSimilarityEvaluator
    ours, reference = both
    examples = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:150]
    columns = [e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples]
    evaluator = EmbeddingSimilarityEvaluator(*columns, **options)
    reference_evaluator = ReferenceEvaluator(*columns, **options)
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert got.keys() == expected.keys() and evaluator.primary_metric == reference_evaluator.primary_metric
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-4), key
    assert_same_csv_file(tmp_path, atol=1e-4)


@pytest.mark.parametrize("options", [{}, {"name": "nli", "similarity_fn_names": ["cosine", "dot", "euclidean", "manhattan"]},
                                     {"main_similarity_function": "manhattan", "margin": 0.5},
                                     {"name": "m", "margin": {"cosine": 0.1, "dot": 0.05}, "truncate_dim": 128,
                                      "similarity_fn_names": ["dot", "cosine"]}])
@pytest.mark.parametrize("prompts", [None, {"query": "query: ", "document": "passage: "}])
def test_triplet_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, prompts, tmp_path):
    # anchors with the query prompt, positives and negatives with the document prompt, as its encode_query and
    # encode_document; premises with an entailed and a contradicted hypothesis from the SNLI dev set
    from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator as ReferenceEvaluator

    from minisbert.data import nli_triplets, read_nli
    from minisbert.evaluation import TripletEvaluator
    ours, reference = SentenceTransformer(minilm_folder, prompts=prompts), Reference(str(minilm_folder), device="cpu",
                                                                                    prompts=prompts)
    triplets = nli_triplets(read_nli(data_dir / "nli" / "snli_1.0_dev.jsonl"))[:120]
    columns = ([t.texts[i] for t in triplets] for i in range(3))
    evaluator = TripletEvaluator(*columns, **options)
    reference_evaluator = ReferenceEvaluator.from_input_examples(triplets, **options)
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert got == pytest.approx(expected, abs=1e-6) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert 0 < min(got.values()) <= max(got.values()) < 1  # neither none nor all: margins and prompts can show
    assert_same_csv_file(tmp_path, atol=1e-6)


def retrieval_data(data_dir):
    """Queries (STSb dev first sentences) whose relevant documents are their second sentences, scored 3 or more,
    in a corpus of every second sentence, whose ids sort in the reverse of the corpus's order (equal scores rank by
    id); one query has two relevant documents. A text seen before is left out: sentence-transformers' embeddings of
    one text in two batches differ in the last bits (ours are equal), which would break their ties at random."""
    from minisbert.data import read_sts_benchmark
    seen, examples = set(), []
    for example in read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:330]:
        if not seen & set(example.texts):
            examples.append(example)
        seen.update(example.texts)
    corpus = {f"d{999 - i:03d}": e.texts[1] for i, e in enumerate(examples)}
    queries = {f"q{i}": e.texts[0] for i, e in enumerate(examples)}
    relevant = {f"q{i}": {f"d{999 - i:03d}"} for i, e in enumerate(examples) if e.label >= 3}
    relevant["q0"] = {"d999", "d998"}
    return queries, corpus, relevant


@pytest.mark.parametrize("options", [
    {}, {"name": "sts-ir", "corpus_chunk_size": 70, "mrr_at_k": [3, 10], "ndcg_at_k": [5, 20], "map_at_k": [10],
         "write_predictions": True},
    {"score_functions": "all", "main_score_function": "dot", "accuracy_at_k": [1, 2], "truncate_dim": 64,
     "write_predictions": True},
    {"query_prompt": "query: ", "corpus_prompt_name": "passage", "precision_recall_at_k": [1, 50]},
    {"score_functions": "rounded", "corpus_chunk_size": 64}])  # many equal scores, within and across chunks
def test_information_retrieval_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, tmp_path):
    from sentence_transformers import util as reference_util
    from sentence_transformers.sentence_transformer.evaluation import \
        InformationRetrievalEvaluator as ReferenceEvaluator

    from minisbert import util
    from minisbert.evaluation import InformationRetrievalEvaluator
    prompts = {"passage": "passage: "}
    ours, reference = (SentenceTransformer(minilm_folder, prompts=prompts),
                       Reference(str(minilm_folder), device="cpu", prompts=prompts))
    data = retrieval_data(data_dir)
    ours_options, their_options = dict(options), dict(options)
    if options.get("score_functions") == "rounded":
        ours_options["score_functions"] = {"cosine": lambda a, b: (util.cos_sim(a, b) * 10).round() / 10}
        their_options["score_functions"] = {"cosine": lambda a, b: (reference_util.cos_sim(a, b) * 10).round() / 10}
    if options.get("score_functions") == "all":
        functions = {"cosine": "cos_sim", "dot": "dot_score", "manhattan": "manhattan_sim"}
        ours_options["score_functions"] = {name: getattr(util, function) for name, function in functions.items()}
        their_options["score_functions"] = {name: getattr(reference_util, function)
                                            for name, function in functions.items()}
    evaluator, reference_evaluator = InformationRetrievalEvaluator(*data, **ours_options), ReferenceEvaluator(
        *data, **their_options)
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert got == pytest.approx(expected, abs=1e-9) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert len(set(got.values())) > 5  # the metrics differ from each other: a wrong one cannot hide among them
    if options.get("write_predictions"):  # one file per score function: each query's hits, best first
        mine, theirs = (sorted((tmp_path / side).glob("*_predictions_*.jsonl")) for side in ("ours", "theirs"))
        assert [path.name for path in mine] == [path.name for path in theirs] and mine
        for ours_file, their_file in zip(mine, theirs):
            ours_lines, their_lines = (list(map(json.loads, path.read_text().splitlines()))
                                       for path in (ours_file, their_file))
            assert len(ours_lines) == len(their_lines) == len(evaluator.queries)
            for a, b in zip(ours_lines, their_lines):
                assert {**a, "results": None} == {**b, "results": None}
                scores = np.array([hit["score"] for hit in a["results"]])
                np.testing.assert_allclose(scores, [hit["score"] for hit in b["results"]], atol=1e-5)
                # the same documents in the same places, but where scores closer than the libraries' rounding
                # (about 1e-7 in cosine, 1e-6 in Manhattan distances) may trade places
                apart = np.diff(scores, prepend=np.inf, append=-np.inf)
                clear = (np.abs(apart[:-1]) > 1e-5) & (np.abs(apart[1:]) > 1e-5)
                assert clear.mean() > 0.5
                assert ([hit["corpus_id"] for hit, kept in zip(a["results"], clear) if kept]
                        == [hit["corpus_id"] for hit, kept in zip(b["results"], clear) if kept])
            ours_file.unlink(), their_file.unlink()
    assert_same_csv_file(tmp_path, atol=1e-9)


def binary_pairs(data_dir):
    """STS benchmark dev pairs labelled 1 where scored 3 or more; then the first 20 again with the other label, so
    that equal scores carry both labels (each distinct text is embedded once, by both libraries)."""
    from minisbert.data import read_sts_benchmark
    examples = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:200]
    labels = [int(e.label >= 3) for e in examples]
    pairs = [e.texts for e in examples] + [e.texts for e in examples[:20]]
    return [a for a, _ in pairs], [b for _, b in pairs], labels + [1 - label for label in labels[:20]]


@pytest.mark.parametrize("options", [
    {}, {"name": "sts-pairs", "similarity_fn_names": ["cosine", "dot", "euclidean", "manhattan"]},
    {"similarity_fn_names": ["manhattan"], "truncate_dim": 64, "batch_size": 7}])
def test_binary_classification_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import \
        BinaryClassificationEvaluator as ReferenceEvaluator

    from minisbert.evaluation import BinaryClassificationEvaluator
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    data = binary_pairs(data_dir)
    evaluator = BinaryClassificationEvaluator(*data, **options)
    reference_evaluator = ReferenceEvaluator(*data, **options)
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert list(got) == list(expected) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert got == pytest.approx({key: float(value) for key, value in expected.items()}, rel=1e-5, abs=1e-6)
    assert 0.5 < got[evaluator.primary_metric] < 1  # neither chance nor perfect
    assert_same_csv_file(tmp_path, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("higher_is_alike", [True, False])
def test_binary_classification_metrics_equal_sentence_transformers_and_scikit_learn(seed, higher_is_alike):
    # scores with many equal values (a few distinct ones), for seed 3 neighbouring floats (whose midpoint rounds to
    # one of them), and for the last seeds one class only or a single pair
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as Reference
    from sklearn.metrics import average_precision_score, matthews_corrcoef

    from minisbert.evaluation import binary_classification_metrics
    generator = np.random.default_rng(seed)
    n = (1 if seed == 5 else 200)
    scores = generator.integers(0, 12, n).astype(np.float32) / np.float32(7)
    if seed == 3:
        scores = np.float32(0.5) + generator.integers(0, 4, n).astype(np.float32) * np.spacing(np.float32(0.5))
    labels = (generator.random(n) < (0.0 if seed == 4 else 0.4)).astype(int)
    if seed == 3:  # the best thresholds between two neighbours whose midpoint rounds to the one beyond them
        values = np.unique(scores)
        labels = (scores >= values[3] if higher_is_alike else scores <= values[1]).astype(int)
    got = binary_classification_metrics(scores, labels, higher_is_alike)
    accuracy, accuracy_threshold = Reference.find_best_acc_and_threshold(scores, labels, higher_is_alike)
    f1, precision, recall, f1_threshold = Reference.find_best_f1_and_threshold(scores, labels, higher_is_alike)
    expected = {"accuracy": accuracy, "accuracy_threshold": accuracy_threshold, "f1": f1, "f1_threshold": f1_threshold,
                "precision": precision, "recall": recall}
    assert {key: got[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    predicted = scores >= f1_threshold if higher_is_alike else scores <= f1_threshold
    assert got["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted), abs=1e-12)
    if labels.any():  # scikit-learn warns and gives 0 without a positive pair
        ranked = scores if higher_is_alike else -scores
        assert got["ap"] == pytest.approx(average_precision_score(labels, ranked), abs=1e-12)


@pytest.mark.parametrize("options", [
    {}, {"name": "sts-mining", "top_k": 3, "max_pairs": 150, "query_chunk_size": 70, "add_transitive_closure": True},
    {"duplicates": "dict", "truncate_dim": 48}])
def test_paraphrase_mining_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, tmp_path):
    # STS benchmark dev sentences; the pairs scored 3.8 or more are duplicates, chained through shared sentences
    from collections import defaultdict

    from sentence_transformers.sentence_transformer.evaluation import ParaphraseMiningEvaluator as ReferenceEvaluator

    from minisbert.data import read_sts_benchmark
    from minisbert.evaluation import ParaphraseMiningEvaluator
    examples = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:300]
    ids = {}
    for example in examples:
        for text in example.texts:
            ids.setdefault(text, f"s{len(ids)}")
    sentences = {i: text for text, i in ids.items()}
    duplicates = [(ids[e.texts[0]], ids[e.texts[1]]) for e in examples if e.label >= 3.8]
    options = dict(options)
    if options.pop("duplicates", None) == "dict":
        marked = defaultdict(lambda: defaultdict(bool))  # as sentence-transformers builds it from a list
        for a, b in duplicates:
            marked[a][b] = marked[b][a] = True
        options["duplicates_dict"] = marked
    else:
        options["duplicates_list"] = duplicates
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    evaluator, reference_evaluator = (ParaphraseMiningEvaluator(sentences, **options),
                                      ReferenceEvaluator(sentences, **options))
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert list(got) == list(expected) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert got == pytest.approx(expected, abs=1e-6)
    assert 0 < got[evaluator.primary_metric] < 1
    assert_same_csv_file(tmp_path, atol=1e-6)


def test_transitive_closure_joins_every_chain():
    from minisbert.evaluation import transitive_closure
    pairs = {frozenset(pair) for pair in [("a", "b"), ("c", "b"), ("d", "e"), ("f", "c")]}
    expected = {frozenset(pair) for pair in [("a", "b"), ("a", "c"), ("a", "f"), ("b", "c"), ("b", "f"), ("c", "f"),
                                              ("d", "e")]}
    assert transitive_closure(pairs) == expected


@pytest.mark.parametrize("name", ["", "en-de"])
def test_mse_and_sequential_evaluators_as_sentence_transformers(minilm_folder, data_dir, name, tmp_path):
    # a teacher's embeddings of the first sentences against the model's of the second (both all-MiniLM-L6-v2), then
    # that evaluator, a binary and a similarity one in sequence, with sentence-transformers' default main score and
    # with a mean of their primary metrics
    from sentence_transformers.sentence_transformer.evaluation import (
        BinaryClassificationEvaluator as ReferenceBinary, EmbeddingSimilarityEvaluator as ReferenceSimilarity,
        MSEEvaluator as ReferenceMSE, SequentialEvaluator as ReferenceSequential)

    from minisbert.data import read_sts_benchmark
    from minisbert.evaluation import (BinaryClassificationEvaluator, EmbeddingSimilarityEvaluator, MSEEvaluator,
                                    SequentialEvaluator)
    examples = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:120]
    first, second = [e.texts[0] for e in examples], [e.texts[1] for e in examples]
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    got = ours.evaluate(MSEEvaluator(first, second, teacher_model=ours, name=name), str(tmp_path / "ours"))
    expected = reference.evaluate(ReferenceMSE(first, second, teacher_model=reference, name=name),
                                  str(tmp_path / "theirs"))
    assert list(got) == list(expected) and got == pytest.approx(expected, rel=1e-5) and list(got.values())[0] < 0
    for ours_csv, their_csv in zip(*(sorted((tmp_path / side).iterdir()) for side in ("ours", "theirs"))):
        assert ours_csv.name == their_csv.name
        assert ours_csv.read_text().splitlines()[0] == their_csv.read_text().splitlines()[0]
    labels = [int(e.label >= 3) for e in examples]
    for main_score in (None, lambda scores: sum(scores) / len(scores)):
        ours_sequence = SequentialEvaluator(
            [MSEEvaluator(first, second, teacher_model=ours, name=name), BinaryClassificationEvaluator(
                first, second, labels, name=name), EmbeddingSimilarityEvaluator(
                first, second, [e.label for e in examples], name=name)], *[main_score] * bool(main_score))
        their_sequence = ReferenceSequential(
            [ReferenceMSE(first, second, teacher_model=reference, name=name), ReferenceBinary(
                first, second, labels, name=name), ReferenceSimilarity(
                first, second, [e.label for e in examples], name=name)], *[main_score] * bool(main_score))
        got, expected = ours.evaluate(ours_sequence), reference.evaluate(their_sequence)
        assert list(got) == list(expected) and got == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert ours_sequence.primary_metric == their_sequence.primary_metric == "sequential_score"


def reranking_samples(data_dir):
    """SNLI dev premises as queries, their entailed hypotheses as positives and the others as negatives, several of
    each; one sample has no negative (left out by both) and two documents are the same text (equal scores)."""
    from minisbert.data import read_nli
    by_premise = {}
    for example in read_nli(data_dir / "nli" / "snli_1.0_dev.jsonl")[:450]:
        premise, hypothesis = example.texts
        sample = by_premise.setdefault(premise, {"query": premise, "positive": [], "negative": []})
        sample["positive" if example.label == 1 else "negative"].append(hypothesis)
    samples = [sample for sample in by_premise.values() if sample["positive"] and sample["negative"]]
    samples[0]["negative"] = []
    samples[1]["negative"].append(samples[1]["positive"][0])
    samples[2]["positive"] = samples[2]["positive"][0]  # a text, not a list
    return samples


@pytest.mark.parametrize("options", [
    {}, {"name": "snli", "at_k": 2, "batch_size": 5}, {"mrr_at_k": 1, "use_batched_encoding": False, "truncate_dim": 64,
                                                      "similarity_fct": "dot_score", "samples": "dict"}])
def test_reranking_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, tmp_path):
    from sentence_transformers import util as reference_util
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator as ReferenceEvaluator

    from minisbert import util
    from minisbert.evaluation import RerankingEvaluator
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    samples, ours_options, their_options = reranking_samples(data_dir), dict(options), dict(options)
    if options.get("similarity_fct"):
        ours_options["similarity_fct"] = getattr(util, options["similarity_fct"])
        their_options["similarity_fct"] = getattr(reference_util, options["similarity_fct"])
    if ours_options.pop("samples", None) == "dict":
        samples = {f"s{i}": sample for i, sample in enumerate(samples)}
    their_options.pop("samples", None)
    evaluator, reference_evaluator = (RerankingEvaluator(samples, **ours_options),
                                      ReferenceEvaluator(samples, **their_options))
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert list(got) == list(expected) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < min(got.values()) <= max(got.values()) < 1
    assert_same_csv_file(tmp_path, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_ranking_metrics_equal_scikit_learns(seed):
    # scores with many equal values, graded relevance for NDCG, and several k
    from sklearn.metrics import average_precision_score, ndcg_score

    from minisbert.evaluation import average_precision, ndcg_at
    generator = np.random.default_rng(seed)
    n = int(generator.integers(2, 40))
    scores = generator.integers(0, 6, n).astype(np.float32) / np.float32(3)
    relevant = generator.random(n) < 0.3
    relevant[0] = True
    grades = generator.integers(0, 4, n).astype(float)
    assert average_precision(scores, relevant) == pytest.approx(average_precision_score(relevant, scores), abs=1e-12)
    for k in (1, 3, 10, 100):
        for relevance in (relevant.astype(float), grades):
            assert ndcg_at(scores, relevance, k) == pytest.approx(ndcg_score([relevance], [scores], k=k), abs=1e-12)


@pytest.mark.parametrize("options", [{}, {"name": "en-en", "truncate_dim": 32, "batch_size": 9}])
def test_translation_evaluator_as_sentence_transformers(minilm_folder, data_dir, options, tmp_path):
    # STS benchmark dev pairs as sources and "translations": some texts come twice (a match of the same text counts)
    from sentence_transformers.sentence_transformer.evaluation import TranslationEvaluator as ReferenceEvaluator

    from minisbert.data import read_sts_benchmark
    from minisbert.evaluation import TranslationEvaluator
    examples = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-dev.csv")[:250]
    sources, targets = [e.texts[0] for e in examples], [e.texts[1] for e in examples]
    assert len(set(targets)) < len(targets)
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    evaluator, reference_evaluator = (TranslationEvaluator(sources, targets, **options),
                                      ReferenceEvaluator(sources, targets, **options))
    got, expected = evaluate_both(ours, reference, evaluator, reference_evaluator, tmp_path)
    assert list(got) == list(expected) and evaluator.primary_metric == reference_evaluator.primary_metric
    assert got == pytest.approx(expected, abs=1e-9) and 0 < min(got.values()) <= max(got.values()) < 1
    assert_same_csv_file(tmp_path, atol=1e-9)


def test_triplet_evaluator_takes_main_distance_function_as_its_old_name():
    from minisbert.evaluation import TripletEvaluator
    with pytest.warns(DeprecationWarning, match="main_distance_function"):
        evaluator = TripletEvaluator(["a"], ["b"], ["c"], main_distance_function="dot")
    assert evaluator.main_similarity_function == "dot" and evaluator.similarity_fn_names == ["dot"]


EVALUATORS = ("EmbeddingSimilarityEvaluator", "TripletEvaluator", "InformationRetrievalEvaluator",
              "BinaryClassificationEvaluator", "ParaphraseMiningEvaluator", "RerankingEvaluator", "TranslationEvaluator",
              "MSEEvaluator", "SequentialEvaluator")


@pytest.mark.parametrize("name", EVALUATORS)
def test_each_evaluator_takes_sentence_transformers_arguments_in_its_order(name):
    # code moved from sentence-transformers passes them by position or by name: both must mean the same here
    import inspect

    from sentence_transformers.sentence_transformer import evaluation as reference

    from minisbert import evaluation
    assert (list(inspect.signature(getattr(evaluation, name)).parameters)
            == list(inspect.signature(getattr(reference, name)).parameters))


def test_the_evaluators_can_still_be_imported_from_where_they_were_first():
    from minisbert import evaluate, evaluation
    for name in EVALUATORS:
        assert getattr(evaluate, name) is getattr(evaluation, name)


@pytest.mark.parametrize("options, message", [
    ({"main_score_function": "cosin"}, "main_score_function 'cosin' is not one of cosine, dot"),
    ({"ndcg_at_k": [0, 10]}, "every list of k must hold positive integers"),
    ({"map_at_k": []}, "every list of k must hold positive integers")])
def test_information_retrieval_evaluator_refuses_what_it_cannot_rank(options, message):
    from minisbert.evaluation import InformationRetrievalEvaluator
    with pytest.raises(ValueError, match=message):
        InformationRetrievalEvaluator({"q": "a"}, {"d": "b"}, {"q": {"d"}}, **options)


@pytest.mark.parametrize("labels, options, message", [
    ([1, 2], {}, r"labels\[1\] is 2: a pair is labelled 1 \(alike\) or 0"),
    ([1], {}, "must be as long as each other, not 2, 2 and 1"),
    ([1, 0], {"similarity_fn_names": ["cos"]}, "similarity function 'cos' is not one of cosine, dot")])
def test_binary_classification_evaluator_refuses_what_it_cannot_classify(labels, options, message):
    from minisbert.evaluation import BinaryClassificationEvaluator
    with pytest.raises(ValueError, match=message):
        BinaryClassificationEvaluator(["a", "b"], ["c", "d"], labels, **options)

