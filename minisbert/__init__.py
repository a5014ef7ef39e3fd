"""minisbert: Sentence-BERT in plain PyTorch."""

from .model import SentenceTransformer
from .search import cos_sim, pytorch_cos_sim, semantic_search

__all__ = ["SentenceTransformer", "cos_sim", "pytorch_cos_sim", "semantic_search"]
