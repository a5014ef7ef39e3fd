"""The training objectives of the paper (section 3), plus in-batch negatives (cached, or guided by a second model),
CoSENT (and AnglE, its angle form), the contrastive losses of pairs labelled alike or unlike, triplets mined in a
batch of texts labelled by class, distillation from a teacher's embeddings (MSELoss) or margins (MarginMSELoss), and
MatryoshkaLoss, which trains embeddings to stay good cut short.

Every loss embeds all its text columns with the one shared model (the siamese / triplet network: the same
weights in every branch) and takes a batch as produced by `tokenize_batch`; or, as sentence-transformers' losses
do, the features of each column (model.tokenize's) and the labels: loss([features_a, features_b], labels). Their
arguments are sentence-transformers' too, under its names and defaults.
"""


import bisect
import copy
import math
import random
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed
import torch.nn.functional as F
from torch import nn

from .data import InputExample
from .models import check_token_features
from .pooling import prompt_length_of
from .similarity import cos_sim, pairwise_angle_sim, pairwise_cos_sim, pairwise_dot_score

CONCATENATIONS = ("u", "v", "|u-v|", "u*v")  # the parts of the paper's Table 6 ablation
DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")  # MultipleNegativesRankingLoss's


def tokenize_batch(model, columns: list[list[str]], labels=None) -> dict:
    """Texts column by column (sentence1s, sentence2s[, ...]) -> one padded tensor batch for all columns."""
    texts = [text for column in columns for text in column]
    padded = model.tokenizer(texts)
    if labels is not None:
        padded["labels"] = torch.as_tensor(labels)
    # to a GPU from pinned memory: the copies neither wait for the GPU's queue nor make the host wait
    pinned = model.device.type == "cuda"
    batch = {k: (v.pin_memory() if pinned else v).to(model.device, non_blocking=True) for k, v in padded.items()}
    batch["lengths"] = padded["attention_mask"].sum(1)  # on the CPU: spares the GPU a host sync (Packing)
    batch["columns"] = len(columns)
    return batch


def embed_columns(model, batch, labels, loss: str, columns: int, needs_labels: bool = False,
                  more: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """u, v[, w] (each (B, dim)) and the labels: from a batch of tokenize_batch's, in one forward pass of the shared
    model over every column; or from sentence-transformers' call, the features of each column and the labels. Inputs
    the `loss` cannot take (other than `columns` text columns, or more with `more`; no labels where it needs them)
    are errors that say so, before any work."""
    given = batch["columns"] if isinstance(batch, dict) else len(batch)
    labels = batch.get("labels") if isinstance(batch, dict) else labels
    if not isinstance(batch, dict) and not all(isinstance(features, dict) for features in batch):
        raise TypeError("a loss takes a batch of tokenize_batch's, or a list of the features of each text column "
                        "(dicts from model.tokenize) and the labels")
    if given < columns or (given > columns and not more):
        raise ValueError(f"{loss} takes {columns} text column{'s' * (columns > 1)}{' or more' if more else ''}, "
                         f"not {given}")
    if needs_labels and labels is None:
        raise ValueError(f"{loss} needs labels: loss([features of each column], labels)")
    if isinstance(batch, dict):
        embeddings = model(batch["input_ids"], batch["attention_mask"], lengths=batch.get("lengths"))
        return list(embeddings.chunk(batch["columns"])), labels
    return [model(features)["sentence_embedding"] for features in batch], labels


class SoftmaxLoss(nn.Module):
    """Classify (premise, hypothesis) from a concatenation of u, v, |u-v| (and u*v): o = softmax(W [u; v; |u-v|]).

    The parts are `concatenation`, in its order, or as sentence-transformers names them: u and v
    (concatenation_sent_rep), |u-v| (concatenation_sent_difference), u*v (concatenation_sent_multiplication);
    `embedding_dimension`, sentence-transformers' second argument, is the model's, which it must match if given.
    `loss_fct` takes the logits and the labels (cross-entropy by default). Called without labels, as
    sentence-transformers' LabelAccuracyEvaluator calls it, it gives ([u, v], the logits (B, num_labels))."""

    def __init__(self, model, embedding_dimension: int | None = None, num_labels: int = 3,
                 concatenation_sent_rep: bool = True, concatenation_sent_difference: bool = True,
                 concatenation_sent_multiplication: bool = False, loss_fct: nn.Module | None = None, *,
                 concatenation: tuple[str, ...] | None = None):
        super().__init__()
        dimension = model.get_sentence_embedding_dimension()
        if embedding_dimension is not None and embedding_dimension != dimension:
            raise ValueError(f"embedding_dimension {embedding_dimension}: the model's embeddings have {dimension}")
        flags = (concatenation_sent_rep, concatenation_sent_difference, concatenation_sent_multiplication)
        if concatenation is None:
            concatenation = ("u", "v") * flags[0] + ("|u-v|",) * flags[1] + ("u*v",) * flags[2]
        elif flags != (True, True, False):
            raise ValueError("the concatenation is given twice: by concatenation and by the concatenation_sent_* "
                             "flags")
        unknown = [part for part in concatenation if part not in CONCATENATIONS]
        if unknown or not concatenation:
            raise ValueError(f"concatenation {list(concatenation)} is not made of {', '.join(CONCATENATIONS)}")
        self.model = model
        self.concatenation = tuple(concatenation)
        self.classifier = nn.Linear(len(concatenation) * dimension, num_labels, device=model.device)
        self.loss_fct = loss_fct

    def forward(self, batch, labels: torch.Tensor | None = None):
        (u, v), labels = embed_columns(self.model, batch, labels, "SoftmaxLoss", 2)
        parts = {"u": u, "v": v, "|u-v|": (u - v).abs(), "u*v": u * v}
        features = torch.cat([parts[name] for name in self.concatenation], dim=1)  # (B, n * dim)
        logits = self.classifier(features)  # (B, num_labels)
        if labels is None:
            return [u, v], logits
        if self.loss_fct is None:
            return F.cross_entropy(logits, labels.view(-1).long())
        if self.classifier.out_features == 1 or labels.shape != logits.shape:  # as sentence-transformers shapes them
            labels = labels.view(-1)
        return self.loss_fct(logits, labels)


class CosineSimilarityLoss(nn.Module):
    """Regression: the mean squared error (`loss_fct`) between cos(u, v) (through `cos_score_transformation`) and
    the gold similarity scaled to [0, 1]."""

    def __init__(self, model, loss_fct: nn.Module | None = None, cos_score_transformation: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.loss_fct = nn.MSELoss() if loss_fct is None else loss_fct
        self.cos_score_transformation = nn.Identity() if cos_score_transformation is None else cos_score_transformation

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (u, v), labels = embed_columns(self.model, batch, labels, "CosineSimilarityLoss", 2, needs_labels=True)
        return self.loss_fct(self.cos_score_transformation(F.cosine_similarity(u, v)), labels.float().view(-1))


class CoSENTLoss(nn.Module):
    """Regression by ranking (CoSENT), sentence-transformers' recommended successor to CosineSimilarityLoss: the pairs'
    similarities ordered as their labels order them, log(1 + sum of exp(scale * (s_i - s_j)) over the pairs i, j of
    the batch with label_i < label_j), s the pairwise `similarity_fct` (cosine)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=pairwise_cos_sim):
        super().__init__()
        self.model, self.scale, self.similarity_fct = model, scale, similarity_fct

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (u, v), labels = embed_columns(self.model, batch, labels, type(self).__name__, 2, needs_labels=True)
        if labels.numel() != len(u):
            raise ValueError(f"{type(self).__name__} takes one label per pair: {len(u)} pairs, {labels.numel()} labels")
        labels = labels.view(-1)
        scores = self.similarity_fct(u, v).float() * self.scale  # (B,)
        below = labels[:, None] < labels[None, :]  # pair i's label below pair j's
        differences = (scores[:, None] - scores[None, :])[below]
        return torch.logsumexp(torch.cat((differences.new_zeros(1), differences)), dim=0)  # the 1 inside the log: 0


class AnglELoss(CoSENTLoss):
    """CoSENTLoss on the angle between the embeddings (AnglE, pairwise_angle_sim) instead of their cosine."""

    def __init__(self, model, scale: float = 20.0):
        super().__init__(model, scale, similarity_fct=pairwise_angle_sim)


class TripletDistanceMetric:
    """The distances TripletLoss may take, under sentence-transformers' names: functions of two (B, dim) tensors."""
    COSINE = staticmethod(lambda x, y: 1 - pairwise_cos_sim(x, y))
    EUCLIDEAN = staticmethod(lambda x, y: F.pairwise_distance(x, y, p=2))
    MANHATTAN = staticmethod(lambda x, y: F.pairwise_distance(x, y, p=1))


class TripletLoss(nn.Module):
    """max(d(a, p) - d(a, n) + margin, 0), d the Euclidean distance unless `distance_metric` says otherwise (one of
    TripletDistanceMetric's, or any function of two (B, dim) tensors). The margin is sentence-transformers' default,
    5; the paper's, which train.py takes, is 1."""

    def __init__(self, model, distance_metric=TripletDistanceMetric.EUCLIDEAN, triplet_margin: float = 5.0):
        super().__init__()
        self.model = model
        self.distance_metric = distance_metric
        self.triplet_margin = triplet_margin

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (anchor, positive, negative), _ = embed_columns(self.model, batch, labels, "TripletLoss", 3)
        distance = self.distance_metric(anchor, positive) - self.distance_metric(anchor, negative)
        return F.relu(distance + self.triplet_margin).mean()


class SiameseDistanceMetric:
    """The distances ContrastiveLoss and OnlineContrastiveLoss may take, under sentence-transformers' names."""
    EUCLIDEAN = staticmethod(lambda x, y: F.pairwise_distance(x, y, p=2))
    MANHATTAN = staticmethod(lambda x, y: F.pairwise_distance(x, y, p=1))
    COSINE_DISTANCE = staticmethod(lambda x, y: 1 - F.cosine_similarity(x, y))


def binary_labels(loss: nn.Module, u: torch.Tensor, labels: torch.Tensor, other_labels: str) -> torch.Tensor:
    """The labels of a batch of pairs, one per pair (an error otherwise), flat; warned about once per loss where any
    is neither 0 nor 1 (`other_labels`: what the loss does with them), as sentence-transformers warns."""
    name = type(loss).__name__
    if labels.numel() != len(u):
        raise ValueError(f"{name} takes one label per pair: {len(u)} pairs, {labels.numel()} labels")
    labels = labels.view(-1)
    if not loss.checked_labels:
        loss.checked_labels = True
        if (labels.ne(0) & labels.ne(1)).any():
            warnings.warn(f"{name} expects labels 0 (unlike) and 1 (alike); {other_labels}", stacklevel=3)
    return labels


class ContrastiveLoss(nn.Module):
    """Pairs labelled alike (1) or unlike (0) (Hadsell et al., 2006): half the squared distance of each alike pair,
    half the square of what an unlike pair falls short of `margin`; the mean over the batch (`size_average`), else
    the sum. The distance is the cosine distance unless `distance_metric` says otherwise (one of
    SiameseDistanceMetric's, or any function of two (B, dim) tensors)."""

    def __init__(self, model, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE, margin: float = 0.5,
                 size_average: bool = True):
        super().__init__()
        self.model, self.distance_metric, self.margin, self.size_average = model, distance_metric, margin, size_average
        self.checked_labels = False

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (u, v), labels = embed_columns(self.model, batch, labels, "ContrastiveLoss", 2, needs_labels=True)
        labels = binary_labels(self, u, labels, "others weigh the two terms, label and 1 - label").float()
        distances = self.distance_metric(u, v)
        losses = 0.5 * (labels * distances.pow(2) + (1 - labels) * F.relu(self.margin - distances).pow(2))
        return losses.mean() if self.size_average else losses.sum()


class OnlineContrastiveLoss(nn.Module):
    """ContrastiveLoss over the batch's hard pairs only, summed: the alike pairs (1) further apart than the closest
    unlike pair (0), and the unlike pairs closer than the furthest alike pair. In a batch of one kind, the pairs
    beyond the batch's mean distance (alike) or within it (unlike)."""

    def __init__(self, model, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE, margin: float = 0.5):
        super().__init__()
        self.model, self.distance_metric, self.margin = model, distance_metric, margin
        self.checked_labels = False

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (u, v), labels = embed_columns(self.model, batch, labels, "OnlineContrastiveLoss", 2, needs_labels=True)
        labels = binary_labels(self, u, labels, "pairs with other labels count as neither and are left out")
        distances = self.distance_metric(u, v)
        alike, unlike = distances[labels == 1], distances[labels == 0]
        hard_unlike = unlike[unlike < (alike.max() if len(alike) else unlike.mean())]
        hard_alike = alike[alike > (unlike.min() if len(unlike) else alike.mean())]
        return hard_alike.pow(2).sum() + F.relu(self.margin - hard_unlike).pow(2).sum()


class MSELoss(nn.Module):
    """Distillation (Reimers & Gurevych, 2020, multilingual models): the mean squared error between each text
    column's embeddings and a teacher's, given as the labels: (B, dim) for every column, or (B, columns, dim) one
    per column; the mean over the columns. With `projection_dim`, the embeddings pass through a linear layer of
    this loss's own first (trained with it), to a teacher of another width."""

    def __init__(self, model, projection_dim: int | None = None):
        super().__init__()
        self.model, self.projection_dim = model, projection_dim
        self.projection = None if projection_dim is None else nn.Linear(
            model._output_dimension(None), projection_dim, device=model.device)

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        embeddings, labels = embed_columns(self.model, batch, labels, name, 1, needs_labels=True, more=True)
        labels = torch.as_tensor(labels).detach()
        if labels.dim() == 2:
            teachers = [labels] * len(embeddings)
        elif labels.dim() == 3 and labels.shape[1] == len(embeddings):
            teachers = list(labels.unbind(1))
        else:
            raise ValueError(f"{name} takes the teacher's embeddings as labels, (batch, dim) or (batch, "
                             f"{len(embeddings)} columns, dim), not of shape {tuple(labels.shape)}")
        losses = []
        for student, teacher in zip(embeddings, teachers):
            if self.projection is not None:
                student = self.projection(student.to(self.projection.weight.dtype))
            if teacher.shape != student.shape:
                raise ValueError(f"{name}: the teacher's embeddings {tuple(teacher.shape)} do not match the "
                                 f"student's {tuple(student.shape)}")
            losses.append(self.distance(student, teacher.to(student.device, student.dtype)))
        return torch.stack(losses).mean()

    @staticmethod
    def distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)


class EmbedDistillLoss(MSELoss):
    """MSELoss with another distance (`distance_metric`): "cosine" (the default: 1 - cosine similarity),
    "l2" (the Euclidean distance) or "mse", each averaged over the texts; the projection's weights saved and
    loaded alone (save_projection, load_projection, safetensors), as sentence-transformers' EmbedDistillLoss."""

    def __init__(self, model, distance_metric: str = "cosine", projection_dim: int | None = None):
        if distance_metric not in ("mse", "l2", "cosine"):
            raise ValueError(f"distance_metric is mse, l2 or cosine, not {distance_metric!r}")
        super().__init__(model, projection_dim)
        self.distance_metric = distance_metric

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.distance_metric == "mse":
            return F.mse_loss(student, teacher)
        if self.distance_metric == "l2":
            return torch.norm(student - teacher, dim=-1).mean()
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()

    def save_projection(self, path) -> None:
        if self.projection is None:
            raise ValueError("EmbedDistillLoss has no projection to save: give it projection_dim")
        from safetensors.torch import save_file
        save_file({name: tensor.detach().contiguous() for name, tensor in self.projection.state_dict().items()},
                  str(path))

    def load_projection(self, path) -> None:
        from safetensors.torch import load_file
        tensors = load_file(str(path))
        if "weight" not in tensors:
            raise ValueError(f"{path}: no tensor weight, which a projection saved by save_projection holds")
        outputs, inputs = tensors["weight"].shape
        width = self.model._output_dimension(None)
        if inputs != width or (self.projection is not None and self.projection.out_features != outputs):
            raise ValueError(f"{path}: a projection from {inputs} to {outputs} values, where the student gives "
                             f"{width}" + (f" and this loss projects to {self.projection.out_features}"
                                           if self.projection is not None else ""))
        if self.projection is None:
            self.projection = nn.Linear(inputs, outputs, device=self.model.device)
            self.projection_dim = outputs
        self.projection.load_state_dict(tensors)


class MarginMSELoss(nn.Module):
    """Distillation of a cross-encoder's margins (Hofstätter et al., 2020): for (query, positive, negatives...), the
    mean squared error between sim(q, p) - sim(q, n) (`similarity_fct`, the dot product) and the teacher's margin
    for each negative, given as the labels: (B,) with one negative, (B, negatives) margins, or (B, 1 + negatives)
    scores, the positive's first."""

    def __init__(self, model, similarity_fct=pairwise_dot_score):
        super().__init__()
        self.model, self.similarity_fct, self.loss_fct = model, similarity_fct, nn.MSELoss()

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (query, positive, *negatives), labels = embed_columns(self.model, batch, labels, "MarginMSELoss", 3,
                                                              needs_labels=True, more=True)
        labels = torch.as_tensor(labels).detach()
        B, count = len(query), len(negatives)
        if labels.shape == (B, count + 1):  # scores: to margins
            labels = labels[:, :1] - labels[:, 1:]
        elif labels.shape == (B,):
            labels = labels[:, None]
        if labels.shape != (B, count):
            raise ValueError(f"MarginMSELoss takes the teacher's margins, ({B}, {count}), or its scores, ({B}, "
                             f"{count + 1}) with the positive's first, as labels, not of shape {tuple(labels.shape)}")
        positive_scores = self.similarity_fct(query, positive)
        margins = torch.stack([positive_scores - self.similarity_fct(query, negative) for negative in negatives], 1)
        return self.loss_fct(margins, labels)


class DistillKLDivLoss(nn.Module):
    """Distillation of a teacher's scores over candidates (Lin et al., 2020): for (query, positive, negatives...),
    the KL divergence from the teacher's softmax over its scores (the labels, (B, candidates), at
    `teacher_temperature`) to the student's over sim(q, candidate) (`similarity_fct`, the dot product, at
    `student_temperature`), over the batch, times the student's temperature squared; both temperatures are
    `temperature` unless given. The first batch's teacher scores are looked at once: NaN is an error, and scores so
    spread that the softmax rounds some to 0 (which then teach nothing) a warning, as in sentence-transformers."""

    def __init__(self, model, similarity_fct=pairwise_dot_score, temperature: float = 1.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None):
        super().__init__()
        self.model, self.similarity_fct, self.temperature = model, similarity_fct, temperature
        self.student_temperature = temperature if student_temperature is None else student_temperature
        self.teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
        for name in ("temperature", "student_temperature", "teacher_temperature"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive finite number, not {getattr(self, name)!r}")
        self.checked_teacher = False

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (query, *candidates), labels = embed_columns(self.model, batch, labels, "DistillKLDivLoss", 3,
                                                     needs_labels=True, more=True)
        labels = torch.as_tensor(labels).detach()
        if labels.shape != (len(query), len(candidates)):
            raise ValueError(f"DistillKLDivLoss takes the teacher's scores of each candidate column as labels, "
                             f"({len(query)}, {len(candidates)}), not of shape {tuple(labels.shape)}")
        scores = torch.stack([self.similarity_fct(query, candidate) for candidate in candidates], dim=1)
        teacher = torch.softmax(labels / self.teacher_temperature, dim=1)
        if not self.checked_teacher:
            self.checked_teacher = True
            self.check_teacher(labels, teacher)
        student = torch.log_softmax(scores / self.student_temperature, dim=1)
        return F.kl_div(student, teacher, reduction="batchmean") * self.student_temperature ** 2

    def check_teacher(self, labels: torch.Tensor, teacher: torch.Tensor) -> None:
        if labels.isnan().any():
            raise ValueError("DistillKLDivLoss: the teacher's scores (the labels) hold NaN, which would make the loss "
                             "and every gradient NaN")
        vanished = int((teacher == 0).sum())
        if vanished and not labels.isinf().any():  # an infinite score leaves a candidate out on purpose
            spread = (labels.amax(dim=1) - labels.amin(dim=1)).max().item()
            warnings.warn(f"DistillKLDivLoss: at teacher_temperature {self.teacher_temperature}, {vanished} of the "
                          f"{teacher.numel()} teacher scores become probability 0 and teach nothing (a row spans up "
                          f"to {spread:.1f}): raise teacher_temperature above {spread / 100:.3g}", stacklevel=3)


class GlobalOrthogonalRegularizationLoss(nn.Module):
    """Embeddings spread over the space (global orthogonal regularization, Zhang et al., 2017), a regularizer to add
    to another loss: for each text column, over its texts' similarities to one another (`similarity_fct`, the
    diagonal left out), the square of their mean (mean_weight) and how far the mean of their squares is above
    1 / dim (second_moment_weight); the columns' terms averaged (or summed: `aggregation`). Returns {"gor_mean",
    "gor_second_moment"} (each only where its weight is not 0 or None), as sentence-transformers does: add them to
    the loss it regularizes."""

    def __init__(self, model, similarity_fct=cos_sim, mean_weight: float | None = 1.0,
                 second_moment_weight: float | None = 1.0, aggregation: str = "mean"):
        super().__init__()
        if not mean_weight and not second_moment_weight:
            raise ValueError("mean_weight or second_moment_weight must be above 0: with neither there is no loss")
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation is mean or sum, not {aggregation!r}")
        self.model, self.similarity_fct = model, similarity_fct
        self.mean_weight, self.second_moment_weight, self.aggregation = mean_weight, second_moment_weight, aggregation

    def forward(self, batch, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        embeddings, _ = embed_columns(self.model, batch, labels, "GlobalOrthogonalRegularizationLoss", 1, more=True)
        means, second_moments = zip(*map(self.column_terms, embeddings))
        aggregate = torch.sum if self.aggregation == "sum" else torch.mean
        terms = {}
        if self.mean_weight:
            terms["gor_mean"] = self.mean_weight * aggregate(torch.stack(means))
        if self.second_moment_weight:
            terms["gor_second_moment"] = self.second_moment_weight * aggregate(torch.stack(second_moments))
        return terms

    def column_terms(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        similarities = self.similarity_fct(embeddings, embeddings).fill_diagonal_(0.0)
        pairs = max(len(embeddings) * (len(embeddings) - 1), 1)  # a column of one text: 0 for both
        mean = (similarities.sum() / pairs) ** 2
        second_moment = torch.relu(similarities.pow(2).sum() / pairs - 1.0 / embeddings.shape[1])
        return mean, second_moment


class ContrastiveTensionLoss(nn.Module):
    """Contrastive tension (Carlsson et al., 2021), unsupervised: two copies of the model, `model` (the one kept) and
    a copy of it made here (model1), embed the two texts of each pair; the dot product of the two embeddings is
    a logit of "the same text" (binary cross-entropy, summed over the pairs). The labels are 1 where both columns
    hold the same tokens, unless given. ContrastiveTensionDataLoader makes such batches of sentences."""

    def __init__(self, model):
        super().__init__()
        self.model2, self.model1 = model, copy.deepcopy(model)

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        columns = column_features(batch)
        if len(columns) != 2:
            raise ValueError(f"ContrastiveTensionLoss takes 2 text columns, not {len(columns)}")
        first, second = columns
        scores = (self.model1(dict(first))["sentence_embedding"]
                  * self.model2(dict(second))["sentence_embedding"]).sum(dim=-1)  # (B,)
        if labels is None:  # the same real tokens in both
            labels = torch.tensor([torch.equal(ids1[mask1.bool()], ids2[mask2.bool()]) for ids1, mask1, ids2, mask2
                                   in zip(first["input_ids"], first["attention_mask"], second["input_ids"],
                                          second["attention_mask"])], device=scores.device)
        return F.binary_cross_entropy_with_logits(scores, labels.view(-1).to(scores), reduction="sum")


class ContrastiveTensionLossInBatchNegatives(nn.Module):
    """Contrastive tension with in-batch negatives: `model` and a copy of it made here embed the same texts (the
    first text column); each text's embedding by one copy is to pick its own among the other copy's, both ways
    (cross-entropy over `similarity_fct` times a learned scale, starting at `scale`)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim):
        super().__init__()
        self.model2, self.model1, self.similarity_fct = model, copy.deepcopy(model), similarity_fct
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(scale))

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = column_features(batch)[0]
        scores = self.similarity_fct(self.model1(dict(features))["sentence_embedding"],
                                     self.model2(dict(features))["sentence_embedding"]) * self.logit_scale.exp()
        own = torch.arange(len(scores), device=scores.device)
        return (F.cross_entropy(scores, own) + F.cross_entropy(scores.T, own)) / 2


class ContrastiveTensionDataLoader:
    """Batches of `batch_size` sentence pairs for ContrastiveTensionLoss, from `sentences` (shuffled in place at
    each pass, with Python's random stream): every `pos_neg_ratio`-th pair a sentence twice (label 1), the others
    two different sentences (label 0), as InputExamples; through `collate_fn` where one is set (a model's
    smart_batching_collate), as sentence-transformers' does."""

    def __init__(self, sentences: list[str], batch_size: int, pos_neg_ratio: int = 8):
        if batch_size % pos_neg_ratio:
            raise ValueError(f"ContrastiveTensionDataLoader: batch_size {batch_size} must be a multiple of "
                             f"pos_neg_ratio {pos_neg_ratio}")
        self.sentences, self.batch_size, self.pos_neg_ratio = sentences, batch_size, pos_neg_ratio
        self.collate_fn = None

    def __iter__(self):
        random.shuffle(self.sentences)
        sentences = iter(self.sentences)
        for _ in range(len(self)):
            batch = []
            for index in range(self.batch_size):
                first = next(sentences)
                same = index % self.pos_neg_ratio == 0
                batch.append(InputExample(texts=[first, first if same else next(sentences)], label=int(same)))
            yield batch if self.collate_fn is None else self.collate_fn(batch)

    def __len__(self) -> int:
        return len(self.sentences) // (2 * self.batch_size - self.batch_size // self.pos_neg_ratio)


class BatchHardTripletLossDistanceFunction:
    """The distances between every two embeddings of a batch, (B, B), that the batch triplet losses take, under
    sentence-transformers' names."""

    @staticmethod
    def cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
        return (1 - cos_sim(embeddings, embeddings)).clamp(min=0.0).fill_diagonal_(0.0)

    @staticmethod
    def euclidean_distance(embeddings: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """From the dot products, |a|^2 - 2 a.b + |b|^2 (in float32), as sentence-transformers computes them; the
        square root of a zero distance is taken of 1e-16 and zeroed, so that its gradient stays finite."""
        embeddings = embeddings.float()
        products = embeddings @ embeddings.T
        norms = products.diagonal()
        distances = (norms[None, :] - 2.0 * products + norms[:, None]).clamp(min=0.0)
        if squared:
            return distances
        zero = distances.eq(0).float()
        return (1.0 - zero) * torch.sqrt(distances + zero * 1e-16)

    eucledian_distance = euclidean_distance  # sentence-transformers' older spelling


def batch_distances(loss: nn.Module, batch, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch triplet losses' input: one text column and a class label per text. Returns the distances (B, B),
    which pairs share a label (B, B; the diagonal included) and which pairs are positives (same label, not itself)."""
    name = type(loss).__name__
    (embeddings,), labels = embed_columns(loss.model, batch, labels, name, 1, needs_labels=True)
    if labels.numel() != len(embeddings):
        raise ValueError(f"{name} takes one label per text: {len(embeddings)} texts, {labels.numel()} labels")
    labels = labels.view(-1).to(embeddings.device)
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return loss.distance_metric(embeddings), same, positives


def hardest(distances: torch.Tensor, same: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's furthest positive and nearest negative distance, (B, 1) each (0 where it has no positive)."""
    furthest_positive = (positives.float() * distances).max(1, keepdim=True).values
    # the texts of the same label are pushed out of reach by the row's largest distance
    nearest_negative = (distances + distances.max(1, keepdim=True).values * same.float()).min(1, keepdim=True).values
    return furthest_positive, nearest_negative


class BatchHardTripletLoss(nn.Module):
    """Triplets mined in the batch (Hermans et al., 2017) from texts labelled by class: for each anchor, its
    furthest positive and nearest negative, max(d(a, p) - d(a, n) + margin, 0), the mean over the anchors; d
    Euclidean unless `distance_metric` says otherwise (BatchHardTripletLossDistanceFunction's, or any function of the
    (B, dim) embeddings to (B, B) distances)."""

    def __init__(self, model, distance_metric=BatchHardTripletLossDistanceFunction.euclidean_distance,
                 margin: float = 5):
        super().__init__()
        self.model, self.distance_metric, self.triplet_margin = model, distance_metric, margin

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        furthest_positive, nearest_negative = hardest(*batch_distances(self, batch, labels))
        return F.relu(furthest_positive - nearest_negative + self.triplet_margin).mean()


class BatchHardSoftMarginTripletLoss(BatchHardTripletLoss):
    """BatchHardTripletLoss with a soft margin: log(1 + exp(d(a, p) - d(a, n))), no margin to choose."""

    def __init__(self, model, distance_metric=BatchHardTripletLossDistanceFunction.euclidean_distance):
        super().__init__(model, distance_metric)

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        furthest_positive, nearest_negative = hardest(*batch_distances(self, batch, labels))
        return F.softplus(furthest_positive - nearest_negative).mean()


class BatchAllTripletLoss(BatchHardTripletLoss):
    """Every valid triplet of the batch (anchor, positive of its label, negative of another label): the mean of
    max(d(a, p) - d(a, n) + margin, 0) over the triplets where it is above 0."""

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        distances, same, positives = batch_distances(self, batch, labels)
        anchors, their_positives = positives.nonzero(as_tuple=True)
        # (anchor-positive pairs, B): each pair against every text that is a negative of its anchor
        losses = F.relu(~same[anchors] * (distances[anchors, their_positives][:, None] - distances[anchors]
                                          + self.triplet_margin))
        return losses.sum() / ((losses > 1e-16).sum() + 1e-16)


class BatchSemiHardTripletLoss(BatchHardTripletLoss):
    """Triplets mined in the batch as FaceNet's (Schroff et al., 2015): each anchor-positive pair against its
    semi-hard negative, the nearest negative further from the anchor than the positive (the furthest negative where
    none is), max(d(a, p) - d(a, n) + margin, 0), the mean over the anchor-positive pairs."""

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        distances, same, positives = batch_distances(self, batch, labels)
        negatives = distances.masked_fill(same, float("inf")).sort(dim=1, stable=True).values  # (B, B), nearest first
        # for each (anchor, positive): the first of the anchor's negatives beyond the positive's distance, if any
        beyond = torch.searchsorted(negatives.detach().contiguous(), distances.detach().contiguous(), right=True)
        nearest_beyond = negatives.gather(1, beyond.clamp(max=len(distances) - 1))
        lowest = distances.min(1, keepdim=True).values  # the furthest negative, as sentence-transformers finds it
        furthest = ((distances - lowest) * ~same).max(1, keepdim=True).values + lowest
        semi_hard = torch.where(nearest_beyond.isfinite(), nearest_beyond, furthest)
        losses = F.relu((distances - semi_hard + self.triplet_margin) * positives)
        return losses.sum() / positives.sum().clamp(min=1e-16)


class MultipleNegativesRankingLoss(nn.Module):
    """In-batch negatives: each anchor must pick its own positive among every positive (and negative) of the
    batch; cross-entropy over similarities (`similarity_fct`, cosine) times `scale` (20, as sentence-transformers).
    With `gather_across_devices`, under DDP, among those of every process's batch (train.py gathers them: two
    processes then train as one); each process's own, as in sentence-transformers, by default.

    `directions` adds more candidates for the same choice, as sentence-transformers 6 does: query_to_doc (the
    anchor against every document: positives and negatives; always there), query_to_query (against the other
    anchors), doc_to_query (the anchor's positive against every anchor), doc_to_doc (the anchor's positive against
    the documents of the other anchors). `partition_mode` "joint" takes one softmax over all of them; "per_direction"
    one per direction, their log-normalizers averaged (only directions that hold the positive pair). With
    `hardness_mode` and `hardness_strength` > 0, the query_to_doc scores of some negatives are raised by
    hardness_strength times their similarity (no gradient), so that hard negatives weigh more: the documents of the
    other anchors (in_batch_negatives), the anchor's own hard negatives (hard_negatives), or both (all_negatives)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim, gather_across_devices: bool = False,
                 directions=("query_to_doc",), partition_mode: str = "joint", hardness_mode: str | None = None,
                 hardness_strength: float = 0.0):
        super().__init__()
        unknown = set(directions) - set(DIRECTIONS)
        if unknown or "query_to_doc" not in directions:
            raise ValueError(f"directions {tuple(directions)}: query_to_doc and any of {', '.join(DIRECTIONS[1:])}")
        if partition_mode not in ("joint", "per_direction"):
            raise ValueError(f"partition_mode is joint or per_direction, not {partition_mode!r}")
        if partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(directions):
            raise ValueError("partition_mode per_direction takes only directions that hold the positive pair "
                             "(query_to_doc, doc_to_query), not query_to_query or doc_to_doc: use joint")
        if hardness_mode not in (None, "in_batch_negatives", "hard_negatives", "all_negatives"):
            raise ValueError(f"hardness_mode is None, in_batch_negatives, hard_negatives or all_negatives, not "
                             f"{hardness_mode!r}")
        if not scale > 0 or hardness_strength < 0:
            raise ValueError(f"scale must be positive ({scale}) and hardness_strength at least 0 ({hardness_strength})")
        self.model, self.scale, self.similarity_fct = model, scale, similarity_fct
        self.gather_across_devices = gather_across_devices
        self.directions, self.partition_mode = tuple(directions), partition_mode
        self.hardness_mode, self.hardness_strength = hardness_mode, hardness_strength
        if hardness_mode is not None and hardness_strength == 0:  # as sentence-transformers warns
            warnings.warn(f"hardness_mode {hardness_mode!r} does nothing at hardness_strength 0: give it a positive "
                          "strength", stacklevel=2 if type(self) is MultipleNegativesRankingLoss else 3)

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        (anchors, *columns), _ = embed_columns(self.model, batch, labels, type(self).__name__, 2, more=True)
        return self.loss_from_embeddings(anchors, columns)

    def loss_from_embeddings(self, anchors: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
        """The loss of anchors (B, dim) against the documents of the other columns (each (B, dim): positives, then
        hard negatives)."""
        gather = gather_across_processes if self.gather_across_devices else lambda rows: (rows, 0)
        gathered = [gather(column) for column in columns]
        offset = gathered[0][1]
        documents = torch.cat([rows for rows, _ in gathered])  # (G * (columns - 1), dim), G the global batch
        global_batch = len(gathered[0][0])
        rows = torch.arange(len(anchors), device=anchors.device)
        own = offset + rows  # each anchor's positive among the documents (and its place in the global batch)
        hardness = self.hardness_mode is not None and self.hardness_strength > 0
        if "doc_to_doc" in self.directions or hardness:  # the documents of each anchor's own row (B, documents)
            its_documents = own[:, None] + global_batch * torch.arange(len(columns), device=own.device)  # (B, c - 1)
            same_anchor = torch.zeros(len(anchors), len(documents), dtype=torch.bool, device=anchors.device)
            same_anchor[rows[:, None], its_documents] = True
        scores = {"query_to_doc": self.similarity_fct(anchors, documents)}  # (B, G * (columns - 1))
        if {"query_to_query", "doc_to_query"} & set(self.directions):
            queries = gather(anchors)[0]  # (G, dim)
        if "query_to_query" in self.directions:
            scores["query_to_query"] = self.similarity_fct(anchors, queries).index_put((rows, own), torch.tensor(
                float("-inf"), device=anchors.device))  # not itself
        if "doc_to_query" in self.directions:
            scores["doc_to_query"] = self.similarity_fct(queries, columns[0]).T  # (B, G)
        if "doc_to_doc" in self.directions:  # not the documents of its own anchor
            scores["doc_to_doc"] = self.similarity_fct(documents, columns[0]).T.masked_fill(same_anchor, float("-inf"))
        if hardness:
            positive = same_anchor & (torch.arange(len(documents), device=own.device) < global_batch)[None, :]
            raised = {"in_batch_negatives": ~same_anchor,  # every document of the other anchors' rows
                      "hard_negatives": same_anchor & ~positive,  # the anchor's own hard negatives
                      "all_negatives": ~positive}[self.hardness_mode]  # both
            penalty = self.hardness_strength * scores["query_to_doc"].detach() * raised
        scores = {direction: self.scale * direction_scores for direction, direction_scores in scores.items()}
        if hardness:
            scores["query_to_doc"] = scores["query_to_doc"] + penalty
        if self.partition_mode == "joint":
            log_normalizer = torch.logsumexp(torch.cat(list(scores.values()), dim=1), dim=1)
        else:
            log_normalizer = sum(torch.logsumexp(part, dim=1) for part in scores.values()) / len(scores)
        return (log_normalizer - scores["query_to_doc"][rows, own]).mean()


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """In-batch negatives both ways: each anchor picks its positive among the documents, and each positive its
    anchor among the anchors, the two softmaxes averaged (sentence-transformers' older name for
    MultipleNegativesRankingLoss with directions query_to_doc and doc_to_query, partition_mode per_direction)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim, gather_across_devices: bool = False):
        super().__init__(model, scale, similarity_fct, gather_across_devices, ("query_to_doc", "doc_to_query"),
                         "per_direction")


class GradientCache:
    """GradCache (Gao et al., 2021), for losses over batches larger than fit in memory with gradients: each text
    column is embedded `mini_batch_size` texts at a time without gradients (or, with `mini_batch_num_tokens`, as
    many texts in order as hold that many real tokens, one at least); the loss and its gradient with respect to the
    embeddings are computed over the whole batch; then, as the loss is back-propagated, each mini-batch is embedded
    again with gradients (its dropout drawing what it drew the first time) and given its share of that gradient.
    The loss and the weights' gradients are those of the whole batch at once; the memory, that of one mini-batch.
    `show_progress_bar` shows the mini-batches of each pass."""

    def set_mini_batches(self, mini_batch_size: int, mini_batch_num_tokens: int | None,
                         show_progress_bar: bool) -> None:
        if type(mini_batch_size) is not int or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive integer, not {mini_batch_size!r}")
        if mini_batch_num_tokens is not None and (type(mini_batch_num_tokens) is not int or mini_batch_num_tokens < 1):
            raise ValueError(f"mini_batch_num_tokens must be a positive integer or None, not {mini_batch_num_tokens!r}")
        self.mini_batch_size, self.mini_batch_num_tokens = mini_batch_size, mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def cached_loss(self, columns: list[dict], embedding_loss, around=None) -> torch.Tensor:
        """embedding_loss(the embeddings of each column) over `columns` (the features of each), through GradCache;
        or around(embedding_loss)(...) instead (what MatryoshkaLoss gives, to cut the embeddings first)."""
        embedding_loss = embedding_loss if around is None else around(embedding_loss)
        device = self.model.device
        cached, replays = [], []  # each column's embeddings (no gradients); its pieces with their random states
        with torch.no_grad():
            for features in columns:
                pieces = split_features(features, self.mini_batch_size, self.mini_batch_num_tokens)
                states, embeddings = [], []
                for piece in self.progress(pieces, "Embed mini-batches"):
                    states.append(random_state(device))
                    embeddings.append(self.model(dict(piece))["sentence_embedding"])
                cached.append(torch.cat(embeddings).requires_grad_())
                replays.append(list(zip(pieces, states)))
        loss = embedding_loss(cached)
        if not torch.is_grad_enabled():
            return loss
        gradients = torch.autograd.grad(loss, cached)

        def replay(grad_output: torch.Tensor) -> None:  # as the loss is back-propagated: each piece with gradients
            for column, gradient in zip(replays, gradients):
                sizes = [len(piece["input_ids"]) for piece, _ in column]
                for (piece, state), piece_gradient in zip(self.progress(column, "Back-propagate mini-batches"),
                                                          gradient.split(sizes)):
                    # (the backward pass runs hooks with gradients off)
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
                        set_random_state(state, device)
                        embedded = self.model(dict(piece))["sentence_embedding"]
                    embedded.backward(piece_gradient * grad_output)

        loss = loss.detach().requires_grad_()
        loss.register_hook(replay)
        return loss

    def progress(self, items: list, description: str):
        if not self.show_progress_bar:
            return items
        from tqdm.auto import tqdm
        return tqdm(items, desc=description, leave=False)


class CachedMultipleNegativesRankingLoss(GradientCache, MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss over batches larger than fit in memory with gradients (GradientCache). Called
    as sentence-transformers calls it, loss([features of each column]), or on a tokenize_batch batch."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, gather_across_devices: bool = False,
                 directions=("query_to_doc",), partition_mode: str = "joint", show_progress_bar: bool = False,
                 hardness_mode: str | None = None, hardness_strength: float = 0.0):
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
                         hardness_mode, hardness_strength)
        self.set_mini_batches(mini_batch_size, mini_batch_num_tokens, show_progress_bar)

    def forward(self, batch, labels: torch.Tensor | None = None, around=None) -> torch.Tensor:
        columns = column_features(batch)
        if len(columns) < 2:
            raise ValueError(f"{type(self).__name__} takes 2 text columns or more, not {len(columns)}")
        return self.cached_loss(columns, lambda embeddings: self.loss_from_embeddings(embeddings[0], embeddings[1:]),
                                around)


class MegaBatchMarginLoss(GradientCache, nn.Module):
    """Paraphrase pairs (anchor, positive) over a large batch (Wieting and Gimpel, 2018): each anchor's cosine
    similarity to its positive pushed above `positive_margin`, and to its most similar other positive, its hardest
    negative, below `negative_margin`; summed over the anchors and divided by their number. With
    `use_mini_batched_version` (the default, as in sentence-transformers 6), through GradientCache, so that the
    batch can be larger than fits in memory with gradients."""

    def __init__(self, model, positive_margin: float = 0.8, negative_margin: float = 0.3,
                 use_mini_batched_version: bool = True, mini_batch_size: int = 50,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False):
        super().__init__()
        self.set_mini_batches(mini_batch_size, mini_batch_num_tokens, show_progress_bar)
        self.model, self.positive_margin, self.negative_margin = model, positive_margin, negative_margin
        self.use_mini_batched_version = use_mini_batched_version

    def forward(self, batch, labels: torch.Tensor | None = None, around=None) -> torch.Tensor:
        columns = column_features(batch)
        if len(columns) != 2:
            raise ValueError(f"MegaBatchMarginLoss takes 2 text columns (anchor, positive), not {len(columns)}: its "
                             "negatives are the other anchors' positives")
        if self.use_mini_batched_version:
            return self.cached_loss(columns, self.loss_from_embeddings, around)
        embeddings, _ = embed_columns(self.model, batch, labels, "MegaBatchMarginLoss", 2)
        return (self.loss_from_embeddings if around is None else around(self.loss_from_embeddings))(embeddings)

    def loss_from_embeddings(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        anchors, positives = embeddings
        scores = cos_sim(anchors, positives)  # (B, B)
        rows = torch.arange(len(anchors), device=anchors.device)
        hardest = scores.index_put((rows, rows), torch.tensor(float("-inf"), device=scores.device)).amax(dim=1)
        return (F.relu(self.positive_margin - scores[rows, rows])
                + F.relu(hardest - self.negative_margin)).sum() / len(anchors)


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """MultipleNegativesSymmetricRankingLoss over mini-batches (sentence-transformers' older name for
    CachedMultipleNegativesRankingLoss with directions query_to_doc and doc_to_query, partition_mode
    per_direction)."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, gather_across_devices: bool = False,
                 show_progress_bar: bool = False):
        super().__init__(model, scale, similarity_fct, mini_batch_size, mini_batch_num_tokens, gather_across_devices,
                         ("query_to_doc", "doc_to_query"), "per_direction", show_progress_bar)


def column_features(batch) -> list[dict]:
    """The features of each text column: sentence-transformers' list of them, or a tokenize_batch batch split."""
    if not isinstance(batch, dict):
        return list(batch)
    columns = batch["columns"]
    return [{"input_ids": input_ids, "attention_mask": attention_mask} for input_ids, attention_mask in zip(
        batch["input_ids"].chunk(columns), batch["attention_mask"].chunk(columns))]


def split_features(features: dict, size: int, num_tokens: int | None = None) -> list[dict]:
    """A column's features in pieces of `size` texts; or, with `num_tokens`, of as many texts in order as hold at
    most that many real tokens (their attention mask's sum), one text at least. The tensors with a row per text are
    cut, the rest kept as they are."""
    texts = len(features["input_ids"])
    bounds = list(range(0, texts, size)) + [texts]
    if num_tokens is not None:
        if "attention_mask" not in features:
            raise ValueError("mini_batch_num_tokens counts each text's real tokens by its attention_mask, which "
                             "these features do not hold: use mini_batch_size")
        ends = features["attention_mask"].sum(dim=1).cumsum(dim=0).tolist()  # real tokens up to each text's end
        bounds = [0]
        while bounds[-1] < texts:
            before = ends[bounds[-1] - 1] if bounds[-1] else 0
            bounds.append(max(bisect.bisect_right(ends, before + num_tokens), bounds[-1] + 1))
    return [{key: value[start:end] if isinstance(value, torch.Tensor) and value.dim() else value
             for key, value in features.items()} for start, end in zip(bounds, bounds[1:])]


def random_state(device: torch.device) -> tuple:
    """The random generators' states that dropout on `device` draws from."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_random_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


class GISTEmbedLoss(nn.Module):
    """In-batch negatives guided by a second model (GISTEmbed, Solatorio, 2024): each anchor picks its positive, at
    `temperature`, among the batch's positives (and negatives), the other anchors (`contrast_anchors`) and the other
    positives (`contrast_positives`), leaving out the candidates that `guide` finds as similar to the anchor as its
    own positive, less `margin` (absolute, or relative to that similarity: `margin_strategy`), as likely false
    negatives. The guide embeds the same texts without gradients, retokenized where its vocabulary differs from
    the model's or it takes fewer tokens. With `gather_across_devices`, under DDP, the candidates of every
    process's batch."""

    def __init__(self, model, guide, temperature: float = 0.01, margin_strategy: str = "absolute",
                 margin: float = 0.0, contrast_anchors: bool = True, contrast_positives: bool = True,
                 gather_across_devices: bool = False):
        super().__init__()
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError(f"margin_strategy is absolute or relative, not {margin_strategy!r}")
        self.model, self.guide, self.temperature = model, guide, temperature
        self.margin_strategy, self.margin = margin_strategy, margin
        self.contrast_anchors, self.contrast_positives = contrast_anchors, contrast_positives
        self.gather_across_devices = gather_across_devices
        self.must_retokenize = (model.tokenizer.get_vocab() != guide.tokenizer.get_vocab()
                                or guide.max_seq_length < model.max_seq_length)

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        embeddings, _ = embed_columns(self.model, batch, labels, type(self).__name__, 2, more=True)
        return self.loss_from_embeddings(embeddings, self.guided(batch, len(embeddings)))

    def guided(self, batch, columns: int) -> list[torch.Tensor]:
        """The guide's embeddings of each of the batch's `columns` text columns (2 or 3)."""
        if columns > 3:
            raise ValueError(f"{type(self).__name__} takes 2 or 3 text columns (anchor, positive[, negative]), not "
                             f"{columns}")
        with torch.no_grad():
            return [self.guide(self.guide_features(features))["sentence_embedding"]
                    for features in column_features(batch)]

    def loss_from_embeddings(self, embeddings: list[torch.Tensor], guided: list[torch.Tensor]) -> torch.Tensor:
        """The loss of the model's embeddings of each column (anchor, positive[, negative]) given the guide's."""
        gather = gather_across_processes if self.gather_across_devices else lambda rows: (rows, 0)
        (anchor, positive, *negative), (guided_anchor, guided_positive, *guided_negative) = embeddings, guided
        positive, offset = gather(positive)
        guided_positive = gather(guided_positive)[0]
        rows = torch.arange(len(anchor), device=anchor.device)
        own = offset + rows  # each anchor's positive among the gathered ones
        threshold = similarity_matrix(guided_anchor, guided_positive)[rows, own][:, None]  # (B, 1)
        threshold = threshold - (self.margin if self.margin_strategy == "absolute" else threshold.abs() * self.margin)

        def candidates(queries, guided_queries, keys, guided_keys, keep=None):
            """Similarities (B, N), -inf where the guide finds a key at least as near as the anchor's positive."""
            left_out = similarity_matrix(guided_queries, guided_keys) > threshold
            if keep is not None:
                left_out &= ~keep
            return similarity_matrix(queries, keys).masked_fill(left_out, float("-inf"))

        positive_pair = torch.zeros(len(anchor), len(positive), dtype=torch.bool, device=anchor.device)
        positive_pair[rows, own] = True
        scores = [candidates(anchor, guided_anchor, positive, guided_positive, keep=positive_pair)]
        if self.contrast_anchors:  # not itself
            scores.append(candidates(anchor, guided_anchor, anchor, guided_anchor).index_put(
                (rows, rows), torch.tensor(float("-inf"), device=anchor.device)))
        if self.contrast_positives:  # the anchor's positive against the others
            mine = slice(offset, offset + len(anchor))
            scores.append(candidates(positive[mine], guided_positive[mine], positive, guided_positive).index_put(
                (rows, own), torch.tensor(float("-inf"), device=anchor.device)))
        if negative:
            negative, guided_negative = gather(negative[0])[0], gather(guided_negative[0])[0]
            scores.append(candidates(anchor, guided_anchor, negative, guided_negative))
        return F.cross_entropy(torch.cat(scores, dim=1) / self.temperature, own)

    def guide_features(self, features: dict) -> dict:
        """A column's features as the guide takes them: the same, or its tokens of the texts decoded."""
        if self.must_retokenize:
            texts = self.model.tokenizer.batch_decode(features["input_ids"], skip_special_tokens=True)
            features = self.guide.preprocess(texts)
        return {key: value.to(self.guide.device) if isinstance(value, torch.Tensor) else value
                for key, value in features.items()}


class CachedGISTEmbedLoss(GradientCache, GISTEmbedLoss):
    """GISTEmbedLoss over batches larger than fit in memory with gradients (GradientCache); the guide embeds each
    column whole, without gradients."""

    def __init__(self, model, guide, temperature: float = 0.01, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False,
                 margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
                 contrast_positives: bool = True, gather_across_devices: bool = False):
        super().__init__(model, guide, temperature, margin_strategy, margin, contrast_anchors, contrast_positives,
                         gather_across_devices)
        self.set_mini_batches(mini_batch_size, mini_batch_num_tokens, show_progress_bar)

    def forward(self, batch, labels: torch.Tensor | None = None, around=None) -> torch.Tensor:
        columns = column_features(batch)
        if len(columns) < 2:
            raise ValueError(f"CachedGISTEmbedLoss takes 2 or 3 text columns (anchor, positive[, negative]), not "
                             f"{len(columns)}")
        guided = self.guided(batch, len(columns))
        return self.cached_loss(columns, lambda embeddings: self.loss_from_embeddings(embeddings, guided), around)


def similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The cosine similarity of every row of a with every row of b, (A, B), as GISTEmbed computes it."""
    return F.cosine_similarity(a[:, None], b[None, :], dim=-1)


class MatryoshkaLoss(nn.Module):
    """Embeddings that stay good cut short (Matryoshka representation learning, Kusupati et al., 2022): `loss` over
    the embeddings' first d values, normalized, for each width d of `matryoshka_dims`, weighted by
    `matryoshka_weights` (1 each) and added up; with `n_dims_per_step` > 0, over that many of the widths only,
    drawn at random at each call. The model runs once per batch: for the call, model.forward gives `loss` its
    outputs cut to the width at hand (as in sentence-transformers, which swaps it so too), and labels that are
    embeddings of the model's width (MSELoss's teacher's) are cut alike. Around a cached loss (GradientCache), whose
    second pass runs after forward() returns, the loss over the cached embeddings is the weighted sum over the
    widths instead (as sentence-transformers' CachedLossDecorator; here the cached loss called alone stays itself)."""

    def __init__(self, model, loss: nn.Module, matryoshka_dims, matryoshka_weights=None, n_dims_per_step: int = -1):
        super().__init__()
        width = model._output_dimension(None)
        dims = list(matryoshka_dims)
        if not dims or any(type(dim) is not int or not 0 < dim <= width for dim in dims):
            raise ValueError(f"matryoshka_dims {dims}: one or more widths, each from 1 to the model's {width}")
        weights = [1] * len(dims) if matryoshka_weights is None else list(matryoshka_weights)
        if len(weights) != len(dims):
            raise ValueError(f"matryoshka_weights has {len(weights)} weights for {len(dims)} matryoshka_dims")
        if width not in dims:
            warnings.warn(f"matryoshka_dims {dims} leave out the model's own width, {width}: the whole embedding "
                          "is not trained as such", stacklevel=2)
        self.model, self.loss, self.n_dims_per_step, self.width = model, loss, n_dims_per_step, width
        self.matryoshka_dims, self.matryoshka_weights = zip(*sorted(zip(dims, weights), key=lambda pair: -pair[0]))

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        chosen = range(len(self.matryoshka_dims))
        if 0 < self.n_dims_per_step < len(chosen):
            chosen = sorted(random.sample(chosen, self.n_dims_per_step))
        if isinstance(self.loss, GradientCache):
            def around(embedding_loss):  # the loss of the cached embeddings, cut to each width
                return lambda embeddings: sum(
                    self.matryoshka_weights[index] * embedding_loss([cut(column, self.matryoshka_dims[index])
                                                                     for column in embeddings]) for index in chosen)
            return self.loss(batch, labels, around=around)
        outputs = []  # the model's outputs for this batch, in the order `loss` asks for them
        at = {"width": None, "call": 0}
        model_forward = self.model.forward

        def cut_forward(*args, **kwargs):
            if at["call"] == len(outputs):  # the first width: the model runs
                outputs.append(model_forward(*args, **kwargs))
            output = outputs[at["call"]]
            at["call"] += 1
            if isinstance(output, dict):  # model(features)
                return {**output, "sentence_embedding": cut(output["sentence_embedding"], at["width"])}
            return cut(output, at["width"])

        previous = vars(self.model).get("forward")  # a forward swapped in by a loss around this one
        self.model.forward = cut_forward
        try:
            total = 0.0
            for index in chosen:
                at.update(width=self.matryoshka_dims[index], call=0)
                total = total + self.matryoshka_weights[index] * self.loss(*self.cut_labels(batch, labels, at["width"]))
        finally:
            restore_forward(self.model, previous)
        return total

    def cut_labels(self, batch, labels, width: int) -> tuple:
        """(batch, labels) with labels that are embeddings of the model's width (given, or a tokenize_batch batch's)
        cut to `width`."""
        given = batch.get("labels") if isinstance(batch, dict) else labels
        if not (isinstance(given, torch.Tensor) and given.dim() in (2, 3) and given.shape[-1] == self.width):
            return batch, labels
        if isinstance(batch, dict):
            return {**batch, "labels": given[..., :width]}, labels
        return batch, given[..., :width]


class AdaptiveLayerLoss(nn.Module):
    """Embeddings that stay good from the earlier layers (2D Matryoshka sentence embeddings, Li et al., 2024): `loss`
    over the model's own embeddings (times `last_layer_weight`), plus, for `n_layers_per_step` layers drawn at
    random (all with 0 or less), `loss` over the embeddings pooled from what that layer takes in (the embeddings'
    output for the first), weighted by `layer_weighting` ("uniform", "log": 1 / (1 + ln(1 + i)), "linear":
    1 / (1 + i), or a function of i), averaged and times `prior_layers_weight`; and, with `kl_temperature` > 0,
    the KL divergence of each such layer's embeddings, as softmaxes at that temperature, from the last layer's,
    times the temperature and `kl_div_weight`. The encoder runs once per batch: for the call, model.forward gives
    `loss` the embeddings of the layer at hand (as sentence-transformers swaps it so too). MatryoshkaLoss inside it
    makes sentence-transformers' Matryoshka2dLoss."""

    def __init__(self, model, loss: nn.Module, n_layers_per_step: int = 1, last_layer_weight: float = 1.0,
                 prior_layers_weight: float = 1.0, kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                 layer_weighting="uniform"):
        super().__init__()
        if not callable(layer_weighting) and layer_weighting not in ("uniform", "log", "linear"):
            raise ValueError(f"layer_weighting is uniform, log, linear or a function of the layer, not "
                             f"{layer_weighting!r}")
        if isinstance(loss, GradientCache) or isinstance(getattr(loss, "loss", None), GradientCache):
            raise ValueError(f"AdaptiveLayerLoss cannot run around {type(loss).__name__}, whose second pass runs "
                             "after it returns: use the loss it caches")
        self.model, self.loss, self.n_layers_per_step = model, loss, n_layers_per_step
        self.last_layer_weight, self.prior_layers_weight = last_layer_weight, prior_layers_weight
        self.kl_div_weight, self.kl_temperature, self.layer_weighting = kl_div_weight, kl_temperature, layer_weighting

    def layer_weight(self, index: int) -> float:
        if callable(self.layer_weighting):
            return self.layer_weighting(index)
        return {"uniform": 1.0, "log": 1.0 / (1.0 + math.log(1 + index)),
                "linear": 1.0 / (1 + index)}[self.layer_weighting]

    def forward(self, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        calls = []  # each model call of the first pass: (its layers' token embeddings, attention mask, prompt length)
        at = {"layer": None, "call": 0}
        embedded = []  # the sentence embeddings `loss` was given in this pass
        model = self.model

        def layered_forward(input_ids, attention_mask=None, encoder=None, lengths=None):
            features = input_ids if isinstance(input_ids, dict) else None
            if features is not None:
                check_token_features(features, "model")
                input_ids, attention_mask = features["input_ids"], features["attention_mask"]
            if at["layer"] is None:  # the model runs, its layers kept
                layers, prompt_length = [], None if features is None else prompt_length_of(features)
                tokens, embeddings = model.embed(input_ids, attention_mask, encoder, lengths, prompt_length,
                                                 hidden_states=layers)
                calls.append((layers, attention_mask, prompt_length))
            else:
                layers, attention_mask, prompt_length = calls[at["call"]]
                tokens = layers[at["layer"]].float()
                embeddings = model.sentence_embedding(tokens, attention_mask, prompt_length)
                at["call"] += 1
            embedded.append(embeddings)
            if features is None:
                return embeddings
            features.update(token_embeddings=tokens, sentence_embedding=embeddings)
            return features

        previous = vars(model).get("forward")  # a forward swapped in by a loss around this one
        model.forward = layered_forward
        try:
            total = self.loss(batch, labels) * self.last_layer_weight
            if self.kl_temperature > 0:
                last = F.softmax(torch.cat(embedded) / self.kl_temperature, dim=-1).detach()
            earlier = range(len(calls[0][0]) - 1)
            if 0 < self.n_layers_per_step < len(earlier):
                earlier = random.sample(earlier, self.n_layers_per_step)
            for index in earlier:
                at.update(layer=index, call=0)
                embedded.clear()
                layer_loss = self.loss(batch, labels)
                total = total + layer_loss * self.layer_weight(index) / len(earlier) * self.prior_layers_weight
                if self.kl_temperature > 0:
                    divergence = F.kl_div(F.log_softmax(torch.cat(embedded) / self.kl_temperature, dim=-1), last,
                                          reduction="batchmean")
                    total = total + divergence * self.kl_temperature * self.kl_div_weight
        finally:
            restore_forward(model, previous)
        return total


class Matryoshka2dLoss(AdaptiveLayerLoss):
    """AdaptiveLayerLoss around MatryoshkaLoss around `loss`: embeddings that stay good cut short and from the
    earlier layers (2D Matryoshka), with sentence-transformers' arguments (one width per step by default)."""

    def __init__(self, model, loss: nn.Module, matryoshka_dims, matryoshka_weights=None, n_layers_per_step: int = 1,
                 n_dims_per_step: int = 1, last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0,
                 kl_div_weight: float = 1.0, kl_temperature: float = 0.3, layer_weighting="uniform"):
        super().__init__(model, MatryoshkaLoss(model, loss, matryoshka_dims, matryoshka_weights, n_dims_per_step),
                         n_layers_per_step, last_layer_weight, prior_layers_weight, kl_div_weight, kl_temperature,
                         layer_weighting)


def restore_forward(model, previous) -> None:
    """model.forward back to what it was before a loss swapped it: the class's own, or `previous`."""
    if previous is None:
        del model.forward
    else:
        model.forward = previous


def cut(embeddings: torch.Tensor, width: int) -> torch.Tensor:
    """The first `width` values of each embedding, normalized (in float32 for half types)."""
    return F.normalize(embeddings[..., :width].float(), dim=-1).to(embeddings.dtype)


def gather_across_processes(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of `x` from every process, in rank order, with gradients flowing back to each process; and where
    this process's rows start. Outside a distributed run: (x, 0). Processes may hold different numbers of rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(size) for size in sizes]
    padded = F.pad(x, (0, 0, 0, max(sizes) - len(x)))  # all_gather wants equal shapes
    parts = distributed.all_gather(padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sum(sizes[:dist.get_rank()])


LOSSES = {"softmax": SoftmaxLoss, "cosine": CosineSimilarityLoss, "triplet": TripletLoss,
          "mnrl": MultipleNegativesRankingLoss}
