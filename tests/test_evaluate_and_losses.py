"""STS evaluation against sentence-transformers' EmbeddingSimilarityEvaluator, and the losses against theirs."""

import random
import warnings

import pytest
import torch
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers import util as reference_util
from sentence_transformers.sentence_transformer import losses as reference_losses
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from minisbert import InputExample, SentenceTransformer, losses, similarity
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
    our_loss = ours_class(ours, **options)(tokenize_batch(ours, columns))
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


@pytest.mark.parametrize("name,options", [
    ("SoftmaxLoss", {"embedding_dimension": 384, "num_labels": 3}),
    ("SoftmaxLoss", {"embedding_dimension": 384, "num_labels": 3, "concatenation_sent_rep": False,
                     "concatenation_sent_multiplication": True}),
    ("SoftmaxLoss", {"embedding_dimension": 384, "num_labels": 3,
                     "loss_fct": torch.nn.CrossEntropyLoss(label_smoothing=0.2)}),
    ("CosineSimilarityLoss", {}), ("CosineSimilarityLoss", {"loss_fct": torch.nn.L1Loss()}),
    ("CoSENTLoss", {}), ("CoSENTLoss", {"scale": 5.0}), ("AnglELoss", {}),
    ("TripletLoss", {}), ("TripletLoss", {"distance_metric": "MANHATTAN"}),
    ("TripletLoss", {"distance_metric": "COSINE", "triplet_margin": 0.5}),
    ("MultipleNegativesRankingLoss", {}), ("MultipleNegativesRankingLoss", {"scale": 10.0}),
    ("MultipleNegativesRankingLoss", {"directions": ("query_to_doc", "doc_to_query"),
                                      "partition_mode": "per_direction"}),
    ("MultipleNegativesRankingLoss", {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")}),
    ("MultipleNegativesRankingLoss", {"directions": ("doc_to_doc", "query_to_doc"), "scale": 7.0}),
    ("MultipleNegativesSymmetricRankingLoss", {}),
    ("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 3}),
    ("CachedMultipleNegativesSymmetricRankingLoss", {"mini_batch_size": 3}),
    ("MegaBatchMarginLoss", {"mini_batch_size": 3}),
    ("MegaBatchMarginLoss", {"use_mini_batched_version": False, "positive_margin": 0.9, "negative_margin": 0.1}),
    ("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 5, "directions": ("query_to_doc", "query_to_query")}),
    ("MultipleNegativesRankingLoss", {"hardness_mode": "in_batch_negatives", "hardness_strength": 3.0}),
    ("MultipleNegativesRankingLoss", {"hardness_mode": "hard_negatives", "hardness_strength": 3.0}),
    ("MultipleNegativesRankingLoss", {"hardness_mode": "all_negatives", "hardness_strength": 1.5,
                                      "directions": ("query_to_doc", "doc_to_query")}),
    ("ContrastiveLoss", {}),
    ("ContrastiveLoss", {"distance_metric": "EUCLIDEAN", "margin": 3.0, "size_average": False}),
    ("OnlineContrastiveLoss", {}), ("OnlineContrastiveLoss", {"distance_metric": "MANHATTAN", "margin": 60.0}),
    ("MSELoss", {}), ("MSELoss", {"projection_dim": 16}),
    ("EmbedDistillLoss", {}), ("EmbedDistillLoss", {"distance_metric": "l2", "projection_dim": 16}),
    ("EmbedDistillLoss", {"distance_metric": "mse"}),
    ("MarginMSELoss", {}), ("MarginMSELoss", {"similarity_fct": "pairwise_cos_sim"}),
    ("DistillKLDivLoss", {}),
    ("DistillKLDivLoss", {"similarity_fct": "pairwise_cos_sim", "temperature": 0.05, "teacher_temperature": 2.0}),
    ("BatchHardTripletLoss", {}), ("BatchHardTripletLoss", {"distance_metric": "cosine_distance", "margin": 0.3}),
    ("BatchHardSoftMarginTripletLoss", {}), ("BatchHardSoftMarginTripletLoss", {"distance_metric": "cosine_distance"}),
    ("BatchAllTripletLoss", {}), ("BatchAllTripletLoss", {"distance_metric": "cosine_distance", "margin": 0.3}),
    ("BatchSemiHardTripletLoss", {}),
    ("BatchSemiHardTripletLoss", {"distance_metric": "cosine_distance", "margin": 0.3})])
def test_losses_called_as_in_sentence_transformers_give_its_values_and_gradients(minilm_folder, triplets, name,
                                                                                 options):
    # a training loop of one's own: loss([features of each column], labels), the arguments and defaults (the
    # triplet margin: 5) sentence-transformers' own
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_options, their_options = dict(options), dict(options)
    if "distance_metric" in options and name != "EmbedDistillLoss":  # its metric is a name
        metrics = {"TripletLoss": "TripletDistanceMetric", "ContrastiveLoss": "SiameseDistanceMetric",
                   "OnlineContrastiveLoss": "SiameseDistanceMetric"}.get(name, "BatchHardTripletLossDistanceFunction")
        ours_options["distance_metric"] = getattr(getattr(losses, metrics), options["distance_metric"])
        their_options["distance_metric"] = getattr(getattr(reference_losses, metrics), options["distance_metric"])
    if "similarity_fct" in options:
        ours_options["similarity_fct"] = getattr(similarity, options["similarity_fct"])
        their_options["similarity_fct"] = getattr(reference_util, options["similarity_fct"])
    ours_loss, their_loss = getattr(losses, name)(ours, **ours_options), getattr(reference_losses, name)(
        reference, **their_options)
    paired = name in ("SoftmaxLoss", "CosineSimilarityLoss", "CoSENTLoss", "AnglELoss", "ContrastiveLoss",
                      "OnlineContrastiveLoss", "MegaBatchMarginLoss")
    columns = [list(column) for column in zip(*(t.texts[:2] if paired else t.texts for t in triplets))]
    if name.startswith("Batch"):  # one column of texts, each labelled by class
        columns = columns[:1]
    ties = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.0, 1.0, 0.2, 0.7])  # equal labels: no term for their pair
    alike = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    labels = {"SoftmaxLoss": torch.tensor([0, 1, 2, 1, 0, 2, 2, 1]),
              "CosineSimilarityLoss": torch.linspace(0, 1, len(triplets)), "CoSENTLoss": ties,
              "AnglELoss": ties, "ContrastiveLoss": alike,
              "OnlineContrastiveLoss": 1 - alike,  # these labels part the pairs' distances less well: hard pairs
              # a teacher's embeddings, one per text of each column
              **dict.fromkeys(["MSELoss", "EmbedDistillLoss"], torch.randn(
                  len(triplets), len(columns), options.get("projection_dim", 384),
                  generator=torch.Generator().manual_seed(0))),
              "MarginMSELoss": torch.tensor([0.5, 0.1, -0.3, 0.9, 0.2, 0.0, 0.4, 0.8]),  # a teacher's margins
              # a teacher's scores of the positive and the negative
              "DistillKLDivLoss": torch.randn(len(triplets), 2, generator=torch.Generator().manual_seed(1)) * 3,
              **dict.fromkeys(["BatchHardTripletLoss", "BatchHardSoftMarginTripletLoss", "BatchAllTripletLoss",
                               "BatchSemiHardTripletLoss"], torch.tensor([0, 1, 2, 0, 1, 2, 0, 3]))}.get(name)
    if name == "SoftmaxLoss":
        ours_loss.classifier.load_state_dict(their_loss.classifier.state_dict())
    if name in ("MSELoss", "EmbedDistillLoss") and "projection_dim" in options:
        ours_loss.projection.load_state_dict(their_loss.projection.state_dict())
    got = ours_loss([ours.preprocess(column) for column in columns], labels)
    expected = their_loss([reference.preprocess(column) for column in columns], labels)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5) and got.item() > 0
    assert_same_gradients(ours, reference, got, expected)


def assert_same_gradients(ours, reference, got: torch.Tensor, expected: torch.Tensor) -> None:
    """Our loss `got` and sentence-transformers' `expected` back-propagated give the first query weight the same
    gradient, to 1e-5 of its scale (the losses that sum over the batch, OnlineContrastiveLoss, have larger ones)."""
    got.backward()
    expected.backward()
    their_gradient = reference[0].auto_model.encoder.layer[0].attention.self.query.weight.grad
    torch.testing.assert_close(ours.encoder.layers[0].query.weight.grad, their_gradient,
                               atol=1e-5 * max(1.0, their_gradient.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("options", [{}, {"aggregation": "sum", "mean_weight": 0.5},
                                     {"second_moment_weight": None, "similarity_fct": "dot_score"}])
def test_global_orthogonal_regularization_gives_sentence_transformers_terms_and_gradients(minilm_folder, triplets,
                                                                                        options):
    # a dict of terms, each only where its weight is set, to add to the loss it regularizes
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_options, their_options = dict(options), dict(options)
    if "similarity_fct" in options:
        ours_options["similarity_fct"] = getattr(similarity, options["similarity_fct"])
        their_options["similarity_fct"] = getattr(reference_util, options["similarity_fct"])
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    got = losses.GlobalOrthogonalRegularizationLoss(ours, **ours_options)([ours.preprocess(c) for c in columns])
    expected = reference_losses.GlobalOrthogonalRegularizationLoss(reference, **their_options)(
        [reference.preprocess(c) for c in columns], None)
    assert got.keys() == expected.keys() and len(got) == 1 + ("second_moment_weight" not in options)
    for key in got:
        assert got[key].item() == pytest.approx(expected[key].item(), abs=1e-6, rel=1e-5) and got[key].item() > 0
    assert_same_gradients(ours, reference, sum(got.values()), sum(expected.values()))
    with pytest.raises(ValueError, match="mean_weight or second_moment_weight must be above 0"):
        losses.GlobalOrthogonalRegularizationLoss(ours, mean_weight=0, second_moment_weight=None)


def test_embed_distill_projection_saved_here_loads_in_sentence_transformers_and_back(both, tmp_path):
    ours, reference = both
    saved = losses.EmbedDistillLoss(ours, projection_dim=16)
    saved.save_projection(tmp_path / "projection.safetensors")
    theirs = reference_losses.EmbedDistillLoss(reference)
    theirs.load_projection(str(tmp_path / "projection.safetensors"))
    torch.testing.assert_close(theirs.projection.weight, saved.projection.weight, atol=0, rtol=0)
    theirs.save_projection(str(tmp_path / "theirs.safetensors"))
    loaded = losses.EmbedDistillLoss(ours)
    loaded.load_projection(tmp_path / "theirs.safetensors")
    assert loaded.projection_dim == 16
    torch.testing.assert_close(loaded.projection.bias, saved.projection.bias, atol=0, rtol=0)
    with pytest.raises(ValueError, match="a projection from 384 to 16 values, where the student gives 384 and this "
                                         "loss projects to 8"):
        losses.EmbedDistillLoss(ours, projection_dim=8).load_projection(tmp_path / "theirs.safetensors")
    with pytest.raises(ValueError, match="has no projection to save"):
        losses.EmbedDistillLoss(ours).save_projection(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="distance_metric is mse, l2 or cosine, not 'dot'"):
        losses.EmbedDistillLoss(ours, distance_metric="dot")


@pytest.mark.parametrize("name", ["ContrastiveTensionLoss", "ContrastiveTensionLossInBatchNegatives"])
def test_contrastive_tension_gives_sentence_transformers_values_and_gradients(minilm_folder, name):
    # unsupervised: pairs of one sentence twice (label 1) and of two sentences (label 0) from the data loader, as
    # sentence-transformers' makes them from the same random stream; the model and a copy of it each embed a column
    sentences = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "dogs", "music", "rain",
                                                                                "trains"] * 6)]
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    loader, their_loader = losses.ContrastiveTensionDataLoader(list(sentences), batch_size=8, pos_neg_ratio=4), \
        reference_losses.ContrastiveTensionDataLoader(list(sentences), batch_size=8, pos_neg_ratio=4)
    random.seed(0)
    batches = list(loader)
    random.seed(0)
    their_batches = list(their_loader)
    assert len(batches) == len(their_batches) == len(loader) == 2
    assert [[(e.texts, e.label) for e in b] for b in batches] == [[(e.texts, e.label) for e in b]
                                                                  for b in their_batches]
    assert [e.label for e in batches[0]] == [1, 0, 0, 0, 1, 0, 0, 0] and isinstance(batches[0][0], InputExample)
    ours_loss, their_loss = getattr(losses, name)(ours), getattr(reference_losses, name)(reference)
    assert ours_loss.model2 is ours and ours_loss.model1 is not ours
    columns = [[e.texts[i] for e in batches[0]] for i in (0, 1)]
    got = ours_loss([ours.preprocess(column) for column in columns])
    expected = their_loss([reference.preprocess(column) for column in columns], None)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0
    assert_same_gradients(ours, reference, got, expected)
    if name == "ContrastiveTensionLoss":  # the labels from the tokens: given, the same loss
        with torch.no_grad():
            given = ours_loss([ours.preprocess(column) for column in columns],
                              torch.tensor([float(e.label) for e in batches[0]]))
        assert given.item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="batch_size 10 must be a multiple of pos_neg_ratio 4"):
        losses.ContrastiveTensionDataLoader(sentences, batch_size=10, pos_neg_ratio=4)


def test_softmax_loss_arguments_that_disagree_are_errors(both):
    ours, _ = both
    with pytest.raises(ValueError, match="embedding_dimension 768: the model's embeddings have 384"):
        losses.SoftmaxLoss(ours, 768, 3)
    with pytest.raises(ValueError, match="the concatenation is given twice"):
        losses.SoftmaxLoss(ours, concatenation=("u", "v"), concatenation_sent_multiplication=True)
    with pytest.raises(ValueError, match=r"concatenation \[\] is not made of"):
        losses.SoftmaxLoss(ours, concatenation_sent_rep=False, concatenation_sent_difference=False)


def test_losses_called_with_what_they_cannot_take_say_what_they_need(both):
    ours, _ = both
    features = [ours.preprocess(["a", "b"]), ours.preprocess(["c", "d"])]
    with pytest.raises(ValueError, match=r"CosineSimilarityLoss needs labels: loss\(\[features of each column\], "
                                         r"labels\)"):
        losses.CosineSimilarityLoss(ours)(features)
    with pytest.raises(ValueError, match="CoSENTLoss takes one label per pair: 2 pairs, 3 labels"):
        losses.CoSENTLoss(ours)(features, torch.ones(3))
    with pytest.raises(ValueError, match="TripletLoss takes 3 text columns, not 2"):
        losses.TripletLoss(ours)(features, None)
    with pytest.raises(ValueError, match="MultipleNegativesRankingLoss takes 2 text columns or more, not 1"):
        losses.MultipleNegativesRankingLoss(ours)(features[:1], None)
    with pytest.raises(ValueError, match=r"directions \('doc_to_query',\): query_to_doc and any of query_to_query, "
                                         r"doc_to_query, doc_to_doc"):
        losses.MultipleNegativesRankingLoss(ours, directions=("doc_to_query",))
    with pytest.raises(ValueError, match="per_direction takes only directions that hold the positive pair"):
        losses.MultipleNegativesRankingLoss(ours, directions=("query_to_doc", "doc_to_doc"),
                                            partition_mode="per_direction")
    for loss in (losses.MultipleNegativesRankingLoss, losses.CachedMultipleNegativesRankingLoss):
        with pytest.warns(UserWarning, match="hardness_mode 'hard_negatives' does nothing at hardness_strength 0"):
            loss(ours, hardness_mode="hard_negatives")
    with pytest.raises(TypeError, match="a list of the features of each text column"):
        losses.CosineSimilarityLoss(ours)([["a", "b"], ["c", "d"]], torch.ones(2))
    with pytest.raises(ValueError, match="ContrastiveLoss takes one label per pair: 2 pairs, 3 labels"):
        losses.ContrastiveLoss(ours)(features, torch.ones(3))
    with pytest.raises(ValueError, match="BatchAllTripletLoss takes one label per text: 2 texts, 3 labels"):
        losses.BatchAllTripletLoss(ours)(features[:1], torch.ones(3))
    with pytest.raises(ValueError, match="BatchHardTripletLoss takes 1 text column, not 2"):
        losses.BatchHardTripletLoss(ours)(features, torch.ones(2))
    with pytest.raises(ValueError, match=r"MarginMSELoss takes the teacher's margins, \(2, 1\), or its scores, "
                                         r"\(2, 2\) with the positive's first, as labels, not of shape \(2, 3\)"):
        losses.MarginMSELoss(ours)(features + features[:1], torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"MSELoss takes the teacher's embeddings as labels, \(batch, dim\) or "
                                         r"\(batch, 2 columns, dim\), not of shape \(2, 3, 384\)"):
        losses.MSELoss(ours)(features, torch.zeros(2, 3, 384))
    with pytest.raises(ValueError, match=r"the teacher's embeddings \(2, 768\) do not match the student's \(2, 384\)"):
        losses.MSELoss(ours)(features, torch.zeros(2, 768))
    with pytest.raises(ValueError, match=r"MegaBatchMarginLoss takes 2 text columns \(anchor, positive\), not 3"):
        losses.MegaBatchMarginLoss(ours)(features + features[:1])
    with pytest.raises(ValueError, match="DistillKLDivLoss takes 3 text columns or more, not 2"):
        losses.DistillKLDivLoss(ours)(features, torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"teacher's scores of each candidate column as labels, \(2, 2\), not of "
                                         r"shape \(2, 3\)"):
        losses.DistillKLDivLoss(ours)(features + features[:1], torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"the teacher's scores \(the labels\) hold NaN"):
        losses.DistillKLDivLoss(ours)(features + features[:1], torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="teacher_temperature must be a positive finite number, not 0"):
        losses.DistillKLDivLoss(ours, teacher_temperature=0)
    once = losses.DistillKLDivLoss(ours, teacher_temperature=0.01)
    with pytest.warns(UserWarning, match=r"1 of the 4 teacher scores become probability 0 .*a row spans up to 5.0\)"
                                         r": raise teacher_temperature above 0.05"):
        once(features + features[:1], torch.tensor([[0.0, 5.0], [1.0, 1.5]]))
    with warnings.catch_warnings():  # the first batch only
        warnings.simplefilter("error")
        once(features + features[:1], torch.tensor([[0.0, 5.0], [1.0, 1.5]]))


def test_contrastive_losses_warn_once_of_labels_other_than_0_and_1(both):
    ours, _ = both
    features = [ours.preprocess(["a", "b"]), ours.preprocess(["c", "d"])]
    for loss in (losses.ContrastiveLoss(ours), losses.OnlineContrastiveLoss(ours)):
        with pytest.warns(UserWarning, match=f"{type(loss).__name__} expects labels 0 \\(unlike\\) and 1"):
            loss(features, torch.tensor([0.5, 1.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss(features, torch.tensor([0.5, 1.0]))


def test_softmax_loss_without_labels_and_label_accuracy_as_in_sentence_transformers(minilm_folder, data_dir,
                                                                                   tmp_path):
    # the classifier's prediction call, loss(features, labels=None) -> (embeddings, logits), and the evaluator of
    # the paper's NLI accuracy, over a DataLoader of InputExamples collated by the model's smart_batching_collate
    from sentence_transformers import InputExample as ReferenceExample
    from sentence_transformers.sentence_transformer.evaluation import LabelAccuracyEvaluator as ReferenceEvaluator
    from torch.utils.data import DataLoader

    from minisbert import InputExample
    from minisbert.evaluation import LabelAccuracyEvaluator
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_loss, their_loss = SoftmaxLoss(ours, 384, 3), reference_losses.SoftmaxLoss(reference, 384, 3)
    ours_loss.classifier.load_state_dict(their_loss.classifier.state_dict())
    pairs = read_nli(data_dir / "nli" / "snli_1.0_dev.jsonl")[:40]
    features = [ours.preprocess([e.texts[i] for e in pairs[:6]]) for i in (0, 1)]
    their_features = [reference.preprocess([e.texts[i] for e in pairs[:6]]) for i in (0, 1)]
    with torch.no_grad():
        (u, v), logits = ours_loss(features)
        (their_u, their_v), their_logits = their_loss(their_features, labels=None)
    for got, expected in ((u, their_u), (v, their_v), (logits, their_logits)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    loader = DataLoader([InputExample(texts=e.texts, label=int(e.label)) for e in pairs], batch_size=16)
    their_loader = DataLoader([ReferenceExample(texts=e.texts, label=int(e.label)) for e in pairs], batch_size=16)
    (mine, my_labels), (theirs, their_labels) = (model.smart_batching_collate(data.dataset[:3]) for model, data in
                                                 ((ours, loader), (reference, their_loader)))
    assert torch.equal(my_labels, their_labels) and len(mine) == len(theirs) == 2
    for my_column, their_column in zip(mine, theirs):
        assert torch.equal(my_column["input_ids"], their_column["input_ids"].to(my_column["input_ids"].dtype))
    got = LabelAccuracyEvaluator(loader, "nli", ours_loss)(ours, str(tmp_path / "ours"))
    expected = ReferenceEvaluator(their_loader, "nli", their_loss)(reference, str(tmp_path / "theirs"))
    assert got == pytest.approx(expected) and list(got) == ["nli_accuracy"]
    assert 0 < got["nli_accuracy"] < 1
    assert ((tmp_path / "ours" / "accuracy_evaluation_nli_results.csv").read_text()
            == (tmp_path / "theirs" / "accuracy_evaluation_nli_results.csv").read_text())


@pytest.mark.parametrize("inner,options", [
    ("MultipleNegativesRankingLoss", {"matryoshka_dims": [384, 128, 32]}),
    ("CoSENTLoss", {"matryoshka_dims": [64, 384, 256], "matryoshka_weights": [1.0, 2.0, 0.5]}),
    ("MSELoss", {"matryoshka_dims": [384, 96]}),  # the teacher's embeddings cut too
    ("MultipleNegativesRankingLoss", {"matryoshka_dims": [384, 256, 128, 64], "n_dims_per_step": 2})])
def test_matryoshka_loss_gives_sentence_transformers_values_and_gradients(minilm_folder, triplets, inner, options):
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_loss = losses.MatryoshkaLoss(ours, getattr(losses, inner)(ours), **options)
    their_loss = reference_losses.MatryoshkaLoss(reference, getattr(reference_losses, inner)(reference), **options)
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    labels = {"CoSENTLoss": torch.tensor([0.2, 0.9, 0.5, 0.5, 0.0, 1.0, 0.2, 0.7]),
              "MSELoss": torch.randn(len(triplets), 384, generator=torch.Generator().manual_seed(0))}.get(inner)
    if inner != "MultipleNegativesRankingLoss":
        columns = columns[:2]
    for call in range(2):  # the second call runs the model anew
        random.seed(call)  # n_dims_per_step's draw
        got = ours_loss([ours.preprocess(column) for column in columns], labels)
        random.seed(call)
        expected = their_loss([reference.preprocess(column) for column in columns], labels)
        assert got.item() == pytest.approx(expected.item(), abs=1e-5) and got.item() > 0
    assert_same_gradients(ours, reference, got, expected)
    assert "forward" not in vars(ours)  # the model's own forward again


@pytest.mark.parametrize("name,inner,options", [
    ("AdaptiveLayerLoss", "MultipleNegativesRankingLoss", {}),
    ("AdaptiveLayerLoss", "CoSENTLoss", {"n_layers_per_step": -1, "layer_weighting": "log", "kl_temperature": 0.5,
                                         "last_layer_weight": 2.0, "prior_layers_weight": 0.5}),
    ("AdaptiveLayerLoss", "MultipleNegativesRankingLoss", {"n_layers_per_step": 3, "kl_temperature": 0.0,
                                                           "layer_weighting": "linear"}),
    ("Matryoshka2dLoss", "MultipleNegativesRankingLoss", {"matryoshka_dims": [384, 128, 32]}),
    ("Matryoshka2dLoss", "CoSENTLoss", {"matryoshka_dims": [384, 64], "n_layers_per_step": 2, "n_dims_per_step": -1})])
def test_adaptive_layer_losses_give_sentence_transformers_values_and_gradients(minilm_folder, triplets, name, inner,
                                                                               options):
    # the loss over what each drawn layer takes in (the embeddings' output for the first), pooled, as well as over
    # the last layer's; the draws of the layers (and widths) from Python's random stream, as there
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_loss = getattr(losses, name)(ours, getattr(losses, inner)(ours), **options)
    their_loss = getattr(reference_losses, name)(reference, getattr(reference_losses, inner)(reference), **options)
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    labels = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.0, 1.0, 0.2, 0.7]) if inner == "CoSENTLoss" else None
    if inner == "CoSENTLoss":
        columns = columns[:2]
    for call in range(2):  # other layers drawn
        random.seed(call)
        got = ours_loss([ours.preprocess(column) for column in columns], labels)
        random.seed(call)
        expected = their_loss([reference.preprocess(column) for column in columns], labels)
        assert got.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5) and got.item() > 0
    with torch.no_grad():  # more than the inner loss alone
        alone = getattr(losses, inner)(ours)([ours.preprocess(column) for column in columns], labels)
    assert abs(alone.item() * options.get("last_layer_weight", 1.0) - got.item()) > 1e-3
    assert_same_gradients(ours, reference, got, expected)
    assert "forward" not in vars(ours)  # the model's own forward again


def test_matryoshka_loss_takes_a_tokenize_batch_batch_and_cuts_its_teacher_labels(both):
    ours, _ = both
    texts = ["A man plays a guitar.", "A dog runs in a park."]
    teacher = torch.randn(2, 384, generator=torch.Generator().manual_seed(0))
    matryoshka = losses.MatryoshkaLoss(ours, losses.MSELoss(ours), [384, 64])
    expected = sum(torch.nn.functional.mse_loss(losses.cut(ours.encode(texts, convert_to_tensor=True), width),
                                                teacher[:, :width]) for width in (384, 64))
    with torch.no_grad():
        got = matryoshka(losses.tokenize_batch(ours, [texts], teacher))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_matryoshka_loss_arguments_that_do_not_fit_are_errors(both):
    ours, _ = both
    inner = losses.MultipleNegativesRankingLoss(ours)
    with pytest.raises(ValueError, match=r"matryoshka_dims \[384, 512\]: one or more widths, each from 1 to the "
                                         r"model's 384"):
        losses.MatryoshkaLoss(ours, inner, [384, 512])
    with pytest.raises(ValueError, match="matryoshka_dims"):
        losses.MatryoshkaLoss(ours, inner, [])
    with pytest.raises(ValueError, match="matryoshka_weights has 1 weights for 2 matryoshka_dims"):
        losses.MatryoshkaLoss(ours, inner, [384, 64], [1.0])
    with pytest.warns(UserWarning, match="leave out the model's own width, 384"):
        losses.MatryoshkaLoss(ours, inner, [256, 64])
    # sentence-transformers only warns that the two do not go together
    with pytest.raises(ValueError, match="AdaptiveLayerLoss cannot run around CachedMultipleNegativesRankingLoss"):
        losses.AdaptiveLayerLoss(ours, losses.CachedMultipleNegativesRankingLoss(ours))
    with pytest.raises(ValueError, match="layer_weighting is uniform, log, linear or a function of the layer"):
        losses.AdaptiveLayerLoss(ours, inner, layer_weighting="square")


@pytest.mark.parametrize("inner,options", [
    ("CachedMultipleNegativesRankingLoss", {"matryoshka_dims": [384, 128, 32]}),
    ("CachedMultipleNegativesRankingLoss",
     {"matryoshka_dims": [64, 384, 256], "matryoshka_weights": [1.0, 2.0, 0.5], "n_dims_per_step": 2}),
    ("CachedGISTEmbedLoss", {"matryoshka_dims": [384, 96]})])
def test_matryoshka_loss_around_a_cached_loss_gives_sentence_transformers_values_and_gradients(minilm_folder,
                                                                                             triplets, inner, options):
    # the cached loss's second pass runs after MatryoshkaLoss returns: the widths are summed over its cached
    # embeddings (sentence-transformers' CachedLossDecorator); a guide's embeddings stay whole
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    guides = ([SentenceTransformer(minilm_folder)], [Reference(str(minilm_folder), device="cpu")]) if "GIST" in inner \
        else ([], [])
    extra = {"temperature": 0.05} if "GIST" in inner else {}
    ours_inner = getattr(losses, inner)(ours, *guides[0], mini_batch_size=3, **extra)
    ours_loss = losses.MatryoshkaLoss(ours, ours_inner, **options)
    their_loss = reference_losses.MatryoshkaLoss(
        reference, getattr(reference_losses, inner)(reference, *guides[1], mini_batch_size=3, **extra), **options)
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    random.seed(1)  # n_dims_per_step's draw
    got = ours_loss([ours.preprocess(column) for column in columns])
    random.seed(1)
    expected = their_loss([reference.preprocess(column) for column in columns], None)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5) and got.item() > 0
    with torch.no_grad():  # not the full width's loss alone
        alone = ours_inner([ours.preprocess(column) for column in columns])
    assert abs(alone.item() - got.item()) > 1e-3
    assert_same_gradients(ours, reference, got, expected)


def test_cached_loss_pieces_by_token_count_give_sentence_transformers_values_and_gradients(minilm_folder, triplets):
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_loss = losses.CachedMultipleNegativesRankingLoss(ours, mini_batch_size=2, mini_batch_num_tokens=40)
    their_loss = reference_losses.CachedMultipleNegativesRankingLoss(reference, mini_batch_size=2,
                                                                    mini_batch_num_tokens=40)
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    features = [ours.preprocess(column) for column in columns]
    # greedy in order: as many texts as hold 40 real tokens, one at least even if it holds more
    counts = features[0]["attention_mask"].sum(dim=1).tolist()
    pieces = losses.split_features(features[0], 2, 40)
    expected_sizes, size, total = [], 0, 0
    for count in counts:
        if size and total + count > 40:
            expected_sizes.append(size)
            size, total = 0, 0
        size, total = size + 1, total + count
    expected_sizes.append(size)
    assert [len(piece["input_ids"]) for piece in pieces] == expected_sizes and len(set(expected_sizes)) > 1
    got = ours_loss(features)
    expected = their_loss([reference.preprocess(column) for column in columns], None)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert_same_gradients(ours, reference, got, expected)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=f"mini_batch_num_tokens must be a positive integer or None, not {bad}"):
            losses.CachedMultipleNegativesRankingLoss(ours, mini_batch_num_tokens=bad)


def test_losses_take_sentence_transformers_arguments_in_its_order():
    # code ported from sentence-transformers may pass them by position
    import inspect
    compared = 0
    for name in dir(losses):
        ours, theirs = getattr(losses, name), getattr(reference_losses, name, None)
        if not (isinstance(ours, type) and issubclass(ours, torch.nn.Module) and isinstance(theirs, type)):
            continue
        their_parameters = list(inspect.signature(theirs).parameters)
        if their_parameters == ["args", "kwargs"]:  # a deprecated name's forwarding
            continue
        assert list(inspect.signature(ours).parameters)[:len(their_parameters)] == their_parameters, name
        compared += 1
    assert compared >= 15


def test_cached_in_batch_negatives_replay_each_piece_with_the_dropout_it_drew(minilm_folder, triplets):
    """With dropout on, the gradients are those of the pieces embedded with gradients in the first pass's order
    (the same dropout masks), the loss computed over all of them at once; and the random stream goes on as after
    that one pass."""
    model = SentenceTransformer(minilm_folder).train()
    columns = [model.preprocess(list(column)) for column in zip(*(t.texts for t in triplets))]
    cached = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3)
    torch.manual_seed(0)
    cached(columns).backward()
    after_cached = torch.rand(1)
    got = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(0)
    embeddings = [torch.cat([model(dict(piece))["sentence_embedding"] for piece in losses.split_features(features, 3)])
                  for features in columns]
    cached.loss_from_embeddings(embeddings[0], embeddings[1:]).backward()
    assert torch.equal(torch.rand(1), after_cached)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_cached_in_batch_negatives_take_a_tokenize_batch_batch_and_run_without_gradients(both, triplets):
    ours, _ = both
    columns = [list(column) for column in zip(*(t.texts for t in triplets))]
    cached = losses.CachedMultipleNegativesRankingLoss(ours, mini_batch_size=4)
    with torch.no_grad():
        expected = losses.MultipleNegativesRankingLoss(ours)([ours.preprocess(column) for column in columns])
        got = cached(losses.tokenize_batch(ours, columns))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="mini_batch_size must be a positive integer, not 0"):
        losses.CachedMultipleNegativesRankingLoss(ours, mini_batch_size=0)


@pytest.mark.parametrize("name,options,guide_tokens", [
    # at the default temperature (0.01) these pairs' losses round to 0 in float32
    ("GISTEmbedLoss", {"temperature": 0.05}, None), ("GISTEmbedLoss", {"margin": 0.1, "temperature": 0.1}, None),
    ("GISTEmbedLoss", {"margin_strategy": "relative", "margin": 0.05, "contrast_anchors": False,
                       "temperature": 0.05}, 6),
    ("GISTEmbedLoss", {"contrast_positives": False, "temperature": 0.05}, 6),  # a guide of 6 tokens: retokenized
    ("CachedGISTEmbedLoss", {"temperature": 0.05, "mini_batch_size": 3}, None),
    ("CachedGISTEmbedLoss", {"margin": 0.1, "temperature": 0.1, "mini_batch_size": 2, "mini_batch_num_tokens": 30}, 6)])
@pytest.mark.parametrize("column_count", [2, 3])
def test_gist_embed_loss_gives_sentence_transformers_values_and_gradients(minilm_folder, triplets, name, options,
                                                                          guide_tokens, column_count):
    ours, reference = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    ours_guide, their_guide = SentenceTransformer(minilm_folder), Reference(str(minilm_folder), device="cpu")
    with torch.no_grad():  # a guide that judges otherwise than the model: its token embeddings moved alike in both
        noise = 0.05 * torch.randn(ours_guide.encoder.word_embeddings.weight.shape,
                                   generator=torch.Generator().manual_seed(0))
        ours_guide.encoder.word_embeddings.weight += noise
        their_guide[0].auto_model.embeddings.word_embeddings.weight += noise
    if guide_tokens:
        ours_guide.max_seq_length = their_guide.max_seq_length = guide_tokens
    ours_loss = getattr(losses, name)(ours, ours_guide, **options)
    their_loss = getattr(reference_losses, name)(reference, their_guide, **options)
    assert ours_loss.must_retokenize == their_loss.must_retokenize == bool(guide_tokens)
    columns = [list(column) for column in zip(*(t.texts[:column_count] for t in triplets))]
    got = ours_loss([ours.preprocess(column) for column in columns])
    expected = their_loss([reference.preprocess(column) for column in columns], None)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5) and got.item() > 0
    assert_same_gradients(ours, reference, got, expected)
    assert ours_guide.encoder.layers[0].query.weight.grad is None  # the guide is not trained
