"""The functions of `sentence_transformers.util` that work on embeddings, under the same names:
`from minisbert import util` in place of `from sentence_transformers import util`."""

import numpy as np
import torch
from tqdm.autonotebook import tqdm

from .quantization import quantize_embeddings
from .search import paraphrase_mining, paraphrase_mining_embeddings, semantic_search
from .similarity import (as_matrix, check_finite, check_positive, cos_sim, dot_score, euclidean_sim, manhattan_sim,
                         normalize_embeddings, pairwise_angle_sim, pairwise_cos_sim, pairwise_dot_score,
                         pairwise_euclidean_sim, pairwise_manhattan_sim, pytorch_cos_sim, SimilarityFunction)

__all__ = ["SimilarityFunction", "batch_to_device", "community_detection", "cos_sim", "dot_score", "euclidean_sim", "manhattan_sim",
           "normalize_embeddings", "pairwise_angle_sim", "pairwise_cos_sim", "pairwise_dot_score",
           "pairwise_euclidean_sim", "pairwise_manhattan_sim", "paraphrase_mining", "paraphrase_mining_embeddings",
           "pytorch_cos_sim", "quantize_embeddings", "semantic_search", "truncate_embeddings"]


def batch_to_device(batch: dict, target_device) -> dict:
    """The batch (a dict, such as model.tokenize's) with its tensors moved to `target_device`, in place."""
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value.to(target_device)
    return batch


def truncate_embeddings(embeddings, truncate_dim: int | None):
    """The first `truncate_dim` values of each embedding (all of them for None), an array or tensor as given: a
    Matryoshka model's smaller embeddings."""
    return embeddings[..., :truncate_dim]


def community_detection(embeddings, threshold: float = 0.75, min_community_size: int = 10, batch_size: int = 1024,
                        show_progress_bar: bool = False) -> list[list[int]]:
    """Groups of embeddings whose cosine similarity to a central one is at least `threshold`, as
    sentence-transformers finds them: the largest first, each led by its central point, then the others by
    decreasing similarity to it (equal scores by lower index), no embedding in two groups, none smaller than
    `min_community_size`. Exact; memory holds `batch_size` rows of scores at a time."""
    check_positive(min_community_size=min_community_size, batch_size=batch_size)
    embeddings = as_matrix(embeddings)
    check_finite(embeddings, "embeddings")
    if len(embeddings) < min_community_size or len(embeddings) == 0:
        return []
    embeddings = normalize_embeddings(embeddings.float())
    candidates = []  # (center, members by decreasing score), in order of center
    for start in tqdm(range(0, len(embeddings), batch_size), desc="Finding clusters", disable=not show_progress_bar):
        scores = embeddings[start:start + batch_size] @ embeddings.T
        close = scores >= threshold
        for row in (close.sum(dim=1) >= min_community_size).nonzero()[:, 0].tolist():
            members = close[row].nonzero()[:, 0]
            by_score = scores[row, members].argsort(descending=True, stable=True)  # members are in index order
            candidates.append((start + row, members[by_score].cpu().numpy()))
    candidates.sort(key=lambda candidate: len(candidate[1]), reverse=True)  # stable: equal sizes by center

    communities, used = [], np.zeros(len(embeddings), dtype=bool)
    for center, members in candidates:
        if used[center]:
            continue
        free = members[~used[members]]
        if len(free) >= min_community_size:
            community = [center] + free[free != center].tolist()
            communities.append(community)
            used[community] = True
    return sorted(communities, key=len, reverse=True)
