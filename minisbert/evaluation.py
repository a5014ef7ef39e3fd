"""sentence-transformers' evaluators, for code moved from it: each called on a model (or through
`model.evaluate(evaluator, output_path)`) returns its metrics under the names sentence-transformers gives them, sets
its `primary_metric`, and with `output_path` writes one row more to the same CSV file.

EmbeddingSimilarityEvaluator: Pearson and Spearman correlations between gold scores and each pair's similarity (the
paper's STS evaluation). TripletEvaluator: how often the anchor is nearer the positive than the negative (the
paper's Wikipedia section distinction). InformationRetrievalEvaluator: accuracy, precision, recall, MRR, NDCG and
MAP of each query's top hits in a corpus. BinaryClassificationEvaluator: pairs labelled alike or not, accuracy and F1
at the best thresholds, average precision. ParaphraseMiningEvaluator: mined pairs against known duplicates.
RerankingEvaluator: each query's positives ranked among its negatives (MAP, MRR, NDCG). TranslationEvaluator:
how often a sentence's nearest translation is its own. MSEEvaluator: a teacher's embeddings against the model's
(distillation). LabelAccuracyEvaluator: how often a SoftmaxLoss's classifier gives the label (an NLI
classifier's accuracy). SequentialEvaluator: several in turn.
"""

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from .search import paraphrase_mining
from .similarity import SIMILARITY_FUNCTIONS, SimilarityFunction, cos_sim, similarity_name
from .util import batch_to_device

# SimilarityFunction is imported from here too in code written for sentence-transformers, whose module exports it
__all__ = ["BinaryClassificationEvaluator", "EmbeddingSimilarityEvaluator", "InformationRetrievalEvaluator",
           "LabelAccuracyEvaluator", "MSEEvaluator", "ParaphraseMiningEvaluator", "RerankingEvaluator",
           "SequentialEvaluator", "SimilarityFunction", "TranslationEvaluator", "TripletEvaluator"]


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
        main_similarity = main_similarity and similarity_name(main_similarity)
        similarity_fn_names = [similarity_name(fn_name) for fn_name in similarity_fn_names or []]
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
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None,
                 main_distance_function: str | None = None):
        if main_distance_function is not None:
            warnings.warn("TripletEvaluator's main_distance_function is main_similarity_function's old name, as in "
                          "sentence-transformers", DeprecationWarning, stacklevel=2)
            main_similarity_function = main_similarity_function or main_distance_function
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError(f"anchors, positives and negatives must be as long as each other, not {len(anchors)}, "
                             f"{len(positives)} and {len(negatives)}")
        main = main_similarity_function and similarity_name(main_similarity_function)
        similarity_fn_names = [similarity_name(fn_name) for fn_name in similarity_fn_names or []]
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


class InformationRetrievalEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: each query (those with a relevant
    document) against the whole corpus, embedded through encode_query and encode_document (their prompts, or those
    named here), corpus_chunk_size documents at a time; the top hits ranked by score, equal scores by corpus id, and
    from them accuracy, precision and recall at each k of their lists, MRR, NDCG (binary relevance) and MAP. Per
    score function: the model's similarity unless `score_functions` ({name: function of two embedding matrices})
    says otherwise; named, ranked and written to CSV as it does, with its `primary_metric` (NDCG at the largest k of
    `main_score_function`, or of the best function)."""

    def __init__(self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]],
                 corpus_chunk_size: int = 50000, mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,),
                 accuracy_at_k: list[int] = (1, 3, 5, 10), precision_recall_at_k: list[int] = (1, 3, 5, 10),
                 map_at_k: list[int] = (100,), show_progress_bar: bool = False, batch_size: int = 32, name: str = "",
                 write_csv: bool = True, truncate_dim: int | None = None, score_functions: dict | None = None,
                 main_score_function: str | None = None, query_prompt: str | None = None,
                 query_prompt_name: str | None = None, corpus_prompt: str | None = None,
                 corpus_prompt_name: str | None = None, write_predictions: bool = False):
        self.queries_ids = [qid for qid in queries if relevant_docs.get(qid)]  # those with a relevant document
        self.queries = [queries[qid] for qid in self.queries_ids]
        self.corpus_ids = list(corpus)
        self.corpus = [corpus[cid] for cid in self.corpus_ids]
        self.relevant_docs, self.corpus_chunk_size = relevant_docs, corpus_chunk_size
        self.at_k = {"accuracy": list(accuracy_at_k), "precision_recall": list(precision_recall_at_k),
                     "mrr": list(mrr_at_k), "ndcg": list(ndcg_at_k), "map": list(map_at_k)}
        if not all(self.at_k.values()) or any(type(k) is not int or k < 1 for ks in self.at_k.values() for k in ks):
            raise ValueError(f"every list of k must hold positive integers, not {self.at_k}")
        self.score_functions = score_functions
        self.main_score_function = main_score_function and similarity_name(main_score_function,
                                                                            "main_score_function")
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.query_prompt, self.query_prompt_name = query_prompt, query_prompt_name
        self.corpus_prompt, self.corpus_prompt_name = corpus_prompt, corpus_prompt_name
        self.csv_file = f"Information-Retrieval_evaluation{'_' + name if name else ''}_results.csv"
        self.write_predictions = write_predictions
        self.predictions_file = f"Information-Retrieval_evaluation{'_' + name if name else ''}_predictions.jsonl"
        self.primary_metric = None

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        functions = self.score_functions or {model.similarity_fn_name: model.similarity}
        options = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar,
                   "convert_to_tensor": True, "truncate_dim": self.truncate_dim}
        queries = model.encode_query(self.queries, prompt_name=self.query_prompt_name, prompt=self.query_prompt,
                                     **options)
        top = max(k for ks in self.at_k.values() for k in ks)
        hits = {name: [[] for _ in self.queries] for name in functions}  # the best (score, corpus id) of each query
        id_ranks = {cid: rank for rank, cid in enumerate(sorted(self.corpus_ids))}  # ties go to the smaller id
        n = len(self.corpus_ids)
        for start in range(0, n, self.corpus_chunk_size):
            documents = model.encode_document(self.corpus[start:start + self.corpus_chunk_size],
                                              prompt_name=self.corpus_prompt_name, prompt=self.corpus_prompt, **options)
            ids = self.corpus_ids[start:start + self.corpus_chunk_size]
            ranks = torch.tensor([id_ranks[cid] for cid in ids])
            for name, function in functions.items():
                scores = function(queries, documents).float().cpu()  # (queries, documents)
                k = min(top, scores.shape[1])
                # the k best of each row, equal scores by id: every score above the k-th best, then of those equal
                # to it the ones with the smaller ids (one integer key: ranks below n, n + rank, then 2n)
                threshold = scores.topk(k, dim=1).values[:, -1:]
                keys = torch.where(scores > threshold, ranks, torch.where(scores == threshold, ranks + n, 2 * n))
                columns = keys.topk(k, dim=1, largest=False).indices
                for row, (values, found) in enumerate(zip(scores.gather(1, columns).tolist(), columns.tolist())):
                    merged = hits[name][row] + [(value, ids[i]) for value, i in zip(values, found)]
                    hits[name][row] = sorted(merged, key=lambda hit: (-hit[0], id_ranks[hit[1]]))[:top]
        metrics = {name: self.compute_metrics(found) for name, found in hits.items()}
        if output_path is not None and self.write_predictions:
            for name, found in hits.items():  # a file per score function, each query's hits best first
                lines = (json.dumps({"query_id": query_id, "query": query, "results": [
                    {"corpus_id": corpus_id, "score": score} for score, corpus_id in ranked]})
                    for query_id, query, ranked in zip(self.queries_ids, self.queries, found))
                path = Path(output_path) / self.predictions_file.replace(".jsonl", f"_{name}.jsonl")
                path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        names = sorted(functions)
        if output_path is not None and self.write_csv:
            columns = []  # (score function, metric, k) in sentence-transformers' order: precision beside recall
            for name in names:
                for kind, ks in self.at_k.items():
                    metrics_of_kind = ("precision", "recall") if kind == "precision_recall" else (kind,)
                    columns += [(name, metric, k) for k in ks for metric in metrics_of_kind]
            header = [f"{name}-{CSV_METRIC_NAMES[metric]}@{k}" for name, metric, k in columns]
            append_csv_row(Path(output_path) / self.csv_file, ["epoch", "steps"] + header,
                           [epoch, steps] + [metrics[name][metric][k] for name, metric, k in columns])
        best = self.main_score_function or max(names, key=lambda name: metrics[name]["ndcg"][max(self.at_k["ndcg"])])
        self.primary_metric = f"{best}_ndcg@{max(self.at_k['ndcg'])}"
        flat = {f"{name}_{metric}@{k}": value for name, values in metrics.items()
                for metric, by_k in values.items() for k, value in by_k.items()}
        if not self.name:
            return flat
        self.primary_metric = f"{self.name}_{self.primary_metric}"
        return {f"{self.name}_{key}": value for key, value in flat.items()}

    def compute_metrics(self, hits: list[list[tuple[float, str]]]) -> dict[str, dict[int, float]]:
        """{metric: {k: mean over the queries}} from each query's ranked (score, corpus id) hits."""
        found = {metric: {k: [] for k in ks} for metric, ks in self.at_k.items() if metric != "precision_recall"}
        found.update(precision={k: [] for k in self.at_k["precision_recall"]},
                     recall={k: [] for k in self.at_k["precision_recall"]})
        for query_id, ranked in zip(self.queries_ids, hits):
            relevant = self.relevant_docs[query_id]
            is_relevant = [corpus_id in relevant for _, corpus_id in ranked]
            for k in self.at_k["accuracy"]:
                found["accuracy"][k].append(float(any(is_relevant[:k])))
            for k in self.at_k["precision_recall"]:
                found["precision"][k].append(sum(is_relevant[:k]) / k)
                found["recall"][k].append(sum(is_relevant[:k]) / len(relevant))
            for k in self.at_k["mrr"]:
                found["mrr"][k].append(next((1 / (rank + 1) for rank, hit in enumerate(is_relevant[:k]) if hit), 0.0))
            for k in self.at_k["ndcg"]:
                found["ndcg"][k].append(dcg(is_relevant[:k]) / dcg([True] * min(len(relevant), k)))
            for k in self.at_k["map"]:
                precisions = [sum(is_relevant[:rank + 1]) / (rank + 1)
                              for rank, hit in enumerate(is_relevant[:k]) if hit]
                found["map"][k].append(sum(precisions) / min(k, len(relevant)))
        order = ("accuracy", "precision", "recall", "ndcg", "mrr", "map")  # sentence-transformers' order of the keys
        return {metric: {k: float(np.mean(values)) for k, values in found[metric].items()} for metric in order}


CSV_METRIC_NAMES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "mrr": "MRR", "ndcg": "NDCG",
                    "map": "MAP"}


def dcg(relevant: list[bool]) -> float:
    """Discounted cumulative gain of binary relevances in rank order."""
    return sum(hit / np.log2(rank + 2) for rank, hit in enumerate(relevant))


class BinaryClassificationEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: pairs labelled 1 (alike) or 0, scored by
    each similarity function (the model's similarity_fn_name unless `similarity_fn_names` says otherwise; Euclidean
    and Manhattan as distances, alike below a threshold), and for each the best accuracy and F1 over all thresholds
    with the thresholds that reach them (midway between two scores), the precision and recall at F1's, average
    precision and Matthews' correlation at F1's threshold; named as it names them ("{name}_cosine_ap", "max_" over
    several functions), with its `primary_metric` (average precision) and CSV file. Each distinct text is embedded
    once."""

    METRICS = ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap", "mcc")
    CSV_METRICS = ("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap", "mcc")

    def __init__(self, sentences1: list[str], sentences2: list[str], labels: list[int], name: str = "",
                 batch_size: int = 32, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None):
        if not len(sentences1) == len(sentences2) == len(labels):
            raise ValueError(f"sentences1, sentences2 and labels must be as long as each other, not {len(sentences1)}, "
                             f"{len(sentences2)} and {len(labels)}")
        if len(labels) == 0:
            raise ValueError("no pairs to classify: sentences1, sentences2 and labels are empty")
        for index, label in enumerate(labels):
            if label not in (0, 1):
                raise ValueError(f"labels[{index}] is {label!r}: a pair is labelled 1 (alike) or 0 (not)")
        similarity_fn_names = [similarity_name(fn_name) for fn_name in similarity_fn_names or []]
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.labels = np.array([int(label) for label in labels])
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.similarity_fn_names = list(similarity_fn_names or [])
        self.csv_file = f"binary_classification_evaluation{'_' + name if name else ''}_results.csv"
        self.primary_metric = None

    @classmethod
    def from_input_examples(cls, examples: list, **options) -> "BinaryClassificationEvaluator":
        """From examples with `texts` (two) and a `label` (0 or 1) each, as sentence-transformers' InputExample."""
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **options)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        sentences = list(dict.fromkeys(self.sentences1 + self.sentences2))
        embeddings = torch.from_numpy(model.encode(sentences, batch_size=self.batch_size, convert_to_numpy=True,
                                                   show_progress_bar=self.show_progress_bar,
                                                   truncate_dim=self.truncate_dim))
        position = {sentence: i for i, sentence in enumerate(sentences)}
        first, second = (embeddings[[position[s] for s in texts]] for texts in (self.sentences1, self.sentences2))
        self.similarity_fn_names = self.similarity_fn_names or [model.similarity_fn_name]
        scores = {}
        for fn_name in self.similarity_fn_names:
            similarity = SIMILARITY_FUNCTIONS[fn_name][1](first, second).numpy()
            distance = fn_name in ("euclidean", "manhattan")  # the pairwise functions give them negated
            scores[fn_name] = binary_classification_metrics(-similarity if distance else similarity, self.labels,
                                                            higher_is_alike=not distance)
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file,
                           ["epoch", "steps"] + [f"{fn}_{m}" for fn in scores for m in self.CSV_METRICS],
                           [epoch, steps] + [scores[fn][m] for fn in scores for m in self.CSV_METRICS])
        metrics = {f"{fn}_{metric}": value for fn, values in scores.items() for metric, value in values.items()}
        if len(scores) > 1:
            metrics.update({f"max_{metric}": max(values[metric] for values in scores.values())
                            for metric in self.METRICS})
        self.primary_metric = "max_ap" if len(scores) > 1 else f"{self.similarity_fn_names[0]}_ap"
        if not self.name:
            return metrics
        self.primary_metric = f"{self.name}_{self.primary_metric}"
        return {f"{self.name}_{key}": value for key, value in metrics.items()}


def binary_classification_metrics(scores: np.ndarray, labels: np.ndarray, higher_is_alike: bool) -> dict[str, float]:
    """Accuracy and F1 at their best thresholds (a pair is called alike at or beyond its threshold), the precision
    and recall at F1's, average precision, and Matthews' correlation at F1's threshold, as sentence-transformers'
    BinaryClassificationEvaluator (and scikit-learn's average_precision_score and matthews_corrcoef) compute them.
    Thresholds lie between two distinct scores, midway in the scores' own type (float32), or on the last score."""
    n, positives = len(labels), int(labels.sum())
    order = np.argsort(-scores if higher_is_alike else scores, kind="stable")
    ranked, alike = scores[order], labels[order]
    # a threshold can fall only where the next score differs: after each run of equal scores
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    called = ends + 1  # pairs called alike with the threshold after each run
    hits = np.cumsum(alike)[ends]  # ...of which alike

    def threshold(end: int):
        if end == n - 1:
            return ranked[end]
        middle = (ranked[end] + ranked[end + 1]) / 2  # in float32, as the scores
        return ranked[end] if middle == ranked[end + 1] else middle

    accuracies = (hits + (n - positives) - (called - hits)) / n
    # the threshold to beat: just beyond the best score, every pair called unlike
    best_accuracy, accuracy_threshold = (n - positives) / n, np.nextafter(ranked[0], np.inf if higher_is_alike
                                                                          else -np.inf, dtype=ranked.dtype)
    if accuracies.max() > best_accuracy:
        best = int(np.argmax(accuracies))
        best_accuracy, accuracy_threshold = accuracies[best], threshold(ends[best])
    precisions, recalls = hits / called, hits / max(positives, 1)
    with np.errstate(invalid="ignore"):
        f1s = np.where(hits > 0, 2 * precisions * recalls / (precisions + recalls), 0.0)
    f1 = precision = recall = f1_threshold = 0.0
    if positives:
        best = int(np.argmax(f1s))
        f1, precision, recall, f1_threshold = f1s[best], precisions[best], recalls[best], threshold(ends[best])
    ap = average_precision(scores if higher_is_alike else -scores, labels)
    predicted = scores >= f1_threshold if higher_is_alike else scores <= f1_threshold
    tp, fp = int((predicted & (labels == 1)).sum()), int((predicted & (labels == 0)).sum())
    fn, tn = positives - tp, n - positives - fp
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = (tp * tn - fp * fn) / denominator if denominator else 0.0
    return {"accuracy": float(best_accuracy), "accuracy_threshold": float(accuracy_threshold), "f1": float(f1),
            "f1_threshold": float(f1_threshold), "precision": float(precision), "recall": float(recall), "ap": ap,
            "mcc": float(mcc)}


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's average_precision_score of binary labels (1 relevant) by scores (higher first): the precision
    at each distinct score, weighed by the share of the relevant ones it adds; 0 without a relevant one."""
    positives = int(np.sum(labels))
    if not positives:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    ranked, relevant = scores[order], np.asarray(labels)[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # the last of each run of equal scores
    hits = np.cumsum(relevant)[ends]
    return float(np.sum(np.diff(hits, prepend=0) / positives * (hits / (ends + 1))))


def ndcg_at(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """scikit-learn's ndcg_score of one ranking at k: DCG over the top k (discount 1/log2(rank + 1)) over the
    ideal's. Equal scores share their ranks: each takes the mean of the gains of its run of equal scores."""
    discounts = np.where(np.arange(len(scores)) < k, 1 / np.log2(np.arange(len(scores)) + 2), 0.0)
    values, runs, counts = np.unique(-scores, return_inverse=True, return_counts=True)
    mean_gains = np.bincount(runs.ravel(), weights=relevance, minlength=len(values)) / counts
    run_discounts = np.diff(np.cumsum(discounts)[np.cumsum(counts) - 1], prepend=0.0)
    ideal = np.sum(np.sort(relevance)[::-1] * discounts)
    return float(np.sum(mean_gains * run_discounts) / ideal) if ideal else 0.0


class RerankingEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: each sample's query ("query", through
    encode_query) against its "positive" and "negative" documents (a text or a list; through encode_document),
    ranked by `similarity_fct` (the model's similarity unless given): mean average precision, MRR at k (positives
    first among equal scores) and NDCG at k; named and written to CSV as it does. Samples without a positive or a
    negative are left out. Documents are embedded in batches either way (`use_batched_encoding`: minisbert's
    embeddings do not depend on the batch)."""

    def __init__(self, samples: list[dict] | dict, at_k: int = 10, name: str = "", write_csv: bool = True,
                 similarity_fct=None, batch_size: int = 64, show_progress_bar: bool = False,
                 use_batched_encoding: bool = True, truncate_dim: int | None = None, mrr_at_k: int | None = None):
        samples = list(samples.values()) if isinstance(samples, dict) else list(samples)
        for index, sample in enumerate(samples):
            missing = {"query", "positive", "negative"} - set(sample)
            if missing:
                raise ValueError(f"samples[{index}] has no {', '.join(sorted(missing))}: each sample is a dict of "
                                 f"a query, its positive and its negative documents")
        self.samples = [{**sample, **{key: [sample[key]] if isinstance(sample[key], str) else list(sample[key])
                                      for key in ("positive", "negative")}} for sample in samples]
        self.samples = [sample for sample in self.samples if sample["positive"] and sample["negative"]]
        self.at_k = mrr_at_k if mrr_at_k is not None else at_k
        self.similarity_fct, self.batch_size, self.show_progress_bar = similarity_fct, batch_size, show_progress_bar
        self.use_batched_encoding, self.truncate_dim = use_batched_encoding, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.csv_file = f"RerankingEvaluator{'_' + name if name else ''}_results_@{self.at_k}.csv"
        self.primary_metric = f"ndcg@{self.at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        options = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar,
                   "convert_to_tensor": True, "truncate_dim": self.truncate_dim}
        similarity = self.similarity_fct or model.similarity
        queries = model.encode_query([sample["query"] for sample in self.samples], **options)
        documents = model.encode_document([text for sample in self.samples
                                           for text in sample["positive"] + sample["negative"]], **options)
        found = {"map": [], "mrr": [], "ndcg": []}
        start = 0
        for query, sample in zip(queries, self.samples):
            count = len(sample["positive"]) + len(sample["negative"])
            scores = similarity(query[None], documents[start:start + count])[0].float().cpu().numpy()
            start += count
            relevant = np.arange(count) < len(sample["positive"])
            first_hit = np.flatnonzero(relevant[np.argsort(-scores, kind="stable")][:self.at_k])
            found["mrr"].append(1 / (first_hit[0] + 1) if len(first_hit) else 0.0)
            found["ndcg"].append(ndcg_at(scores, relevant.astype(float), self.at_k))
            found["map"].append(average_precision(scores, relevant))
        mean = {metric: float(np.mean(values)) for metric, values in found.items()}
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file,
                           ["epoch", "steps", "MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"],
                           [epoch, steps, mean["map"], mean["mrr"], mean["ndcg"]])
        metrics = {"map": mean["map"], f"mrr@{self.at_k}": mean["mrr"], f"ndcg@{self.at_k}": mean["ndcg"]}
        self.primary_metric = f"{self.name}_ndcg@{self.at_k}" if self.name else f"ndcg@{self.at_k}"
        return {f"{self.name}_{key}" if self.name else key: value for key, value in metrics.items()}


class ParaphraseMiningEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it: mines the most similar pairs of
    `sentences_map`'s texts (search.paraphrase_mining with its options and the model's similarity) and scores them
    against the known duplicates (`duplicates_list` of id pairs, or `duplicates_dict` {id: {id: True}}; with
    `add_transitive_closure`, every two ids joined by a chain of duplicates): average precision, and the best F1 over
    thresholds between mined scores, with its precision, recall and threshold; named and written to CSV as it does."""

    def __init__(self, sentences_map: dict[str, str], duplicates_list: list[tuple[str, str]] | None = None,
                 duplicates_dict: dict[str, dict[str, bool]] | None = None, add_transitive_closure: bool = False,
                 query_chunk_size: int = 5000, corpus_chunk_size: int = 100000, max_pairs: int = 500000,
                 top_k: int = 100, show_progress_bar: bool = False, batch_size: int = 16, name: str = "",
                 write_csv: bool = True, truncate_dim: int | None = None):
        self.ids, self.sentences = list(sentences_map), list(sentences_map.values())
        pairs = {frozenset((a, b)) for a, marked in (duplicates_dict or {}).items()
                 for b, is_duplicate in marked.items() if is_duplicate}
        pairs |= {frozenset(pair) for pair in duplicates_list or [] if set(pair) <= sentences_map.keys()}
        if add_transitive_closure:
            pairs = transitive_closure(pairs)
        # pairs of ids the map does not hold count for nothing, nor does an id paired with itself
        self.duplicates = {pair for pair in pairs if len(pair) == 2 and pair <= sentences_map.keys()}
        self.mining = {"query_chunk_size": query_chunk_size, "corpus_chunk_size": corpus_chunk_size,
                       "max_pairs": max_pairs, "top_k": top_k}
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.csv_file = f"paraphrase_mining_evaluation{'_' + name if name else ''}_results.csv"
        self.primary_metric = "average_precision"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        mined = paraphrase_mining(model, self.sentences, show_progress_bar=self.show_progress_bar,
                                  batch_size=self.batch_size, truncate_dim=self.truncate_dim,
                                  score_function=model.similarity, **self.mining)
        found = np.cumsum([frozenset((self.ids[i], self.ids[j])) in self.duplicates for _, i, j in mined])
        total = len(self.duplicates)
        average_precision = f1 = precision = recall = threshold = 0
        before = 0  # duplicates found above the previous threshold
        for end, (score, _, _) in enumerate(mined):
            if end + 1 < len(mined) and mined[end + 1][0] == score:
                continue  # a threshold cannot part equal scores
            correct = int(found[end])
            if correct > before:  # only thresholds that take in more duplicates count
                at_precision, at_recall = correct / (end + 1), correct / total
                at_f1 = 2 * at_precision * at_recall / (at_precision + at_recall)
                average_precision += at_precision * (correct - before)
                if at_f1 > f1:
                    f1, precision, recall = at_f1, at_precision, at_recall
                    threshold = (score + mined[min(end + 1, len(mined) - 1)][0]) / 2
            before = correct
        average_precision = average_precision / total if total else 0
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file,
                           ["epoch", "steps", "precision", "recall", "f1", "threshold", "average_precision"],
                           [epoch, steps, precision, recall, f1, threshold, average_precision])
        metrics = {"average_precision": average_precision, "f1": f1, "precision": precision, "recall": recall,
                   "threshold": threshold}
        self.primary_metric = f"{self.name}_average_precision" if self.name else "average_precision"
        return {f"{self.name}_{key}" if self.name else key: float(value) for key, value in metrics.items()}


def transitive_closure(pairs: set[frozenset]) -> set[frozenset]:
    """Every pair of ids joined by a chain of `pairs`: each group of connected ids, all its pairs."""
    group_of = {}  # id -> the set of ids connected to it, shared by all of them
    for pair in pairs:
        merged = set(pair).union(*(group_of.get(i, ()) for i in pair))
        for i in merged:
            group_of[i] = merged
    groups = {id(group): group for group in group_of.values()}.values()
    return {frozenset((a, b)) for group in groups for a in group for b in group if a != b}


class TranslationEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it (multilingual models): how often a
    source sentence's most similar target (cosine; the first of equal ones) is its own translation, or a target of the
    same text, and the other way round; "src2trg_accuracy", "trg2src_accuracy" and their mean (the primary metric),
    named and written to CSV as it does."""

    def __init__(self, source_sentences: list[str], target_sentences: list[str], show_progress_bar: bool = False,
                 batch_size: int = 16, name: str = "", print_wrong_matches: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None):
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must be as long as each other")
        self.source_sentences, self.target_sentences = list(source_sentences), list(target_sentences)
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.print_wrong_matches, self.write_csv, self.truncate_dim = print_wrong_matches, write_csv, truncate_dim
        self.csv_file = f"translation_evaluation{'_' + name if name else ''}_results.csv"
        self.primary_metric = "mean_accuracy"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        options = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar,
                   "convert_to_tensor": True, "truncate_dim": self.truncate_dim}
        sources, targets = (model.encode(texts, **options) for texts in (self.source_sentences, self.target_sentences))
        scores = cos_sim(sources, targets).cpu().numpy()
        accuracies = []
        for scores_by_row, rows, columns in ((scores, self.source_sentences, self.target_sentences),
                                             (scores.T, self.target_sentences, self.source_sentences)):
            best = scores_by_row.argmax(axis=1)
            right = [columns[found] == columns[i] for i, found in enumerate(best)]
            if self.print_wrong_matches and rows is self.source_sentences:
                for i in np.flatnonzero(np.logical_not(right)):
                    print(f"source {i} is most similar to target {best[i]} ({scores[i, best[i]]:.4f}), not to target "
                          f"{i} ({scores[i, i]:.4f}):\n  {rows[i]}\n  found: {columns[best[i]]}\n  true:  {columns[i]}")
            accuracies.append(sum(right) / len(right))
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file, ["epoch", "steps", "src2trg", "trg2src"],
                           [epoch, steps, *accuracies])
        metrics = {"src2trg_accuracy": accuracies[0], "trg2src_accuracy": accuracies[1],
                   "mean_accuracy": sum(accuracies) / 2}
        self.primary_metric = f"{self.name}_mean_accuracy" if self.name else "mean_accuracy"
        return {f"{self.name}_{key}" if self.name else key: value for key, value in metrics.items()}


class MSEEvaluator:
    """sentence-transformers' evaluator of this name, for code moved from it (multilingual distillation): the mean
    squared difference, x 100, between a teacher model's embeddings of `source_sentences` (computed once, here) and
    the evaluated model's of `target_sentences`; returned negated ("negative_mse", higher is better), named and
    written to CSV as it does."""

    def __init__(self, source_sentences: list[str], target_sentences: list[str], teacher_model=None,
                 show_progress_bar: bool = False, batch_size: int = 32, name: str = "", write_csv: bool = True,
                 truncate_dim: int | None = None):
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must be as long as each other")
        self.target_sentences = list(target_sentences)
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.csv_file = f"mse_evaluation_{name}_results.csv"  # sentence-transformers' name, "_" or not
        self.primary_metric = "negative_mse"
        self.source_embeddings = self._embed(teacher_model, source_sentences)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        target_embeddings = self._embed(model, self.target_sentences)
        mse = float(((self.source_embeddings - target_embeddings) ** 2).mean() * 100)
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file, ["epoch", "steps", "MSE"], [epoch, steps, mse])
        self.primary_metric = f"{self.name}_negative_mse" if self.name else "negative_mse"
        return {self.primary_metric: -mse}

    def _embed(self, model, sentences: list[str]) -> np.ndarray:
        return model.encode(list(sentences), batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                            convert_to_numpy=True, truncate_dim=self.truncate_dim)


class LabelAccuracyEvaluator:
    """sentence-transformers' evaluator of this name: how often a SoftmaxLoss's classifier (`softmax_model`) gives
    the label, over the InputExamples of `dataloader` (collated by the model's smart_batching_collate, as there);
    "accuracy", named and written to CSV as it does."""

    def __init__(self, dataloader, name: str = "", softmax_model=None, write_csv: bool = True):
        self.dataloader, self.name, self.softmax_model, self.write_csv = dataloader, name, softmax_model, write_csv
        self.csv_file = f"accuracy_evaluation{'_' + name if name else ''}_results.csv"
        self.primary_metric = f"{name}_accuracy" if name else "accuracy"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        self.dataloader.collate_fn = model.smart_batching_collate
        correct = total = 0
        for features, labels in self.dataloader:
            features = [batch_to_device(column, model.device) for column in features]
            with torch.no_grad():
                _, logits = self.softmax_model(features, labels=None)
            correct += int((logits.argmax(dim=1) == labels.to(logits.device)).sum())
            total += len(logits)
        accuracy = correct / total
        if output_path is not None and self.write_csv:
            append_csv_row(Path(output_path) / self.csv_file, ["epoch", "steps", "accuracy"], [epoch, steps, accuracy])
        return {self.primary_metric: accuracy}


class SequentialEvaluator:
    """sentence-transformers' evaluator of this name: each of `evaluators` in turn, their metrics in one dict, and
    "sequential_score", `main_score_function` of their primary metrics (by default the last one's)."""

    def __init__(self, evaluators, main_score_function=lambda scores: scores[-1]):
        self.evaluators, self.main_score_function = list(evaluators), main_score_function
        self.primary_metric = "sequential_score"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        results, scores = {}, []
        for index, evaluator in enumerate(self.evaluators):
            metrics = evaluator(model, output_path, epoch, steps)
            if not isinstance(metrics, dict):  # an evaluator that returns one number
                scores.append(metrics)
                metrics = {f"evaluator_{index}": metrics}
            else:
                primary = getattr(evaluator, "primary_metric", None)
                scores.append(metrics[primary] if primary is not None else next(iter(metrics.values())))
            results.update(metrics)
        results["sequential_score"] = self.main_score_function(scores) if scores else 0.0
        return results


def append_csv_row(path: Path, header: list[str], row: list) -> None:
    """One row more in an evaluator's CSV file; the header first where the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "w" if new else "a", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(header)
        writer.writerow(row)
