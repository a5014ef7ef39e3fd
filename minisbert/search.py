"""Comparing embeddings: cosine similarity."""

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
