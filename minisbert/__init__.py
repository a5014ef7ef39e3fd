"""minisbert: Sentence-BERT in plain PyTorch."""

from . import models, util
from .data import InputExample
from .model import SentenceTransformer
from .quantization import quantize_embeddings
from .search import paraphrase_mining, paraphrase_mining_embeddings, semantic_search
from .similarity import SimilarityFunction, cos_sim, dot_score, pairwise_cos_sim, pairwise_dot_score, pytorch_cos_sim

__all__ = ["InputExample", "SentenceTransformer", "SimilarityFunction", "cos_sim", "dot_score", "models",
           "pairwise_cos_sim", "pairwise_dot_score", "paraphrase_mining", "paraphrase_mining_embeddings", "pytorch_cos_sim", "quantize_embeddings",
           "semantic_search", "util"]
