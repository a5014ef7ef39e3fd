"""The training objectives of the paper (section 3), plus in-batch negatives.

Every loss embeds all its text columns with the one shared model (the siamese / triplet network: the same
weights in every branch) and takes a batch as produced by `tokenize_batch`.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed
import torch.nn.functional as F
from torch import nn

from .similarity import cos_sim

CONCATENATIONS = ("u", "v", "|u-v|", "u*v")  # the parts of the paper's Table 6 ablation


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


def embed_columns(model, batch: dict) -> list[torch.Tensor]:
    """One forward pass of the shared model over every column, split back into u, v[, w]: each (B, dim)."""
    embeddings = model(batch["input_ids"], batch["attention_mask"], lengths=batch.get("lengths"))
    return list(embeddings.chunk(batch["columns"]))


class SoftmaxLoss(nn.Module):
    """Classify (premise, hypothesis) from a concatenation of u, v, |u-v| (and u*v): o = softmax(W [u; v; |u-v|])."""

    def __init__(self, model, num_labels: int = 3, concatenation: tuple[str, ...] = ("u", "v", "|u-v|")):
        super().__init__()
        unknown = [part for part in concatenation if part not in CONCATENATIONS]
        if unknown or not concatenation:
            raise ValueError(f"concatenation {list(concatenation)} is not made of {', '.join(CONCATENATIONS)}")
        self.model = model
        self.concatenation = tuple(concatenation)
        self.classifier = nn.Linear(len(concatenation) * model.get_sentence_embedding_dimension(), num_labels,
                                    device=model.device)

    def forward(self, batch: dict) -> torch.Tensor:
        u, v = embed_columns(self.model, batch)
        parts = {"u": u, "v": v, "|u-v|": (u - v).abs(), "u*v": u * v}
        features = torch.cat([parts[name] for name in self.concatenation], dim=1)  # (B, n * dim)
        return F.cross_entropy(self.classifier(features), batch["labels"].long())


class CosineSimilarityLoss(nn.Module):
    """Regression: the mean squared error between cos(u, v) and the gold similarity scaled to [0, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        u, v = embed_columns(self.model, batch)
        return F.mse_loss(F.cosine_similarity(u, v), batch["labels"].float())


class TripletLoss(nn.Module):
    """max(||a - p|| - ||a - n|| + margin, 0) with Euclidean distance; the paper's margin is 1."""

    def __init__(self, model, margin: float = 1.0):
        super().__init__()
        self.model = model
        self.margin = margin

    def forward(self, batch: dict) -> torch.Tensor:
        anchor, positive, negative = embed_columns(self.model, batch)
        distance = F.pairwise_distance(anchor, positive) - F.pairwise_distance(anchor, negative)
        return F.relu(distance + self.margin).mean()


class MultipleNegativesRankingLoss(nn.Module):
    """In-batch negatives: each anchor must pick its own positive among every positive (and negative) of the
    batch; cross-entropy over scaled cosine similarities (scale 20, as sentence-transformers)."""

    def __init__(self, model, scale: float = 20.0):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, batch: dict) -> torch.Tensor:
        anchors, *candidates = embed_columns(self.model, batch)
        # under DDP the candidates are those of the global batch, so that two processes train as one
        gathered = [gather_across_processes(column) for column in candidates]
        offset = gathered[0][1]
        scores = cos_sim(anchors, torch.cat([rows for rows, _ in gathered])) * self.scale  # (B, G * (columns - 1))
        return F.cross_entropy(scores, offset + torch.arange(len(anchors), device=scores.device))


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
