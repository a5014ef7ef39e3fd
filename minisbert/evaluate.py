"""Semantic textual similarity: Spearman and Pearson correlation between cosine similarity and gold scores.

As sentence-transformers' EmbeddingSimilarityEvaluator (main score: Spearman of the cosine), and as the paper's
Table 1: STS12-16 (each year's subsets concatenated into one set, the "all" setting the paper used), the STS
benchmark test set and SICK-R test set, as correlations x 100. And triplets, as its TripletEvaluator (the paper's
Wikipedia section distinction: how often the anchor is nearer the positive than the negative).
"""

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from . import data
from .similarity import SIMILARITY_FUNCTIONS, pairwise_cos_sim

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


class EmbeddingSimilarityEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: called on a model (or through
    `model.evaluate(evaluator)`), the Pearson and Spearman correlations between the gold `scores` and each similarity
    function's score of the pairs (the model's similarity_fn_name unless `similarity_fn_names` or `main_similarity`
    say otherwise), named as it names them ("{name}_spearman_cosine", and "_max" over several functions), with its
    `primary_metric`; with `output_path`, one row more in the same CSV file. `precision` quantizes the normalized
    embeddings first, both sides of int8/uint8 over one range, binary ones unpacked, as it does."""

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False, write_csv: bool = True, precision: str | None = None,
                 truncate_dim: int | None = None):
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError(f"sentences1, sentences2 and scores must be as long as each other, not {len(sentences1)}, "
                             f"{len(sentences2)} and {len(scores)}")
        main_similarity = getattr(main_similarity, "value", main_similarity)  # its SimilarityFunction enum, too
        for fn_name in [main_similarity] * bool(main_similarity) + list(similarity_fn_names or []):
            if fn_name not in SIMILARITY_FUNCTIONS:
                raise ValueError(f"similarity function {fn_name!r} is not one of {', '.join(SIMILARITY_FUNCTIONS)}")
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), list(scores)
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.precision, self.truncate_dim = write_csv, precision, truncate_dim
        self.main_similarity = main_similarity
        self.similarity_fn_names = list(similarity_fn_names or ([main_similarity] if main_similarity else []))
        self.csv_file = (f"similarity_evaluation{'_' + name if name else ''}{'_' + precision if precision else ''}"
                         "_results.csv")
        self.primary_metric = None

    @classmethod
    def from_input_examples(cls, examples: list, **options) -> "EmbeddingSimilarityEvaluator":
        """From examples with `texts` (two) and a `label` each, as sentence-transformers' InputExample."""
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **options)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        if self.precision in ("int8", "uint8"):  # both sides quantized over one range
            both = self._embed(model, self.sentences1 + self.sentences2)
            first, second = both[:len(self.sentences1)], both[len(self.sentences1):]
        else:
            first, second = self._embed(model, self.sentences1), self._embed(model, self.sentences2)
        if self.precision == "binary":
            first, second = first.astype(np.int16) + 128, second.astype(np.int16) + 128
        if self.precision in ("binary", "ubinary"):
            first, second = (np.unpackbits(e.astype(np.uint8), axis=1) for e in (first, second))
        first, second = torch.from_numpy(first.astype(np.float32)), torch.from_numpy(second.astype(np.float32))
        self.similarity_fn_names = self.similarity_fn_names or [model.similarity_fn_name]
        metrics = {}
        for fn_name in self.similarity_fn_names:
            predicted = SIMILARITY_FUNCTIONS[fn_name][1](first, second).numpy()
            metrics[f"pearson_{fn_name}"] = float(pearsonr(self.scores, predicted)[0])
            metrics[f"spearman_{fn_name}"] = float(spearmanr(self.scores, predicted)[0])
        if output_path is not None and self.write_csv:
            names = [f"{metric}_{fn}" for fn in self.similarity_fn_names for metric in ("pearson", "spearman")]
            append_csv_row(Path(output_path) / self.csv_file, ["epoch", "steps"] + [f"{fn}_{metric}" for fn in
                           self.similarity_fn_names for metric in ("pearson", "spearman")],
                           [epoch, steps] + [metrics[name] for name in names])
        if len(self.similarity_fn_names) > 1:
            for metric in ("pearson", "spearman"):
                metrics[f"{metric}_max"] = max(metrics[f"{metric}_{fn}"] for fn in self.similarity_fn_names)
        if self.main_similarity:
            self.primary_metric = f"spearman_{self.main_similarity}"
        elif len(self.similarity_fn_names) > 1:
            self.primary_metric = "spearman_max"
        else:
            self.primary_metric = f"spearman_{self.similarity_fn_names[0]}"
        if not self.name:
            return metrics
        self.primary_metric = f"{self.name}_{self.primary_metric}"
        return {f"{self.name}_{key}": value for key, value in metrics.items()}

    def _embed(self, model, sentences: list[str]) -> np.ndarray:
        return model.encode(sentences, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                            convert_to_numpy=True, precision=self.precision, normalize_embeddings=bool(self.precision),
                            truncate_dim=self.truncate_dim)



class TripletEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: the share of (anchor, positive,
    negative) triplets whose anchor scores higher with the positive than with the negative, by more than `margin`
    (one for all, or per function), for each similarity function (the model's similarity_fn_name unless
    `similarity_fn_names` or `main_similarity_function` say otherwise; Euclidean and Manhattan as negative distances),
    named as it names them ("{name}_cosine_accuracy", and "max_accuracy" over several), with its `primary_metric` and
    CSV file. Anchors are embedded with the model's query prompt, positives and negatives with its document prompt,
    as it embeds them (encode_query, encode_document)."""

    def __init__(self, anchors: list[str], positives: list[str], negatives: list[str],
                 main_similarity_function: str | None = None, margin: float | dict[str, float] | None = None,
                 name: str = "", batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None):
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError(f"anchors, positives and negatives must be as long as each other, not {len(anchors)}, "
                             f"{len(positives)} and {len(negatives)}")
        main = getattr(main_similarity_function, "value", main_similarity_function)  # its SimilarityFunction enum
        for fn_name in [main] * bool(main) + list(similarity_fn_names or []):
            if fn_name not in SIMILARITY_FUNCTIONS:
                raise ValueError(f"similarity function {fn_name!r} is not one of {', '.join(SIMILARITY_FUNCTIONS)}")
        margins = margin if isinstance(margin, dict) else dict.fromkeys(SIMILARITY_FUNCTIONS, margin or 0)
        if set(margins) - set(SIMILARITY_FUNCTIONS) or any(type(v) not in (int, float) for v in margins.values()):
            raise ValueError(f"margin must be a number or a dict of numbers by similarity function "
                             f"({', '.join(SIMILARITY_FUNCTIONS)}), not {margin!r}")
        self.margin = {**dict.fromkeys(SIMILARITY_FUNCTIONS, 0), **margins}
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim, self.main_similarity_function = write_csv, truncate_dim, main
        self.similarity_fn_names = list(similarity_fn_names or ([main] if main else []))
        self.csv_file = f"triplet_evaluation{'_' + name if name else ''}_results.csv"
        self.primary_metric = None

    @classmethod
    def from_input_examples(cls, examples: list, **options) -> "TripletEvaluator":
        """From examples with `texts` (anchor, positive, negative), as sentence-transformers' InputExample."""
        return cls(*([e.texts[i] for e in examples] for i in range(3)), **options)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        options = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar,
                   "convert_to_tensor": True, "truncate_dim": self.truncate_dim}
        anchors = model.encode_query(self.anchors, **options).cpu()
        positives, negatives = (model.encode_document(texts, **options).cpu()
                                for texts in (self.positives, self.negatives))
        self.similarity_fn_names = self.similarity_fn_names or [model.similarity_fn_name]
        metrics = {}
        for fn_name in self.similarity_fn_names:
            pairwise = SIMILARITY_FUNCTIONS[fn_name][1]
            nearer = pairwise(anchors, positives) > pairwise(anchors, negatives) + self.margin[fn_name]
            metrics[f"{fn_name}_accuracy"] = nearer.float().mean().item()
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file,
                           ["epoch", "steps"] + [f"accuracy_{fn}" for fn in self.similarity_fn_names],
                           [epoch, steps] + list(metrics.values()))
        if len(self.similarity_fn_names) > 1:
            metrics["max_accuracy"] = max(metrics.values())
        if self.main_similarity_function:
            self.primary_metric = f"{self.main_similarity_function}_accuracy"
        else:
            self.primary_metric = ("max_accuracy" if len(self.similarity_fn_names) > 1
                                   else f"{self.similarity_fn_names[0]}_accuracy")
        if not self.name:
            return metrics
        self.primary_metric = f"{self.name}_{self.primary_metric}"
        return {f"{self.name}_{key}": value for key, value in metrics.items()}


def append_csv_row(path: Path, header: list[str], row: list) -> None:
    """One row more in an evaluator's CSV file; the header first where the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "w" if new else "a", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(header)
        writer.writerow(row)


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
