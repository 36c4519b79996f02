"""One training step's forward and backward on the packed path: texts' token ids -> vectors with gradients.

Rows are sorted by length and cut into micro-batches of at most `budget` tokens, each run unpadded through
`NewModel.run` and the checkpoint's head (Pooling, Dense, Normalize), so no padding token is ever computed.
With `cached` (GradCache, as sentence-transformers' Cached* losses), the vectors are first computed without
gradients, the loss and its gradients with respect to the vectors next, and then each micro-batch runs
again, replaying its random state (dropout), and back-propagates its share: the step's memory is one
micro-batch's activations, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..embed import Embedder, cut_batches
from ..padding import Packing
from .losses import Gather, Loss, local

Column = Sequence[np.ndarray]  # one column's rows of token ids


def vectors(embedder: Embedder, rows: Column, batch: list[int], skip: int) -> Tensor:
    """[len(batch), D] head outputs of the rows `batch`, with gradients where enabled."""
    device = embedder.device
    ids = torch.from_numpy(np.concatenate([rows[i] for i in batch])).to(device=device, dtype=torch.long)
    packing = Packing.from_seqlens(torch.tensor([len(rows[i]) for i in batch], device=device))
    hidden, _, _ = embedder.encoder.run(ids, packing)  # [T, H]
    return embedder.head(hidden.float(), packing, skip)


def plan(rows: Column, budget: int) -> list[list[int]]:
    """Micro-batches of row indices, at most `budget` tokens each (one row more when a row alone exceeds it)."""
    return cut_batches([len(r) for r in rows], budget)


def embed(embedder: Embedder, rows: Column, skip: int, budget: int, autocast: AbstractContextManager) -> Tensor:
    """[n, D] vectors of every row, in row order, with gradients."""
    batches = plan(rows, budget)
    with autocast:
        parts = [vectors(embedder, rows, batch, skip) for batch in batches]
    order = torch.tensor([i for batch in batches for i in batch], device=embedder.device)
    return torch.cat(parts)[torch.argsort(order)]


def step(
    embedder: Embedder,
    loss: Loss,
    columns: Sequence[Column],
    skips: Sequence[int],
    budget: int,
    *,
    cached: bool = False,
    gather: Gather = local,
    autocast: AbstractContextManager | None = None,
) -> float:
    """Forward, loss and backward for one step's rows (anchors, positives, negatives); the loss's value. The
    gradients land in the parameters' .grad."""
    autocast = autocast or nullcontext()
    if cached:
        return _cached_step(embedder, loss, columns, skips, budget, gather, autocast)
    reps = [embed(embedder, rows, skip, budget, autocast) for rows, skip in zip(columns, skips)]
    value = loss(reps[0], reps[1:], gather)
    value.backward()
    return value.item()


def _cached_step(embedder: Embedder, loss: Loss, columns: Sequence[Column], skips: Sequence[int], budget: int,
                 gather: Gather, autocast: AbstractContextManager) -> float:  # fmt: skip
    """GradCache: vectors without gradients (each micro-batch's random state kept), the loss's gradients with
    respect to them, then each micro-batch again, replayed, back-propagating its rows' share."""
    plans = [plan(rows, budget) for rows in columns]
    states: list[list[RandomState]] = []
    leaves = []
    with torch.no_grad():
        for rows, skip, batches in zip(columns, skips, plans):
            states.append([])
            out = torch.empty(len(rows), embedder.dimension, device=embedder.device)
            for batch in batches:
                states[-1].append(RandomState.capture(embedder.device))
                with autocast:
                    out[batch] = vectors(embedder, rows, batch, skip)
            leaves.append(out.requires_grad_())
    value = loss(leaves[0], leaves[1:], gather)
    value.backward()
    for rows, skip, batches, column_states, leaf in zip(columns, skips, plans, states, leaves):
        for batch, state in zip(batches, column_states):
            with state.replayed(), autocast:
                again = vectors(embedder, rows, batch, skip)
            again.backward(leaf.grad[batch])
    return value.item()


@dataclass
class RandomState:
    """torch's random state (CPU, and the device's when it is CUDA), to replay a micro-batch's dropout exactly."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)

    @contextmanager
    def replayed(self) -> Iterator[None]:
        """This state for the block; the state before it afterwards."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield
