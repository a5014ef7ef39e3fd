"""Folders travel both ways: minisbert saves what sentence-transformers loads, and the other way round."""

import json

import numpy as np
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers import models as reference_modules

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


def test_saved_dense_and_pooling_modes_load_in_sentence_transformers(tiny_roberta, tmp_path):
    ours = SentenceTransformer(tiny_roberta)
    ours.pooling.modes = ["cls", "max"]
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
