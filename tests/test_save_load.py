"""Folders travel both ways: minisbert saves what sentence-transformers loads, and the other way round."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers.sentence_transformer import modules as reference_modules

from minisbert import SentenceTransformer
from minisbert.pooling import Dense, Normalize

TEXTS = ["A man is playing guitar.", "", "Ça va très bien 🙂", "word " * 300]


def test_minisbert_folder_loads_in_sentence_transformers(minilm_folder, tmp_path):
    ours = SentenceTransformer(minilm_folder)
    ours.save(tmp_path / "saved")
    reference = Reference(str(tmp_path / "saved"), device="cpu")
    assert reference.max_seq_length == ours.max_seq_length == 256
    np.testing.assert_allclose(reference.encode(TEXTS), ours.encode(TEXTS), atol=1e-5, rtol=0)
    again = SentenceTransformer(tmp_path / "saved")
    np.testing.assert_allclose(again.encode(TEXTS), ours.encode(TEXTS), atol=0, rtol=0)


@pytest.mark.parametrize("modes", [["cls", "max"], ["max", "cls"]])  # the second order needs the new config format
def test_saved_dense_and_pooling_modes_load_in_sentence_transformers(modes, tiny_roberta, tmp_path):
    ours = SentenceTransformer(tiny_roberta)
    ours.pooling.modes = modes
    ours.after.extend([Dense(ours.pooling.output_dimension, 16), Normalize()])
    ours.save(tmp_path / "saved")
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    reference = Reference(str(tmp_path / "saved"), device="cpu")
    assert reference.get_embedding_dimension() == 16
    np.testing.assert_allclose(reference.encode(TEXTS), ours.encode(TEXTS), atol=1e-5, rtol=0)


def test_sentence_transformers_folder_loads_in_minisbert(tiny_bert, tmp_path):
    transformer = reference_modules.Transformer(str(tiny_bert), max_seq_length=32)
    reference = Reference(modules=[transformer, reference_modules.Pooling(48, pooling_mode="max"),
                                   reference_modules.Dense(48, 8), reference_modules.Normalize()], device="cpu")
    reference.save(str(tmp_path / "st"))
    ours = SentenceTransformer(tmp_path / "st")
    assert ours.max_seq_length == 32
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)


def test_dense_with_a_residual_travels_both_ways(tiny_bert, tmp_path):
    # sentence-transformers 5.7's use_residual: the input added to the output, through a product of its own where
    # the sizes differ; one Dense of each kind, saved by sentence-transformers, loaded, saved again, loaded there
    transformer = reference_modules.Transformer(str(tiny_bert), max_seq_length=32)
    torch.manual_seed(3)
    same = reference_modules.Dense(48, 48, use_residual=True)
    fewer = reference_modules.Dense(48, 8, activation_function=torch.nn.GELU(), use_residual=True)
    reference = Reference(modules=[transformer, reference_modules.Pooling(48), same, fewer], device="cpu")
    reference.save(str(tmp_path / "st"))
    ours = SentenceTransformer(tmp_path / "st")
    np.testing.assert_allclose(ours.encode(TEXTS), reference.encode(TEXTS), atol=1e-5, rtol=0)
    without = ours.encode(TEXTS)  # the residual counts: dropping it changes the embeddings
    ours.after[1].use_residual = False
    assert np.abs(ours.encode(TEXTS) - without).max() > 1e-2
    ours.after[1].use_residual = True
    ours.save(tmp_path / "saved")
    configs = [json.loads((tmp_path / "saved" / name / "config.json").read_text()) for name in ("2_Dense", "3_Dense")]
    assert [config.get("use_residual") for config in configs] == [True, True]
    np.testing.assert_allclose(Reference(str(tmp_path / "saved"), device="cpu").encode(TEXTS), without,
                               atol=1e-5, rtol=0)
    # built here, the same random weights as sentence-transformers' from the same seed, and no key when False
    torch.manual_seed(3)
    built = [Dense(48, 48, use_residual=True), Dense(48, 8, activation_function=torch.nn.GELU(), use_residual=True)]
    for mine, theirs in zip(built, [same, fewer]):
        assert mine.state_dict().keys() == theirs.state_dict().keys()
        for name, tensor in mine.state_dict().items():
            torch.testing.assert_close(tensor, theirs.state_dict()[name], atol=0, rtol=0)
    assert "use_residual" not in Dense(48, 8).config()


def test_normalize_passes_on_features_without_a_sentence_embedding():
    # as sentence-transformers' Normalize does (Dense, there and here, needs its input)
    features = {"token_embeddings": torch.ones(2, 3, 4)}
    assert Normalize()(features) is features and list(features) == ["token_embeddings"]
    assert reference_modules.Normalize()(dict(features)).keys() == features.keys()
    with pytest.raises(KeyError, match="sentence_embedding"):
        Dense(4, 2)(features)


def test_a_model_built_from_its_parts_saves_a_folder_sentence_transformers_reads(minilm_folder, tmp_path):
    from tokenizers import Tokenizer as FastTokenizer

    from minisbert.encoder import Encoder, EncoderConfig
    from minisbert.tokenize import Tokenizer

    torch.manual_seed(0)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    tokenizer = Tokenizer(FastTokenizer.from_file(str(minilm_folder / "tokenizer.json")), max_seq_length=48,
                          pad_token_id=0)
    ours = SentenceTransformer(encoder=Encoder(config), tokenizer=tokenizer, after=[Dense(32, 8), Normalize()])
    assert ours.encoder.layers[0].query.weight.std().item() == pytest.approx(0.02, rel=0.1)  # BERT's initialisation
    ours.save(tmp_path / "random")
    reference = Reference(str(tmp_path / "random"), device="cpu")
    assert reference.max_seq_length == 48
    np.testing.assert_allclose(reference.encode(TEXTS), ours.encode(TEXTS), atol=1e-5, rtol=0)
