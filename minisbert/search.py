"""Comparing embeddings: cosine similarity and exact top-k semantic search in bounded memory."""

import numpy as np
import torch
import torch.nn.functional as F


def _as_matrix(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if isinstance(x, list) else x)
    return x.unsqueeze(0) if x.dim() == 1 else x


def cos_sim(a, b) -> torch.Tensor:
    """Cosine similarity of every row of `a` (N, D) with every row of `b` (M, D): a tensor (N, M)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cos_sim: dimensions differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    a, b = a.to(dtype), b.to(dtype=dtype, device=a.device)
    return F.normalize(a, p=2, dim=-1) @ F.normalize(b, p=2, dim=-1).T


pytorch_cos_sim = cos_sim  # the name in the paper's example


def _top_k_lowest_index_first(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `scores` (Q, C): the k best (scores, columns), descending, equal scores by lower column.

    torch.topk alone may pick any of several equal scores at the k-th place, so those are chosen here.
    """
    kth = scores.topk(k, dim=1).values[:, -1:]  # (Q, 1)
    above = scores > kth
    at = scores == kth
    wanted = above | (at & (at.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
    columns = wanted.nonzero()[:, 1].view(-1, k)  # exactly k per row, in ascending column order
    chosen = scores.gather(1, columns)
    order = chosen.argsort(dim=1, descending=True, stable=True)
    return chosen.gather(1, order), columns.gather(1, order)


def semantic_search(query_embeddings, corpus_embeddings, top_k: int = 10, query_chunk_size: int = 100,
                    corpus_chunk_size: int = 500_000) -> list[list[dict]]:
    """For each query, the `top_k` corpus entries by cosine similarity: [{"corpus_id", "score"}, ...] best first.

    Exact, with equal scores ordered by lower corpus id. Each corpus block is normalized once. Memory holds a
    float32 copy of the queries and one (query_chunk_size, corpus_chunk_size) block of scores, never queries x corpus.
    """
    queries, corpus = _as_matrix(query_embeddings), _as_matrix(corpus_embeddings)
    if queries.shape[-1] != corpus.shape[-1] and len(queries) and len(corpus):
        raise ValueError(f"semantic_search: dimensions differ, queries are {tuple(queries.shape)} "
                         f"and the corpus is {tuple(corpus.shape)}")
    k = min(top_k, len(corpus))
    if len(queries) == 0:
        return []
    queries = F.normalize(queries.float(), dim=-1)
    best_scores = torch.empty(len(queries), 0, device=queries.device)  # (Q, <= k), the best so far
    best_ids = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    for c_start in range(0, len(corpus) if k else 0, corpus_chunk_size):
        corpus_block = F.normalize(corpus[c_start:c_start + corpus_chunk_size].to(queries), dim=-1)
        block_k = min(k, len(corpus_block))
        block_scores, block_ids = [], []
        for q_start in range(0, len(queries), query_chunk_size):
            scores, ids = _top_k_lowest_index_first(queries[q_start:q_start + query_chunk_size] @ corpus_block.T, block_k)
            block_scores.append(scores)
            block_ids.append(ids + c_start)
        # earlier blocks hold lower ids, so a stable sort keeps the lower id first among equal scores
        merged_scores = torch.cat([best_scores, torch.cat(block_scores)], dim=1)
        merged_ids = torch.cat([best_ids, torch.cat(block_ids)], dim=1)
        order = merged_scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        best_scores, best_ids = merged_scores.gather(1, order), merged_ids.gather(1, order)
    return [[{"corpus_id": i, "score": s} for i, s in zip(row_ids, row_scores)]
            for row_scores, row_ids in zip(best_scores.tolist(), best_ids.tolist())]
