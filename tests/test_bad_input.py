"""Bad input gets an error that says what was wrong and where."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import copy_changing
from safetensors.torch import load_file, save_file

from minisbert import SentenceTransformer, cos_sim


@pytest.fixture(scope="module")
def model(minilm_folder):
    return SentenceTransformer(minilm_folder)


def test_empty_list_gives_empty_array(model):
    embeddings = model.encode([])
    assert embeddings.shape == (0, 384) and embeddings.dtype == np.float32


def test_non_string_item_names_its_index_and_type(model):
    with pytest.raises(TypeError, match=r"sentences\[2\] is int"):
        model.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"sentences\[0\] is NoneType"):
        model.encode([None])


def test_unknown_precision_and_dtype(model):
    with pytest.raises(ValueError, match="Precision 'int3' is not supported, must be one of"):
        model.encode(["a"], precision="int3")
    with pytest.raises(ValueError, match="dtype 'fp8' is not one of"):
        model.encode(["a"], dtype="fp8")


def test_missing_model_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found.*weights.*pip install"):
        SentenceTransformer(str(tmp_path / "no-such-model"))


def test_missing_weights_file_is_named(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights; looked for model\.safetensors"):
        SentenceTransformer(folder)


def test_truncated_safetensors_names_the_file(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read .*truncated or corrupted"):
        SentenceTransformer(folder)


def test_corrupted_safetensors_header_names_the_file(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
        SentenceTransformer(folder)


def test_config_that_does_not_match_the_weights_names_the_tensor(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path, intermediate_size=1024)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(1536, 384\)"):
        SentenceTransformer(folder)


def test_fewer_layers_in_config_than_in_weights_is_an_error(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path, num_hidden_layers=7)
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layer\.6\."):
        SentenceTransformer(folder)


@pytest.mark.parametrize("key,value,message", [("model_type", "gpt2", "model_type 'gpt2' is not supported"),
                                               ("hidden_act", "swish", "hidden_act 'swish' is not supported")])
def test_unsupported_config_is_a_clear_error(minilm_folder, tmp_path, key, value, message):
    folder = copy_changing(minilm_folder, tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        SentenceTransformer(folder)


def test_broken_json_names_the_file(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    (folder / "1_Pooling" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: not valid JSON"):
        SentenceTransformer(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"])
def test_tampered_default_model_file_is_refused(monkeypatch, name):
    import minisbert.checkpoint as checkpoint
    monkeypatch.setitem(checkpoint.DEFAULT_MODEL_SHA256, name, "0" * 64)
    with pytest.raises(ValueError, match=f"{name}: sha256 differs"):
        checkpoint.default_model_folder()


def test_the_default_model_package_is_found_without_running_it():
    code = ("import sys; from minisbert.checkpoint import default_model_folder, DEFAULT_MODEL_PACKAGE; "
            "assert default_model_folder().is_dir(); assert DEFAULT_MODEL_PACKAGE not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_cos_sim_dimension_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        cos_sim(np.zeros((2, 3)), np.zeros((4, 5)))


@pytest.mark.parametrize("changes,message", [
    ({"num_attention_heads": 0}, "num_attention_heads must be an integer of at least 1, not 0"),
    ({"num_attention_heads": "12"}, "num_attention_heads must be an integer of at least 1, not '12'"),
    ({"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a number"),
    ({"pad_token_id": 40000}, "pad_token_id 40000 is outside the vocabulary"),
])
def test_bad_config_values_are_named(minilm_folder, tmp_path, changes, message):
    folder = copy_changing(minilm_folder, tmp_path, **changes)
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        SentenceTransformer(folder)


def edit_json(path, edit):
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("file,edit,message", [
    ("modules.json", lambda m: m[1].pop("path"), r"modules\.json: module 1 has no path"),
    ("sentence_bert_config.json", lambda c: c.update(max_seq_length=0), "max_seq_length must be a positive integer, not 0"),
    ("sentence_bert_config.json", lambda c: c.update(max_seq_length="256"), "max_seq_length must be a positive integer"),
    ("1_Pooling/config.json", lambda c: c.update(word_embedding_dimension=768),
     "word_embedding_dimension 768 does not match the encoder's hidden_size 384"),
    # what sentence-transformers 6 may keep in sentence_bert_config.json and minisbert does not follow
    ("sentence_bert_config.json", lambda c: c.update(processing_kwargs={"text": {"max_length": 16}}),
     r"sentence_bert_config\.json: processing_kwargs \{'text': \{'max_length': 16\}\} is not supported"),
    ("sentence_bert_config.json", lambda c: c.update(query_length=32), "query_length 32 is not supported"),
    ("sentence_bert_config.json", lambda c: c.update(transformer_task="text-generation"),
     "transformer_task 'text-generation' is not supported"),
    ("sentence_bert_config.json", lambda c: c.update(modality_config={"text": {}, "image": {}}),
     r"modality_config \['image', 'text'\] is not supported"),
    ("tokenizer_config.json", lambda c: c.update(truncation_side="middle"),
     r"tokenizer_config\.json: truncation_side must be 'left' or 'right', not 'middle'"),
    ("config_sentence_transformers.json", lambda c: c.update(truncate_dim=0),
     r"config_sentence_transformers\.json: truncate_dim must be a positive integer, not 0"),
])
def test_bad_module_metadata_is_named_at_load(minilm_folder, tmp_path, file, edit, message):
    folder = copy_changing(minilm_folder, tmp_path)
    edit_json(folder / file, edit)
    with pytest.raises(ValueError, match=message):
        SentenceTransformer(folder)


def test_a_dense_module_that_does_not_fit_is_named_at_load(tiny_bert, tmp_path):
    from minisbert.pooling import Dense
    model = SentenceTransformer(tiny_bert)
    model.after.append(Dense(48, 8))
    model.save(tmp_path / "model")
    edit_json(tmp_path / "model" / "2_Dense" / "config.json", lambda c: c.update(in_features=96))
    with pytest.raises(ValueError, match=r"2_Dense/config\.json: in_features 96 does not match the 48 values"):
        SentenceTransformer(tmp_path / "model")


@pytest.mark.parametrize("module,key", [("2_Dense", "module_input_name"), ("3_Normalize", "module_input_name"),
                                        ("2_Dense", "module_output_name")])
def test_a_module_acting_on_other_features_is_named_at_load(tiny_bert, tmp_path, module, key):
    # sentence-transformers' Dense and Normalize may act on the token embeddings (multi-vector models); ours may not
    from minisbert.pooling import Dense, Normalize
    model = SentenceTransformer(tiny_bert)
    model.after.extend([Dense(48, 8), Normalize()])
    model.save(tmp_path / "model")
    (tmp_path / "model" / "3_Normalize" / "config.json").write_text('{"module_input_name": "sentence_embedding"}')
    SentenceTransformer(tmp_path / "model")
    edit_json(tmp_path / "model" / module / "config.json", lambda c: c.update({key: "token_embeddings"}))
    with pytest.raises(ValueError, match=fr"{module}/config\.json: {key} 'token_embeddings' is not supported"):
        SentenceTransformer(tmp_path / "model")


def test_nan_weights_are_refused_at_load_naming_the_tensor(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["encoder.layer.3.output.dense.weight"][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="tensor encoder.layer.3.output.dense.weight holds NaN or infinite values"):
        SentenceTransformer(folder)


def test_a_vocabulary_without_cls_is_named(minilm_folder, tmp_path):
    folder = copy_changing(minilm_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    vocab = (folder / "vocab.txt").read_text().split("\n")
    (folder / "vocab.txt").write_text("\n".join("[NOTCLS]" if token == "[CLS]" else token for token in vocab))
    with pytest.raises(ValueError, match=r"vocab\.txt: the special token \[CLS\] is not in the vocabulary"):
        SentenceTransformer(folder)


def test_a_malicious_pickle_is_refused_as_such(tiny_bert, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = copy_changing(tiny_bert, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"x": Evil()}, folder / "pytorch_model.bin", pickle_module=pickle)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        SentenceTransformer(folder)


@pytest.mark.parametrize("options,message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, not 0"),
    ({"batch_size": 8.0}, "batch_size must be a positive integer, not 8.0"),
    ({"device": "cuda"}, "CUDA is not available on this machine"),
])
def test_bad_encode_options_are_named(model, options, message):
    if torch.cuda.is_available() and "device" in options:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=message):
        model.encode(["a"], **options)


def test_a_lone_surrogate_names_the_text(model):
    with pytest.raises(ValueError, match=r"sentences\[1\] holds a lone surrogate"):
        model.encode(["fine", "broken \ud800 text"])


def test_a_nan_embedding_names_the_text(model, monkeypatch):
    real_embed = SentenceTransformer.embed

    def embed(self, input_ids, attention_mask, *options):
        tokens, out = real_embed(self, input_ids, attention_mask, *options)
        poisoned = input_ids[:, 1:2] == self.tokenizer.tokenizer.token_to_id("poison")
        return tokens, torch.where(poisoned, float("nan"), out)

    monkeypatch.setattr(SentenceTransformer, "embed", embed)
    with pytest.raises(ValueError, match=r"the embedding of sentences\[2\] \('poison'\) holds NaN"):
        model.encode(["a", "b", "poison"])


@pytest.mark.parametrize("changes,message", [
    ({"num_hidden_groups": 4}, "num_hidden_groups 4 is more than num_hidden_layers 3: some groups would never run"),
    ({"embedding_size": 0}, "embedding_size must be an integer of at least 1, not 0"),
    ({"inner_group_num": 1.5}, "inner_group_num must be an integer of at least 1, not 1.5"),
    ({"embedding_size": 24}, r"tensor embeddings\.word_embeddings\.weight has shape \(\d+, 16\) but config\.json asks "
                             r"for \(\d+, 24\)"),
    ({"num_hidden_groups": 1}, r"unexpected tensors: encoder\.albert_layer_groups\.1\.albert_layers\.0\."),
])
def test_bad_albert_config_values_are_named(tiny_albert, tmp_path, changes, message):
    folder = copy_changing(tiny_albert, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):  # each names config.json
        SentenceTransformer(folder)


@pytest.mark.parametrize("changes,message", [
    ({"d_kv": 16}, "d_kv 16 x num_heads 4 is not d_model 48"),
    ({"feed_forward_proj": "gated-gelu-new"}, "feed_forward_proj 'gated-gelu-new' is neither an activation nor"),
    ({"feed_forward_proj": "swish"}, "hidden_act 'swish' is not supported"),
    ({"num_layers": 3}, r"missing tensors: encoder\.block\.2\."),
])
def test_bad_t5_config_values_are_named(tiny_t5, tmp_path, changes, message):
    folder = copy_changing(tiny_t5, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):  # each names config.json
        SentenceTransformer(folder)


@pytest.mark.parametrize("changes,message", [
    ({"embedding_dropout": 0.2}, "embedding_dropout 0.2 differs from mlp_dropout 0.1; minisbert takes one rate"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types must list full_attention, "
                                                               "sliding_attention for each of the 3 layers"),
    ({"layer_types": ["full_attention", "local", "full_attention"]}, "layer_types must list"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}},
     r"rope_type 'yarn' \(full_attention\) is not supported"),
    ({"rope_parameters": {"sliding_attention": {"rope_theta": 0}}}, "the rope_theta of sliding_attention must be a "
                                                                    "number above 0, not 0"),
    ({"layer_types": None, "global_attn_every_n_layers": 0}, "global_attn_every_n_layers must be an integer of at "
                                                              "least 1, not 0"),
    ({"local_attention": 0}, "local_attention must be an integer of at least 1, not 0"),
    ({"norm_bias": "no"}, "norm_bias must be true or false, not 'no'"),
    ({"mlp_bias": True}, r"missing tensors: layers\.0\.mlp\.Wi\.bias"),
    ({"intermediate_size": 32}, r"tensor layers\.0\.mlp\.Wi\.weight has shape \(128, 48\) but config\.json asks "
                                r"for \(64, 48\)"),
])
def test_bad_modernbert_config_values_are_named(tiny_modernbert, tmp_path, changes, message):
    folder = copy_changing(tiny_modernbert, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):  # each names config.json
        SentenceTransformer(folder)


@pytest.mark.parametrize("changes,message", [
    ({"use_sliding_window": True, "sliding_window": 8}, "sliding-window attention .* is not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding-window attention .* is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0}},
     "rope_type 'yarn' is not supported; only 'default' is"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_theta must be a number above 0, not -1"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ({"head_dim": 8}, r"tensor layers\.0\.self_attn\.q_proj\.weight has shape \(64, 32\) but config\.json asks for "
                      r"\(32, 32\)"),
    ({"attention_bias": True}, r"missing tensors: layers\.0\.self_attn\.k_proj\.bias"),
])
def test_bad_qwen3_config_values_are_named(tiny_qwen3, tmp_path, changes, message):
    folder = copy_changing(tiny_qwen3, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):  # each names config.json
        SentenceTransformer(folder)


@pytest.mark.parametrize("changes,message", [
    ({"use_bidirectional_attention": False}, "a Gemma 3 decoder with causal attention is not supported"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping and rope_scaling are not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     "layer_types must list full_attention, sliding_attention for each of the 3 layers"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}}},
     r"rope_type 'linear' \(full_attention\) is not supported"),
    ({"query_pre_attn_scalar": 0}, "query_pre_attn_scalar must be a number above 0, not 0"),
    ({"sliding_window": 0}, "sliding_window must be an integer of at least 1, not 0"),
    ({"head_dim": 8}, r"tensor layers\.0\.self_attn\.q_proj\.weight has shape \(64, 32\) but config\.json asks for "
                      r"\(32, 32\)"),
])
def test_bad_gemma3_config_values_are_named(tiny_gemma3, tmp_path, changes, message):
    folder = copy_changing(tiny_gemma3, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):  # each names config.json
        SentenceTransformer(folder)
