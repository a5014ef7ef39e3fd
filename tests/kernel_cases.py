"""The fused kernel's cases, shared by the test in Triton's interpreter (test_search.py) and on a GPU (test_cuda.py).

Every row is exactly representable and so is every score, in any order of summation: the kernel, the PyTorch
path and brute force must agree to the bit, ties (ordered by lower id) included.
"""

import torch

from minisbert import topk_kernel
from minisbert.search import _block_top_k, _merge_lowest_id_first
from minisbert.similarity import dot_score

# (queries, corpus rows, dim, k, self_offset, dtype, corpus slices): odd sizes, masks at the tile edges,
# self-exclusion, k from 1 to 128, 1 to 7 slices
CASES = [(70, 300, 40, 5, None, torch.float32, 1), (10, 37, 8, 20, 0, torch.float32, 3),
         (5, 200, 72, 3, None, torch.float16, 2), (9, 130, 24, 16, -3, torch.float16, 1),
         (3, 10, 16, 10, None, torch.float32, 1), (6, 150, 16, 1, None, torch.bfloat16, 4),
         (33, 260, 40, 37, 2, torch.bfloat16, 3), (4, 300, 24, 128, None, torch.float16, 2),
         (7, 140, 16, 128, 0, torch.float32, 1), (65, 129, 72, 64, None, torch.bfloat16, 7)]
# what a GPU adds: the real dimension, many tiles per slice, the kernel's own choice of slices (None)
GPU_CASES = CASES + [(1000, 20_000, 384, k, offset, dtype, None) for dtype in (torch.float32, torch.bfloat16,
                                                                              torch.float16)
                     for k, offset in ((1, None), (10, None), (100, 0), (128, -7))]


def exact_rows(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Entries 0 and +-2^e on 1, 4 or 16 coordinates: norms are powers of two, so every cosine is a small dyadic
    fraction, exact in fp32/bf16/fp16 and in any order of summation. Many rows tie, some repeat."""
    counts = torch.tensor([count for count in (1, 4, 16) if count <= dim])
    rows = torch.zeros(n, dim)
    for row, count in zip(rows, counts[torch.randint(0, len(counts), (n,), generator=generator)].tolist()):
        where = torch.randperm(dim, generator=generator)[:count]
        signs = torch.randint(0, 2, (count,), generator=generator).float() * 2 - 1
        row[where] = signs * 2.0 ** torch.randint(-1, 2, (1,), generator=generator).float()
    return rows


def brute_force(queries, corpus, k: int, self_offset) -> list[list[int]]:
    scores = torch.nn.functional.normalize(queries.float(), dim=1) @ torch.nn.functional.normalize(corpus.float(), dim=1).T
    if self_offset is not None:
        rows = torch.arange(len(queries), device=scores.device)
        inside = (rows + self_offset >= 0) & (rows + self_offset < len(corpus))
        scores[rows[inside], rows[inside] + self_offset] = float("-inf")
    # a stable sort by score keeps lower ids first among equal scores
    return scores.argsort(dim=1, descending=True, stable=True)[:, :k].tolist()


def check(case, device: str = "cpu", seed: int = 0, config: dict | None = None) -> None:
    """The kernel (cosine and dot product) against the PyTorch path and brute force, on `device`, with launch_config's
    settings or `config`'s; AssertionError naming the case on any difference."""
    n_queries, n_corpus, dim, k, self_offset, dtype, n_splits = case
    generator = torch.Generator().manual_seed(seed)
    corpus = exact_rows(n_corpus, dim, generator).to(device=device, dtype=dtype)
    queries = torch.cat([corpus[-2:], exact_rows(n_queries, dim, generator).to(device=device, dtype=dtype)])[:n_queries]
    k = min(k, n_corpus)
    fused = _merge_lowest_id_first(*topk_kernel.cosine_top_k(queries, corpus, k, self_offset, n_splits,
                                                             config=config), k)
    plain = _block_top_k(queries, corpus, k, self_offset, query_chunk_size=4 if n_queries < 100 else 256)
    expected = brute_force(queries, corpus, k, self_offset)
    assert plain[1].tolist() == expected, ("PyTorch path", case)
    assert fused[1].tolist() == expected, ("kernel", case)
    assert torch.equal(fused[0], plain[0]), ("kernel scores", case)
    # the dot product (normalize=False) against the PyTorch path's dot_score: exact on these rows too
    fused_dot = _merge_lowest_id_first(*topk_kernel.cosine_top_k(queries, corpus, k, self_offset, n_splits,
                                                                 normalize=False, config=config), k)
    plain_dot = _block_top_k(queries, corpus, k, self_offset, 4 if n_queries < 100 else 256, dot_score)
    assert fused_dot[1].tolist() == plain_dot[1].tolist() and torch.equal(fused_dot[0], plain_dot[0]), ("dot", case)
