"""minisbert: Sentence-BERT in plain PyTorch."""

from .model import SentenceTransformer
from .search import (cos_sim, dot_score, pairwise_cos_sim, pairwise_dot_score, paraphrase_mining,
                     paraphrase_mining_embeddings, pytorch_cos_sim, semantic_search)

__all__ = ["SentenceTransformer", "cos_sim", "dot_score", "pairwise_cos_sim", "pairwise_dot_score", "paraphrase_mining",
           "paraphrase_mining_embeddings", "pytorch_cos_sim", "semantic_search"]
