"""Similarity of embeddings: cosine and dot product, all pairs or row by row. Torch only.

Every function takes numpy arrays or tensors, one row (1-D) or many (2-D), in fp32, bf16 or fp16; bad input (text,
3-D arrays, mismatched dimensions) is an error that says which argument.
"""

from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F


def as_matrix(x, name: str = "embeddings") -> torch.Tensor:
    """A 1-D or 2-D array or tensor of numbers as a (rows, dim) tensor; anything else is a clear error."""
    if isinstance(x, str) or (isinstance(x, (list, tuple)) and any(isinstance(item, str) for item in x)):
        raise TypeError(f"{name}: expected embeddings (numbers), got text; embed it first with model.encode()")
    try:
        x = torch.as_tensor(np.asarray(x) if isinstance(x, (list, tuple)) else x)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name}: expected a numpy array or tensor of numbers ({error})") from None
    if x.dim() not in (1, 2) or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"{name}: expected a 1-D or 2-D array of numbers, got shape {tuple(x.shape)} of {x.dtype}")
    return x.unsqueeze(0) if x.dim() == 1 else x


def check_finite(x: torch.Tensor, name: str) -> None:
    """Search refuses NaN and infinite values: a NaN score would rank first for every query."""
    bad = (~torch.isfinite(x)).any(dim=1).nonzero()
    if len(bad):
        raise ValueError(f"{name}: row {bad[0, 0].item()} holds NaN or infinite values "
                         f"({len(bad)} row{'s' if len(bad) > 1 else ''} in all)")


def check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


def common_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype if dtype.is_floating_point else torch.float32


def _same_dtype(a, b, name: str, pairwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_matrix(a, f"{name}: a"), as_matrix(b, f"{name}: b")
    if a.shape[-1] != b.shape[-1] or (pairwise and a.shape != b.shape):
        raise ValueError(f"{name}: shapes do not match, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    dtype = common_dtype(a, b)
    return a.to(dtype), b.to(dtype=dtype, device=a.device)


def cos_sim(a, b) -> torch.Tensor:
    """Cosine similarity of every row of `a` (N, D) with every row of `b` (M, D): a tensor (N, M)."""
    a, b = _same_dtype(a, b, "cos_sim")
    return F.normalize(a, p=2, dim=-1) @ F.normalize(b, p=2, dim=-1).T


def dot_score(a, b) -> torch.Tensor:
    """Dot product of every row of `a` (N, D) with every row of `b` (M, D): a tensor (N, M)."""
    a, b = _same_dtype(a, b, "dot_score")
    return a @ b.T


def pairwise_cos_sim(a, b) -> torch.Tensor:
    """Cosine similarity of a[i] with b[i], for each i: a tensor (N,)."""
    a, b = _same_dtype(a, b, "pairwise_cos_sim", pairwise=True)
    return (F.normalize(a, p=2, dim=-1) * F.normalize(b, p=2, dim=-1)).sum(dim=-1)


def pairwise_dot_score(a, b) -> torch.Tensor:
    """Dot product of a[i] with b[i], for each i: a tensor (N,)."""
    a, b = _same_dtype(a, b, "pairwise_dot_score", pairwise=True)
    return (a * b).sum(dim=-1)


pytorch_cos_sim = cos_sim  # the name in the paper's example


def euclidean_sim(a, b) -> torch.Tensor:
    """Minus the Euclidean distance of every row of `a` (N, D) to every row of `b` (M, D): a tensor (N, M)."""
    a, b = _same_dtype(a, b, "euclidean_sim")
    return -torch.cdist(a, b, p=2.0)


def manhattan_sim(a, b) -> torch.Tensor:
    """Minus the Manhattan (L1) distance of every row of `a` to every row of `b`: a tensor (N, M)."""
    a, b = _same_dtype(a, b, "manhattan_sim")
    return -torch.cdist(a, b, p=1.0)


def pairwise_euclidean_sim(a, b) -> torch.Tensor:
    """Minus the Euclidean distance of a[i] to b[i], for each i: a tensor (N,)."""
    a, b = _same_dtype(a, b, "pairwise_euclidean_sim", pairwise=True)
    return -torch.linalg.vector_norm(a - b, dim=-1)


def pairwise_manhattan_sim(a, b) -> torch.Tensor:
    """Minus the Manhattan distance of a[i] to b[i], for each i: a tensor (N,)."""
    a, b = _same_dtype(a, b, "pairwise_manhattan_sim", pairwise=True)
    return -(a - b).abs().sum(dim=-1)


def pairwise_angle_sim(a, b) -> torch.Tensor:
    """AnglE's similarity of a[i] and b[i] (Li & Li, 2023; sentence-transformers' AnglELoss): each row, unit length,
    read as a complex vector, its first half the real parts and its second half the imaginary ones (an odd width
    padded with a zero); the score is |Re + Im| of a's conjugate product with b, the cosine plus the sine term: (N,)."""
    a, b = _same_dtype(a, b, "pairwise_angle_sim", pairwise=True)
    a, b = F.normalize(a, p=2, dim=-1), F.normalize(b, p=2, dim=-1)
    if a.shape[-1] % 2:
        a, b = F.pad(a, (0, 1)), F.pad(b, (0, 1))
    a_real, a_imaginary = a.chunk(2, dim=-1)
    b_real, b_imaginary = b.chunk(2, dim=-1)
    sines = (a_imaginary * b_real - a_real * b_imaginary).sum(dim=-1)
    return ((a * b).sum(dim=-1) + sines).abs()


def normalize_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit length."""
    return F.normalize(torch.as_tensor(embeddings), p=2, dim=-1)


# similarity_fn_name -> (all pairs, row by row), as sentence-transformers names them
SIMILARITY_FUNCTIONS = {"cosine": (cos_sim, pairwise_cos_sim), "dot": (dot_score, pairwise_dot_score),
                        "euclidean": (euclidean_sim, pairwise_euclidean_sim),
                        "manhattan": (manhattan_sim, pairwise_manhattan_sim)}


class SimilarityFunction(Enum):
    """The names of SIMILARITY_FUNCTIONS as sentence-transformers' enum has them: wherever a similarity function is
    named (similarity_fn_name, the evaluators), a member of this enum or of sentence-transformers' may stand for its
    name."""
    COSINE = "cosine"
    DOT_PRODUCT = "dot"
    DOT = "dot"
    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"

    @staticmethod
    def to_similarity_fn(name):
        """The function scoring every row of one set against every row of another."""
        return SIMILARITY_FUNCTIONS[similarity_name(name)][0]

    @staticmethod
    def to_similarity_pairwise_fn(name):
        """The function scoring row i of one set against row i of the other."""
        return SIMILARITY_FUNCTIONS[similarity_name(name)][1]

    @staticmethod
    def possible_values() -> list[str]:
        return [member.value for member in SimilarityFunction]


def similarity_name(name, what: str = "similarity function") -> str:
    """A similarity function's name, given as a string or as an enum member (ours or sentence-transformers');
    a name not in SIMILARITY_FUNCTIONS is an error that says which are (sentence-transformers' multi-vector
    "maxsim" is not here)."""
    name = name.value if isinstance(name, Enum) else name
    if name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"{what} {name!r} is not one of {', '.join(SIMILARITY_FUNCTIONS)}")
    return name
