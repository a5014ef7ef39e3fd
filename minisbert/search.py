"""Exact top-k semantic search and paraphrase mining over embeddings, in bounded memory.

Every search goes through `top_k_scores`: the corpus is taken in blocks and each block in one of two ways,
giving the same results. On CUDA the fused Triton kernel (topk_kernel.py) computes scores and keeps the best
in one pass, so no score matrix is ever stored. Elsewhere PyTorch scores a (query chunk, corpus block) at a
time and selects from it.
"""

import contextlib
import gc

import torch
import torch.nn.functional as F
from tqdm.autonotebook import tqdm

from minisbert.similarity import as_matrix, check_finite, check_positive, common_dtype, cos_sim, dot_score


def kernel():
    """The fused Triton kernel's module, imported on the first search on a GPU: importing Triton takes a second
    and is of no use elsewhere."""
    from minisbert import topk_kernel
    return topk_kernel


def _merge_lowest_id_first(scores: torch.Tensor, ids: torch.Tensor, k: int):
    """The k best of several candidate lists per row, best first, equal scores ordered by lower id."""
    by_id = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), ids.gather(1, by_score)


def _top_k_lowest_index_first(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `scores` (Q, C): the k best (scores, columns), descending, equal scores by lower column.

    torch.topk may pick any of several equal scores at the k-th place; the rows where that happens are redone.
    """
    values, columns = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    # the k-th place is in doubt only where the (k+1)-th best score equals the k-th
    straddling = (values[:, k:k + 1] == values[:, k - 1:k]).any(dim=1).nonzero()[:, 0]
    values, columns, kth = values[:, :k], columns[:, :k], values[:, k - 1:k]
    if len(straddling):
        tied, kth = scores[straddling], kth[straddling]
        above, at = tied > kth, tied == kth
        wanted = above | (at & (at.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
        columns[straddling] = wanted.nonzero()[:, 1].view(-1, k)  # exactly k per row
        values[straddling] = tied.gather(1, columns[straddling])
    return _merge_lowest_id_first(values, columns, k)


def _scorer(corpus_block: torch.Tensor, score_function):
    """A function from a query chunk to its fp32 scores against `corpus_block`; the corpus is prepared once."""
    if score_function is cos_sim:
        corpus_block = F.normalize(corpus_block.float(), dim=-1)
        return lambda queries: F.normalize(queries.float(), dim=-1) @ corpus_block.T
    if score_function is dot_score:
        corpus_block = corpus_block.float()
        return lambda queries: queries.float() @ corpus_block.T
    return lambda queries: torch.as_tensor(score_function(queries, corpus_block)).float()


def _block_top_k(queries, corpus_block, k, self_offset, query_chunk_size, score_function=cos_sim):
    """The PyTorch path of one corpus block: scores of a query chunk at a time, then the exact top k."""
    score = _scorer(corpus_block, score_function)
    best_scores, best_ids = [], []
    for q_start in range(0, len(queries), query_chunk_size):
        scores = score(queries[q_start:q_start + query_chunk_size])
        if self_offset is not None:
            rows = torch.arange(len(scores), device=scores.device)
            columns = rows + q_start + self_offset
            inside = (columns >= 0) & (columns < len(corpus_block))
            scores[rows[inside], columns[inside]] = float("-inf")
        chunk_scores, chunk_ids = _top_k_lowest_index_first(scores, k)
        best_scores.append(chunk_scores)
        best_ids.append(chunk_ids)
    return torch.cat(best_scores), torch.cat(best_ids)


def top_k_scores(queries, corpus, k: int, score_function=cos_sim, exclude_self: bool = False,
                 query_chunk_size: int = 100, corpus_chunk_size: int = 500_000,
                 query_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the k corpus rows of highest score: (scores (Q, k) float32, ids (Q, k) int64).

    Best first, equal scores by lower id. On CUDA, cos_sim and dot_score go through the fused kernel; any other
    `score_function(queries, corpus) -> (Q, C)` through PyTorch. With `exclude_self`, query i (counted from
    `query_offset`) is the same sentence as corpus row query_offset + i and is never its own match. Memory: one
    corpus block, and on the PyTorch path one (query_chunk_size, corpus_chunk_size) block of scores.
    """
    queries, corpus = as_matrix(queries), as_matrix(corpus)
    dtype = common_dtype(queries, corpus)
    queries = queries.to(dtype)
    best_scores = torch.empty(len(queries), 0, device=queries.device)
    best_ids = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    fused = score_function in (cos_sim, dot_score)
    for c_start in range(0, len(corpus) if k and len(queries) else 0, corpus_chunk_size):
        block = corpus[c_start:c_start + corpus_chunk_size].to(device=queries.device, dtype=dtype)
        block_k = min(k, len(block))
        self_offset = query_offset - c_start if exclude_self else None
        scores = None
        if fused and queries.is_cuda and kernel().available(queries, block_k):
            try:
                scores, ids = kernel().cosine_top_k(queries, block, block_k, self_offset,
                                                    normalize=score_function is cos_sim)
            except Exception as error:  # a compile or launch failure: same results from the PyTorch path
                kernel().disable(error)
        if scores is None:
            scores, ids = _block_top_k(queries, block, block_k, self_offset, query_chunk_size, score_function)
        best_scores, best_ids = _merge_lowest_id_first(
            torch.cat([best_scores, scores], dim=1), torch.cat([best_ids, ids + c_start], dim=1), k)
    return best_scores, best_ids


def semantic_search(query_embeddings, corpus_embeddings, query_chunk_size: int = 100, corpus_chunk_size: int = 500_000,
                    top_k: int = 10, score_function=cos_sim) -> list[list[dict]]:
    """For each query, the `top_k` corpus entries of highest score: [{"corpus_id", "score"}, ...] best first.

    sentence-transformers' arguments, in its order. Exact, with equal scores ordered by lower corpus id; never
    holds a queries x corpus matrix.
    """
    check_positive(top_k=top_k, query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size)
    queries, corpus = as_matrix(query_embeddings, "query_embeddings"), as_matrix(corpus_embeddings, "corpus_embeddings")
    check_finite(queries, "query_embeddings")
    check_finite(corpus, "corpus_embeddings")
    if queries.shape[-1] != corpus.shape[-1] and len(queries) and len(corpus):
        raise ValueError(f"semantic_search: dimensions differ, queries are {tuple(queries.shape)} "
                         f"and the corpus is {tuple(corpus.shape)}")
    if len(queries) == 0:
        return []
    # a GPU searches the queries a few thousand at a time, so that the host turns one chunk's hits into dicts (as
    # long as the search itself, for 10,000 queries) while the GPU searches the next
    chunk, results, previous = _overlap_chunk(queries), [], None
    for start in range(0, len(queries), chunk):
        found = _Hits(*top_k_scores(queries[start:start + chunk], corpus, min(top_k, len(corpus)), score_function,
                                    query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size))
        results += previous.as_dicts() if previous else []
        previous = found
    return results + previous.as_dicts()


OVERLAP_QUERIES = 2048  # queries per search on a GPU: enough to fill it, few enough to overlap the host's work


def _overlap_chunk(queries: torch.Tensor) -> int:
    return OVERLAP_QUERIES if queries.is_cuda else len(queries)


class _Hits:
    """(scores, ids) on their way to the host: the copy is queued without waiting, and read once it is done."""

    def __init__(self, scores: torch.Tensor, ids: torch.Tensor):
        # non_blocking from a GPU copies into pinned memory; the event marks the copy's end
        self.scores, self.ids = scores.to("cpu", non_blocking=True), ids.to("cpu", non_blocking=True)
        self.copied = torch.cuda.Event() if scores.device.type == "cuda" else None
        if self.copied is not None:
            self.copied.record()

    def as_dicts(self) -> list[list[dict]]:
        if self.copied is not None:
            self.copied.synchronize()
        rows, k = self.ids.shape
        with _no_garbage_collection():  # one flat pass, then rows: faster than a comprehension per row
            hits = [{"corpus_id": i, "score": s} for i, s in zip(self.ids.reshape(-1).tolist(),
                                                                  self.scores.reshape(-1).tolist())]
            return [hits[row * k:(row + 1) * k] for row in range(rows)]


@contextlib.contextmanager
def _no_garbage_collection():
    """Python's cycle collector off while results are built: many small new containers (10,000 queries' top 10 are
    100,000 dicts) set off collections that find no cycle, and full ones scan every object the program holds, so
    they can cost several times the building itself. As the collector was, afterwards."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _keep_best_pairs(scores: torch.Tensor, keys: torch.Tensor, max_pairs: int):
    """Each pair once (its first score), then the `max_pairs` best: score descending, equal scores by key."""
    keys, order = keys.sort(stable=True)
    scores = scores[order]
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    scores, keys = scores[first], keys[first]
    best = scores.argsort(descending=True, stable=True)[:max_pairs]
    return scores[best], keys[best]


def paraphrase_mining_embeddings(embeddings, query_chunk_size: int = 5000, corpus_chunk_size: int = 100_000,
                                 max_pairs: int = 500_000, top_k: int | None = 100, score_function=cos_sim, *,
                                 threshold: float | None = None, show_progress_bar: bool = False) -> list[list]:
    """The most similar pairs among `embeddings`: [[score, i, j], ...] with i < j, highest score first.

    sentence-transformers' arguments, in its order (`score_function` is assumed symmetric). As there, a pair is
    a candidate when j is among the `top_k` best of i or i among those of j; the `max_pairs` best candidates are
    returned. minisbert adds `threshold`: only pairs scoring at least that; with `top_k=None` as well, every such
    pair (up to `max_pairs`). Equal scores come in (i, j) order. Memory holds the candidates of one query chunk
    and the best pairs so far, never the N x N matrix.
    """
    check_positive(top_k=top_k, max_pairs=max_pairs, query_chunk_size=query_chunk_size,
                   corpus_chunk_size=corpus_chunk_size)
    embeddings = as_matrix(embeddings)
    check_finite(embeddings, "embeddings")
    n = len(embeddings)
    if top_k is None and threshold is None:
        raise ValueError("paraphrase_mining: top_k=None (every pair) needs a threshold")
    best_scores = torch.empty(0, device=embeddings.device)
    best_keys = torch.empty(0, dtype=torch.long, device=embeddings.device)
    for q_start in tqdm(range(0, n if n > 1 else 0, query_chunk_size), desc="Mining", disable=not show_progress_bar):
        queries = embeddings[q_start:q_start + query_chunk_size]
        i = torch.arange(q_start, q_start + len(queries), device=embeddings.device)
        if top_k is None:  # every pair above the threshold: scan the upper triangle block by block
            for c_start in range(q_start, n, corpus_chunk_size):
                scores = _scorer(embeddings[c_start:c_start + corpus_chunk_size], score_function)(queries)
                j = torch.arange(c_start, c_start + scores.shape[1], device=scores.device)
                rows, columns = ((scores >= threshold) & (j[None, :] > i[:, None])).nonzero(as_tuple=True)
                best_scores, best_keys = _keep_best_pairs(torch.cat([best_scores, scores[rows, columns]]),
                                                          torch.cat([best_keys, i[rows] * n + j[columns]]), max_pairs)
            continue
        scores, j = top_k_scores(queries, embeddings, min(top_k, n - 1), score_function, exclude_self=True,
                                 corpus_chunk_size=corpus_chunk_size, query_offset=q_start)
        i = i[:, None].expand_as(j)
        keep = scores >= threshold if threshold is not None else torch.ones_like(scores, dtype=torch.bool)
        keys = torch.minimum(i, j) * n + torch.maximum(i, j)
        best_scores, best_keys = _keep_best_pairs(torch.cat([best_scores, scores[keep]]),
                                                  torch.cat([best_keys, keys[keep]]), max_pairs)
    columns = best_scores.tolist(), (best_keys // n).tolist(), (best_keys % n).tolist()
    with _no_garbage_collection():
        return [[score, i, j] for score, i, j in zip(*columns)]


def paraphrase_mining(model, sentences: list[str], show_progress_bar: bool = False, batch_size: int = 32,
                      query_chunk_size: int = 5000, corpus_chunk_size: int = 100_000, max_pairs: int = 500_000,
                      top_k: int | None = 100, score_function=cos_sim, truncate_dim: int | None = None,
                      prompt_name: str | None = None, prompt: str | None = None, *,
                      threshold: float | None = None) -> list[list]:
    """The most similar pairs of `sentences`, embedded by `model`: [[score, i, j], ...], highest score first.

    sentence-transformers' arguments, in its order; the mining options are those of paraphrase_mining_embeddings.
    """
    embeddings = model.encode(sentences, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                              show_progress_bar=show_progress_bar, convert_to_tensor=True, truncate_dim=truncate_dim)
    return paraphrase_mining_embeddings(embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k,
                                        score_function, threshold=threshold, show_progress_bar=show_progress_bar)
