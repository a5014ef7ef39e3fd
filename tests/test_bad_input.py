"""Bad input gets an error that says what was wrong and where."""

import json
import shutil

import numpy as np
import pytest

from minisbert import SentenceTransformer, cos_sim


@pytest.fixture(scope="module")
def model(minilm_folder):
    return SentenceTransformer(minilm_folder)


def copy_model(source, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    return target


def copy_with_config(source, tmp_path, **changes):
    folder = copy_model(source, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_empty_list_gives_empty_array(model):
    embeddings = model.encode([])
    assert embeddings.shape == (0, 384) and embeddings.dtype == np.float32


def test_non_string_item_names_its_index_and_type(model):
    with pytest.raises(TypeError, match=r"sentences\[2\] is int"):
        model.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"sentences\[0\] is NoneType"):
        model.encode([None])


def test_unknown_precision_and_fp16_on_cpu(model):
    with pytest.raises(ValueError, match="precision 'int3'"):
        model.encode(["a"], precision="int3")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        model.encode(["a"], precision="fp16")


def test_missing_model_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found.*weights.*pip install"):
        SentenceTransformer(str(tmp_path / "no-such-model"))


def test_missing_weights_file_is_named(minilm_folder, tmp_path):
    folder = copy_model(minilm_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights; looked for model\.safetensors"):
        SentenceTransformer(folder)


def test_truncated_safetensors_names_the_file(minilm_folder, tmp_path):
    folder = copy_model(minilm_folder, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read .*truncated or corrupted"):
        SentenceTransformer(folder)


def test_corrupted_safetensors_header_names_the_file(minilm_folder, tmp_path):
    folder = copy_model(minilm_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
        SentenceTransformer(folder)


def test_config_that_does_not_match_the_weights_names_the_tensor(minilm_folder, tmp_path):
    folder = copy_with_config(minilm_folder, tmp_path, intermediate_size=1024)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(1536, 384\)"):
        SentenceTransformer(folder)


def test_fewer_layers_in_config_than_in_weights_is_an_error(minilm_folder, tmp_path):
    folder = copy_with_config(minilm_folder, tmp_path, num_hidden_layers=7)
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layer\.6\."):
        SentenceTransformer(folder)


@pytest.mark.parametrize("key,value,message", [("model_type", "gpt2", "model_type 'gpt2' is not supported"),
                                               ("hidden_act", "swish", "hidden_act 'swish' is not supported")])
def test_unsupported_config_is_a_clear_error(minilm_folder, tmp_path, key, value, message):
    folder = copy_with_config(minilm_folder, tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        SentenceTransformer(folder)


def test_broken_json_names_the_file(minilm_folder, tmp_path):
    folder = copy_model(minilm_folder, tmp_path)
    (folder / "1_Pooling" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: not valid JSON"):
        SentenceTransformer(folder)


def test_tampered_default_model_is_refused(monkeypatch, tmp_path, minilm_folder):
    import minisbert.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 differs"):
        checkpoint.default_model_folder()


def test_cos_sim_dimension_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        cos_sim(np.zeros((2, 3)), np.zeros((4, 5)))
