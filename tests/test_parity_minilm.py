"""all-MiniLM-L6-v2, the real checkpoint: the same token ids and embeddings as sentence-transformers."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer as Reference

from minisbert import SentenceTransformer


@pytest.fixture(scope="module")
def models(minilm_folder):
    return SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")


def test_token_ids_and_attention_mask_equal_reference(models, varied_texts):
    ours, reference = models
    expected = reference.preprocess(varied_texts)
    got = ours.tokenizer(varied_texts)
    assert got["input_ids"].shape == expected["input_ids"].shape
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    # the longest text is cut at max_seq_length (256), not at tokenizer.json's 128
    assert got["input_ids"].shape[1] == 256 == ours.max_seq_length


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_embeddings_equal_reference(models, varied_texts, batch_size):
    ours, reference = models
    expected = reference.encode(varied_texts, batch_size=batch_size)
    got = ours.encode(varied_texts, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(varied_texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_output_order_follows_input_in_mixed_length_batches(models, varied_texts):
    ours, _ = models
    shuffled = varied_texts[::-1] + varied_texts[:3]
    one_by_one = np.stack([ours.encode([t])[0] for t in shuffled])
    np.testing.assert_allclose(ours.encode(shuffled, batch_size=5), one_by_one, atol=1e-5, rtol=0)


def test_normalize_embeddings_and_tensor_output(models, varied_texts):
    ours, reference = models
    expected = reference.encode(varied_texts, normalize_embeddings=True, convert_to_tensor=True)
    got = ours.encode(varied_texts, normalize_embeddings=True, convert_to_tensor=True)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_single_string_gives_one_vector(models):
    ours, reference = models
    np.testing.assert_allclose(ours.encode("A single sentence."), reference.encode("A single sentence."), atol=1e-5, rtol=0)


def test_bf16_stays_close_to_fp32(models, varied_texts):
    ours, reference = models
    expected = reference.encode(varied_texts, normalize_embeddings=True)
    got = ours.encode(varied_texts, normalize_embeddings=True, dtype="bf16")
    assert got.dtype == np.float32
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() > 0.99, cosine

def test_bf16_copy_follows_changes_of_the_weights(minilm_folder, varied_texts):
    model = SentenceTransformer(minilm_folder)
    before = model.encode(varied_texts, dtype="bf16")
    with torch.no_grad():
        model.encoder.layers[0].output.bias.add_(0.5)
    changed = model.encode(varied_texts, dtype="bf16")
    assert np.abs(changed - before).max() > 1e-3
    np.testing.assert_allclose(changed, model.encode(varied_texts), atol=0.05)


def test_count_tokens_reports_truncation(models, varied_texts):
    ours, reference = models
    counts = ours.count_tokens(varied_texts)
    expected = [len(ids) for ids in reference.tokenizer(varied_texts)["input_ids"]]
    assert counts == expected
    assert max(counts) > ours.max_seq_length
