"""semantic_search against brute force: full cos_sim, then a sort by (-score, corpus id)."""

import numpy as np
import pytest
import torch

from minisbert.search import cos_sim, semantic_search


def brute_force(queries, corpus, top_k):
    scores = cos_sim(torch.as_tensor(queries).float(), torch.as_tensor(corpus).float())
    return [sorted(range(len(corpus)), key=lambda i: (-row[i].item(), i))[:top_k] for row in scores]


@pytest.mark.parametrize("n_queries,n_corpus,top_k,query_chunk,corpus_chunk",
                         [(7, 50, 5, 3, 11), (5, 13, 20, 100, 4), (1, 1, 1, 1, 1), (9, 64, 64, 4, 64)])
def test_semantic_search_equals_brute_force_with_duplicates_and_ties(n_queries, n_corpus, top_k, query_chunk, corpus_chunk):
    generator = torch.Generator().manual_seed(n_corpus)
    # corpus rows are multiples of +-e_i: eight directions, so many rows tie, across chunk boundaries, and
    # exactly (each score is one query coordinate times 1, whatever the order of summation)
    axes = torch.randint(0, 4, (n_corpus,), generator=generator)
    scale = torch.tensor([-2.0, -1.0, 0.5, 1.0])[torch.randint(0, 4, (n_corpus,), generator=generator)]
    corpus = torch.zeros(n_corpus, 4).index_put_((torch.arange(n_corpus), axes), scale)
    queries = torch.cat([corpus[:2], torch.randn(n_queries, 4, generator=generator)])[:n_queries]
    results = semantic_search(queries, corpus, top_k=top_k, query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk)
    expected = brute_force(queries, corpus, top_k)
    assert [[hit["corpus_id"] for hit in row] for row in results] == expected
    full = cos_sim(queries, corpus)
    for q, row in enumerate(results):
        assert [hit["score"] for hit in row] == pytest.approx([full[q, i].item() for i in expected[q]], abs=1e-6)


def test_semantic_search_on_real_embeddings(minilm_folder):
    from minisbert import SentenceTransformer
    texts = ["A man is playing guitar.", "A man plays a guitar.", "A woman is slicing an onion.", "A cat sleeps.",
             "Someone is cutting an onion.", "A man is playing guitar.", "The kitten is asleep."]
    embeddings = SentenceTransformer(minilm_folder).encode(texts)
    results = semantic_search(embeddings[:3], embeddings, top_k=3, corpus_chunk_size=2)
    # texts 0 and 5 are the same: their scores differ only by rounding, so they may come in either order
    expected = brute_force(embeddings[:3], embeddings, 3)
    assert [sorted(hit["corpus_id"] for hit in row) for row in results] == [sorted(row) for row in expected]
    assert {hit["corpus_id"] for hit in results[0][:2]} == {0, 5}
    full = cos_sim(embeddings[:3], embeddings)
    for q, row in enumerate(results):
        assert [hit["score"] for hit in row] == pytest.approx(sorted(full[q].tolist(), reverse=True)[:3], abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_semantic_search_accepts_low_precision_inputs(dtype):
    corpus = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    results = semantic_search(corpus[:5].to(dtype), corpus.to(dtype), top_k=1, corpus_chunk_size=16)
    assert [row[0]["corpus_id"] for row in results] == [0, 1, 2, 3, 4]


def test_semantic_search_edge_cases():
    corpus = np.eye(3, dtype=np.float32)
    assert semantic_search(corpus, np.zeros((0, 3), dtype=np.float32)) == [[], [], []]
    assert semantic_search(np.zeros((0, 3), dtype=np.float32), corpus) == []
    assert len(semantic_search(corpus, corpus, top_k=10)[0]) == 3
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(2, 4\)"):
        semantic_search(corpus, np.zeros((2, 4)))
