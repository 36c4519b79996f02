"""Contrastive losses on embeddings, with sentence-transformers' definitions (same values, same gradients).

`RankingLoss` is MultipleNegativesRankingLoss (InfoNCE with in-batch negatives): for each anchor, its own
positive against every document of the batch (all positives, then each hard-negative column), scores scaled
by `scale`; optional directions add query->query, document->query and document->document terms (GTE's
"improved contrastive loss": all four, one joint softmax). `Matryoshka` sums a loss over truncated,
re-normalised embeddings with a weight per dimension. Both take a `gather` that, under torch.distributed,
returns every rank's rows (with gradients), so in-batch negatives span the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from gte_defaults import TRAIN_DIRECTIONS

Gather = Callable[[Tensor], tuple[Tensor, int]]  # local rows -> (every rank's rows, offset of ours among them)
DIRECTIONS = TRAIN_DIRECTIONS  # query_to_doc first: it holds the positive pair
PARTITIONS = ("joint", "per_direction")


def cosine(a: Tensor, b: Tensor) -> Tensor:  # [n, d], [m, d] -> [n, m]
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def dot(a: Tensor, b: Tensor) -> Tensor:
    return a @ b.T


SIMILARITIES = {"cosine": cosine, "dot": dot}


def local(x: Tensor) -> tuple[Tensor, int]:
    """The gather of one process: its own rows."""
    return x, 0


@dataclass(frozen=True)
class RankingLoss:
    scale: float = 20.0
    similarity: str = "cosine"
    directions: tuple[str, ...] = ("query_to_doc",)
    partition: str = "joint"

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"the scale must be positive (20 is usual), got {self.scale}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity {self.similarity!r}: use one of {', '.join(SIMILARITIES)}")
        unknown = set(self.directions) - set(DIRECTIONS)
        if unknown or "query_to_doc" not in self.directions:
            raise ValueError(f"directions {list(self.directions)}: choose among {', '.join(DIRECTIONS)}, query_to_doc "
                             "always (it holds the positive pair)")  # fmt: skip
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition {self.partition!r}: use one of {', '.join(PARTITIONS)}")
        if self.partition == "per_direction" and {"query_to_query", "doc_to_doc"} & set(self.directions):
            raise ValueError("partition 'per_direction' needs every direction to hold the positive pair: drop "
                             "query_to_query and doc_to_doc, or use partition 'joint'")  # fmt: skip

    def __call__(self, anchors: Tensor, documents: Sequence[Tensor], gather: Gather = local) -> Tensor:
        """anchors [b, d]; documents: positives [b, d] then each hard-negative column [b, d]. The mean over the
        local anchors of -log softmax(their positive)."""
        similarity = SIMILARITIES[self.similarity]
        queries, offset = gather(anchors)
        columns = [gather(column)[0] for column in documents]
        b, n = anchors.shape[0], queries.shape[0]
        rows, mine = torch.arange(b), torch.arange(offset, offset + b)
        docs, positives = torch.cat(columns), columns[0][mine]
        own = torch.eye(n, dtype=torch.bool, device=anchors.device)[mine]  # [b, n]: each anchor's own row
        scores = {"query_to_doc": similarity(anchors, docs)}
        if "query_to_query" in self.directions:
            scores["query_to_query"] = similarity(anchors, queries).masked_fill(own, -torch.inf)
        if "doc_to_query" in self.directions:
            scores["doc_to_query"] = similarity(positives, queries)
        if "doc_to_doc" in self.directions:
            scores["doc_to_doc"] = similarity(positives, docs).masked_fill(own.repeat(1, len(columns)), -torch.inf)
        scores = {name: s * self.scale for name, s in scores.items()}
        positive = scores["query_to_doc"][rows, mine]
        if self.partition == "joint":
            log_z = torch.logsumexp(torch.cat(list(scores.values()), dim=1), dim=1)
        else:
            log_z = sum(torch.logsumexp(s, dim=1) for s in scores.values()) / len(scores)
        return (log_z - positive).mean()


def shrink(x: Tensor, dim: int) -> Tensor:
    """The first `dim` values of each row, re-normalised (sentence-transformers' Matryoshka truncation)."""
    return F.normalize(x[..., :dim].float(), dim=-1).to(x.dtype)


@dataclass(frozen=True)
class Matryoshka:
    inner: RankingLoss
    dims: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.dims or any(d < 1 for d in self.dims):
            raise ValueError(f"Matryoshka dimensions must be positive integers, got {list(self.dims)}")
        if len(self.weights) != len(self.dims):
            raise ValueError(f"{len(self.weights)} Matryoshka weights for {len(self.dims)} dimensions: give one per dimension")

    def check(self, dimension: int) -> None:
        if max(self.dims) > dimension:
            raise ValueError(f"Matryoshka dimension {max(self.dims)} exceeds the model's {dimension}: use dimensions up to {dimension}")

    def __call__(self, anchors: Tensor, documents: Sequence[Tensor], gather: Gather = local) -> Tensor:
        return sum(
            weight * self.inner(shrink(anchors, dim), [shrink(d, dim) for d in documents], gather)
            for dim, weight in sorted(zip(self.dims, self.weights), reverse=True)
        )


Loss = RankingLoss | Matryoshka


# ------------------------------------------------------------------------------------ cross-encoders
def binary_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """sentence-transformers' CrossEncoder BinaryCrossEntropyLoss: [n] logits, [n] labels in 0..1; the mean."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def listnet(logits: Tensor, labels: Tensor, sizes: Sequence[int]) -> Tensor:
    """sentence-transformers' ListNetLoss: each query's candidates (`sizes` of them, consecutive in `logits` and
    `labels`) as one distribution; the cross-entropy of softmax(logits) against softmax(labels), mean over queries."""
    rows = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(logits.device)
    columns = torch.cat([torch.arange(n) for n in sizes]).to(logits.device)
    scores = torch.full((len(sizes), max(sizes)), -1e16, device=logits.device)  # a query's missing candidates
    targets = torch.full_like(scores, -torch.inf)
    scores = scores.index_put((rows, columns), logits.float())
    targets = targets.index_put((rows, columns), labels.float())
    return F.cross_entropy(scores, targets.softmax(dim=1))
