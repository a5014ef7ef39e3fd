"""STS evaluation against sentence-transformers' EmbeddingSimilarityEvaluator, and the losses against theirs."""

import pytest
import torch
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers.sentence_transformer import losses as reference_losses
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from minisbert import SentenceTransformer
from minisbert.data import read_nli, read_sts_benchmark
from minisbert.evaluate import sts_correlations
from minisbert.losses import (CosineSimilarityLoss, MultipleNegativesRankingLoss, SoftmaxLoss, TripletLoss,
                              tokenize_batch)


def test_stsb_test_score_equals_embedding_similarity_evaluator(minilm_folder, data_dir):
    test = read_sts_benchmark(data_dir / "stsbenchmark" / "sts-test.csv")
    ours = sts_correlations(SentenceTransformer(minilm_folder), test)
    evaluator = EmbeddingSimilarityEvaluator([e.texts[0] for e in test], [e.texts[1] for e in test],
                                             [e.label / 5 for e in test], name="sts-test")
    theirs = evaluator(Reference(str(minilm_folder), device="cpu"))
    assert ours["spearman"] == pytest.approx(theirs["sts-test_spearman_cosine"], abs=1e-4)
    assert ours["pearson"] == pytest.approx(theirs["sts-test_pearson_cosine"], abs=1e-4)
    assert 0.8 < ours["spearman"] < 0.85  # the published figure for all-MiniLM-L6-v2 is 82.03


@pytest.fixture(scope="module")
def both(minilm_folder):
    return SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")


@pytest.fixture(scope="module")
def triplets(data_dir):
    from minisbert.data import nli_triplets
    return nli_triplets(read_nli(data_dir / "nli" / "snli_1.0_dev.jsonl"))[:8]


@pytest.mark.parametrize("ours_class,reference_class,options", [
    (TripletLoss, reference_losses.TripletLoss,
     dict(distance_metric=reference_losses.TripletDistanceMetric.EUCLIDEAN, triplet_margin=1.0)),
    (MultipleNegativesRankingLoss, reference_losses.MultipleNegativesRankingLoss, {})])
def test_triplet_and_in_batch_negative_losses_equal_sentence_transformers(both, triplets, ours_class,
                                                                          reference_class, options):
    ours, reference = both
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    our_loss = ours_class(ours)(tokenize_batch(ours, columns))
    their_loss = reference_class(reference, **options)([reference.preprocess(c) for c in columns], None)
    assert our_loss.item() == pytest.approx(their_loss.item(), abs=1e-5)
    assert our_loss.item() > 0


def test_softmax_concatenations_of_table_6(both, triplets):
    ours, _ = both
    columns = [[t.texts[0] for t in triplets], [t.texts[1] for t in triplets]]
    batch = tokenize_batch(ours, columns, [1] * len(triplets))
    u, v = ours.encode(columns[0], convert_to_tensor=True), ours.encode(columns[1], convert_to_tensor=True)
    loss = SoftmaxLoss(ours, concatenation=("|u-v|", "u*v"))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(loss.classifier(torch.cat([(u - v).abs(), u * v], dim=1)),
                                                     batch["labels"])
        assert loss(batch).item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss.classifier.in_features == 2 * 384
    with pytest.raises(ValueError, match="u-v"):
        SoftmaxLoss(ours, concatenation=("u", "u-v"))
    cosine = CosineSimilarityLoss(ours)
    with torch.no_grad():
        assert cosine(batch).item() == pytest.approx(
            ((torch.nn.functional.cosine_similarity(u, v) - 1) ** 2).mean().item(), abs=1e-5)
