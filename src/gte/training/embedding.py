"""The embedding task of `gte train embed`: rows of (anchor, positive, negatives) through an `Embedder`, a
contrastive loss (`losses`) on their vectors, evaluation with `gte eval retrieval`."""

from __future__ import annotations

import os
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from gte_defaults import TRAIN_LOSSES

from ..embed import Embedder
from ..pooling import Dense
from . import checkpoint, forward
from .data import Rows, Tokens, read_rows
from .distributed import World
from .losses import Loss, Matryoshka, RankingLoss

EVAL_METRICS = (("ndcg", 10), ("mrr", 10), ("recall", 10), ("recall", 100))


class EmbedTask:
    """What `trainer.Run` needs of a model and its data: units to batch (rows), a step's loss and backward, saving."""

    default_loss = "mnrl"

    def __init__(self, path: Path, data: Path, options: Any, device: str | None):
        self.embedder = Embedder(path, device=device, dtype="float32", max_length=options.max_length, trainable=True,
                                 show_progress=False)  # fmt: skip
        self.model, self.max_length = self.embedder.model, self.embedder.max_length
        rows = read_rows(data)
        self.units, self.unit = len(rows), "rows"
        self.loss = make_loss(options.loss, options.scale, options.similarity, options.directions,
                              options.matryoshka_dims, options.matryoshka_weights, self.embedder.dimension)  # fmt: skip
        self.cached = options.loss == "cached-mnrl"
        _, self.skips, self.tokens = tokenize(self.embedder, rows)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.embedder.model.parameters(), *self.embedder.head.parameters()]

    def step(self, batch: list[int], world: World, autocast: AbstractContextManager, budget: int | None) -> tuple[float, int]:
        """Loss and backward for these rows; (the loss, the tokens embedded)."""
        columns = [column.take(batch) for column in self.tokens]
        value = forward.step(self.embedder, self.loss, columns, self.skips, budget or self.embedder.batch_tokens,
                             cached=self.cached, gather=world.gather, autocast=autocast)  # fmt: skip
        return value, sum(len(r) for column in columns for r in column)

    def save(self, source: Path, out: Path) -> None:
        """The encoder in the source's layout; each Dense module's weights in its folder."""
        folders = [folder for kind, folder in self.embedder.settings.modules if kind == "Dense"]
        denses = [step for step in self.embedder.head.steps if isinstance(step, Dense)]
        extra = {folder.relative_to(self.embedder.path): dense.state_dict() for folder, dense in zip(folders, denses)}
        checkpoint.save_model(self.embedder.model, source, out, extra)

    def evaluate(self, location: str | os.PathLike) -> dict[str, float]:
        """Retrieval metrics of the model as it is now (gte eval), in eval mode; train mode after."""
        from ..evaluation import evaluate_retrieval

        self.embedder.model.eval()
        self.embedder.head.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="gte-train-eval-") as cache:
                report = evaluate_retrieval(**eval_files(location), embedder=self.embedder, cache_dir=cache,
                                            show_progress=False)  # fmt: skip
        finally:
            self.embedder.model.train()
            self.embedder.head.train()
        scores = report.variants[0].scores
        return {f"{metric}@{k}": scores[metric][k] for metric, k in EVAL_METRICS if k in scores[metric]}


def make_loss(name: str, scale: float, similarity: str, directions: tuple[str, ...], dims: tuple[int, ...],
              weights: tuple[float, ...] | None, dimension: int) -> Loss:  # fmt: skip
    if name not in TRAIN_LOSSES:
        raise ValueError(f"loss {name!r}: an embedding model trains with one of {', '.join(TRAIN_LOSSES)}")
    ranking = RankingLoss(scale, similarity, tuple(directions))
    if name != "matryoshka":
        if dims:
            raise ValueError("Matryoshka dimensions are for loss 'matryoshka': pass --loss matryoshka, or drop the dimensions")
        return ranking
    if not dims:
        raise ValueError(f"loss 'matryoshka' needs its dimensions (e.g. {dimension},{dimension // 2},{dimension // 4})")
    matryoshka = Matryoshka(ranking, tuple(dims), tuple(weights) if weights is not None else (1.0,) * len(dims))
    matryoshka.check(dimension)
    return matryoshka


def tokenize(embedder: Embedder, rows: Rows) -> tuple[list[str], list[int], list[Tokens]]:
    """(prompt, tokens pooling skips, token ids) per column: anchors with the "query" prompt, the others with the
    "document" prompt (sentence-transformers' encode_query / encode_document rule)."""
    document = next(name for name in ("document", "passage", "corpus") if name in embedder.prompts)
    prompts = [embedder.resolve_prompt("query")] + [embedder.resolve_prompt(document)] * (len(rows.columns) - 1)
    tokens = [Tokens.tokenized(texts, lambda chunk, prompt=prompt: (embedder.tokenize(chunk, prompt=prompt),),
                               embedder.max_length)[0] for texts, prompt in zip(rows.columns, prompts)]  # fmt: skip
    return prompts, [embedder.prompt_length(p) for p in prompts], tokens


def eval_files(location: str | os.PathLike) -> dict[str, Any]:
    """evaluate_retrieval's inputs: a BEIR directory's three files, or one pairs file."""
    path = Path(location)
    if not path.is_dir():
        return {"pairs": path}
    qrels = next((q for q in (path / "qrels" / "test.tsv", path / "qrels" / "dev.tsv", path / "qrels.tsv") if q.is_file()),
                 path / "qrels" / "test.tsv")  # fmt: skip
    return {"corpus": path / "corpus.jsonl", "queries": path / "queries.jsonl", "qrels": qrels}
