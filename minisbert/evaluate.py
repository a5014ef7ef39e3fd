"""Semantic textual similarity as the paper measures it: Spearman and Pearson correlation between the cosine
similarity of each pair's embeddings and its gold score, and Table 1: STS12-16 (each year's subsets concatenated into
one set, the "all" setting the paper used), the STS benchmark test set and SICK-R test set, as correlations x 100.
sentence-transformers' evaluators (EmbeddingSimilarityEvaluator, TripletEvaluator, ...) are in evaluation.py; they
can be imported from here too, where they were first.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from . import data
from .evaluation import (BinaryClassificationEvaluator, EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator,
                         MSEEvaluator, ParaphraseMiningEvaluator, RerankingEvaluator, SequentialEvaluator,
                         TranslationEvaluator, TripletEvaluator)
from .similarity import pairwise_cos_sim

__all__ = ["TABLE_COLUMNS", "format_table", "sts_correlations", "table", "table_sets",
           # where they were first: their home is evaluation.py
           "BinaryClassificationEvaluator", "EmbeddingSimilarityEvaluator", "InformationRetrievalEvaluator",
           "MSEEvaluator", "ParaphraseMiningEvaluator", "RerankingEvaluator", "SequentialEvaluator",
           "TranslationEvaluator", "TripletEvaluator"]

TABLE_COLUMNS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSb", "SICK-R"]


def sts_correlations(model, examples: list[data.Example], batch_size: int = 32, dtype: str = "fp32",
                     show_progress_bar: bool = False) -> dict:
    """{"spearman", "pearson"} between the cosine of each pair's embeddings and its gold score."""
    if len(examples) < 2:
        raise ValueError(f"a correlation needs at least two pairs, got {len(examples)}")
    sentences = data.distinct_sentences(examples)  # each sentence embedded once
    position = {sentence: i for i, sentence in enumerate(sentences)}
    embeddings = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, dtype=dtype,
                              show_progress_bar=show_progress_bar)
    first = torch.tensor([position[example.texts[0]] for example in examples], device=embeddings.device)
    second = torch.tensor([position[example.texts[1]] for example in examples], device=embeddings.device)
    scores = pairwise_cos_sim(embeddings[first], embeddings[second]).cpu().numpy()
    gold = np.array([example.label for example in examples], dtype=np.float64)
    return {"spearman": float(spearmanr(gold, scores)[0]), "pearson": float(pearsonr(gold, scores)[0])}


def _first_existing(*candidates: Path) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def table_sets(data_dir: Path) -> dict[str, list[data.Example] | None]:
    """The evaluation sets of Table 1 found under `data_dir` (None where the files are missing)."""
    data_dir = Path(data_dir)
    sets = {}
    for year in range(12, 17):
        folder = _first_existing(data_dir / "sts12-16" / f"STS{year}", data_dir / f"STS{year}")
        sets[f"STS{year}"] = None if folder is None else [
            example for subset in data.read_sts_year(folder).values() for example in subset]
    stsb = data.find_sts_benchmark("test", data_dir)
    sets["STSb"] = None if stsb is None else data.read_sts_benchmark(stsb)
    sick = _first_existing(data_dir / "sick" / "SICK_test_annotated.txt", data_dir / "SICK_test_annotated.txt")
    sets["SICK-R"] = None if sick is None else data.read_sick(sick)
    return sets


def table(model, data_dir: Path, batch_size: int = 32, dtype: str = "fp32",
          show_progress_bar: bool = False) -> dict[str, float | None]:
    """Spearman x 100 per column of the paper's Table 1 (None for a missing set), and their average as 'Avg.'."""
    row = {}
    for name, examples in table_sets(data_dir).items():
        if show_progress_bar and examples is not None:
            print(name, file=sys.stderr)
        row[name] = None if examples is None else 100 * sts_correlations(
            model, examples, batch_size, dtype, show_progress_bar)["spearman"]
    found = [value for value in row.values() if value is not None]
    row["Avg."] = sum(found) / len(found) if found else None
    return row


def format_table(name: str, row: dict[str, float | None]) -> str:
    columns = TABLE_COLUMNS + ["Avg."]
    width = max(len(name), len("Model"))
    header = f"{'Model':<{width}} " + " ".join(f"{c:>7}" for c in columns)
    values = f"{name:<{width}} " + " ".join(f"{'-' if row[c] is None else f'{row[c]:.2f}':>7}" for c in columns)
    return header + "\n" + values
