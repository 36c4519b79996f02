"""The cross-encoder task of `gte train rerank`: (query, document, label) pairs through a `Reranker`, scored with
binary cross-entropy per pair or ListNet over each query's candidates (sentence-transformers' CrossEncoder
losses, same values and gradients).

Data: a label column (`label` or `score`, 0..1) beside a query column and a document column (the names of
`data`: anchor / query / ..., positive / document / ...); or (anchor, positive, negatives) rows, each becoming
a pair labelled 1 and a pair labelled 0 per negative. For ListNet, a query's pairs are its candidates (rows
with the same query text, in file order) and a step takes `batch_size` queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gte_defaults import RERANK_LOSSES

from ..embed import cut_batches
from ..padding import Packing
from ..rerank import Reranker
from ..sources import InputError
from . import checkpoint
from .data import ANCHOR_NAMES, POSITIVE_NAMES, Tokens, read_rows, read_table
from .distributed import World
from .losses import binary_cross_entropy, listnet

LABEL_NAMES = ("label", "score")


@dataclass
class Pairs:
    queries: list[str]
    documents: list[str]
    labels: list[float]

    def groups(self) -> list[list[int]]:
        """The pairs of each query (by its text), queries in order of first appearance."""
        found: dict[str, list[int]] = {}
        for i, query in enumerate(self.queries):
            found.setdefault(query, []).append(i)
        return list(found.values())


def read_pairs(location: str | Path) -> Pairs:
    """Labelled (query, document) pairs from a labelled file, or from (anchor, positive, negatives) rows."""
    table = read_table(Path(location))
    label = next((n for n in LABEL_NAMES if n in table.column_names), None)
    if label is None:
        rows = read_rows(location)
        anchors, positives, *negatives = rows.columns
        pairs = Pairs(list(anchors), list(positives), [1.0] * len(anchors))
        for column in negatives:
            pairs.queries += anchors
            pairs.documents += column
            pairs.labels += [0.0] * len(column)
        return pairs
    query = next((n for n in ANCHOR_NAMES if n in table.column_names), None)
    document = next((n for n in (*POSITIVE_NAMES, "passage", "text") if n in table.column_names), None)
    if query is None or document is None:
        raise InputError(f"{location}: labelled pairs need a query column ({', '.join(ANCHOR_NAMES)}) and a document "
                         f"column ({', '.join(POSITIVE_NAMES)}); its columns: {', '.join(table.column_names)}")  # fmt: skip
    labels = table.column(label)
    if not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)) or labels.null_count:
        raise InputError(f"{location}: column {label!r} must hold a number (0..1) in every row")
    pairs = Pairs(table.column(query).to_pylist(), table.column(document).to_pylist(), [float(x) for x in labels.to_pylist()])
    bad = next((i for i, (q, d) in enumerate(zip(pairs.queries, pairs.documents)) if not _text(q) or not _text(d)), None)
    if bad is not None:
        raise InputError(f"{location}, row {bad + 1}: the query or the document is empty or not text; fill it or drop "
                         "the row")  # fmt: skip
    return pairs


class RerankTask:
    """A cross-encoder for `trainer.Run`: units are pairs (bce) or queries (listnet); no `evaluate`."""

    default_loss = "bce"

    def __init__(self, path: Path, data: Path, options: Any, device: str | None):
        if options.loss not in RERANK_LOSSES:
            raise ValueError(f"loss {options.loss!r}: a reranker trains with one of {', '.join(RERANK_LOSSES)}")
        self.reranker = Reranker(path, device=device, dtype="float32", max_length=options.max_length, trainable=True,
                                 show_progress=False)  # fmt: skip
        self.model, self.max_length, self.listwise = self.reranker.model, self.reranker.max_length, options.loss == "listnet"
        pairs = read_pairs(data)
        self.labels = torch.tensor(pairs.labels)
        self.groups = pairs.groups() if self.listwise else [[i] for i in range(len(pairs.labels))]
        self.units, self.unit = len(self.groups), "queries" if self.listwise else "pairs"
        inputs = list(zip(pairs.queries, pairs.documents))
        tracks = Tokens.tokenized(inputs, lambda chunk: tuple(t for t in self.reranker.tokenize(chunk) if t is not None),
                                  self.max_length)  # fmt: skip
        self.ids, self.types = tracks[0], (tracks[1] if len(tracks) > 1 else None)  # token ids; token type ids

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def step(self, batch: list[int], world: World, autocast: AbstractContextManager, budget: int | None) -> tuple[float, int]:
        """Loss and backward for these pairs (or queries' candidates); (the loss, the tokens scored)."""
        groups = [self.groups[i] for i in batch]
        pairs = [i for group in groups for i in group]
        ids = self.ids.take(pairs)
        types = None if self.types is None else self.types.take(pairs)
        with autocast:
            logits = self.logits(ids, types, budget or self.reranker.batch_tokens)
        labels = self.labels[pairs].to(logits.device)
        loss = listnet(logits, labels, [len(g) for g in groups]) if self.listwise else binary_cross_entropy(logits, labels)
        loss.backward()
        return loss.item(), sum(len(r) for r in ids)

    def logits(self, ids: Sequence[np.ndarray], types: Sequence[np.ndarray] | None, budget: int) -> torch.Tensor:
        """[n] logits of the pairs, with gradients: micro-batches of at most `budget` tokens, unpadded."""
        device, parts = self.reranker.device, []
        batches = cut_batches([len(r) for r in ids], budget)
        for batch in batches:
            flat = torch.from_numpy(np.concatenate([ids[i] for i in batch])).to(device=device, dtype=torch.long)
            kinds = None if types is None else torch.from_numpy(np.concatenate([types[i] for i in batch])).to(device=device, dtype=torch.long)
            packing = Packing.from_seqlens(torch.tensor([len(ids[i]) for i in batch], device=device))
            pooler = self.model.new.pooler
            hidden, _, _ = self.model.new.run(flat, packing, token_type_ids=kinds, subset=pooler.picks(packing))
            parts.append(self.model.classifier(self.model.dropout(pooler(hidden, packing))).float().view(-1))
        order = torch.tensor([i for batch in batches for i in batch], device=device)
        return torch.cat(parts)[torch.argsort(order)]

    def save(self, source: Path, out: Path) -> None:
        checkpoint.save_model(self.model, source, out)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
