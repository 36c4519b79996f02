"""Where a model run spends its time: exclusive wall time per kind of op.

Hooks on the model's modules and wrappers around the attention backends, RoPE and the packing's grid
moves time each piece; the code being measured is not changed. Categories nest (a GEMM inside the MLP
counts as a GEMM, not as MLP); what no category claims is reported as "other".
(Named profile_ops, not profile, so that it cannot shadow the standard library's `profile` module.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch
from torch import nn

import gte.attention
import gte.layers
from gte.layers import NewAttention, NewEmbeddings, NewGatedMLP, NewLayer, NewMLP
from gte.padding import Packing
from gte.prepack import PackedLinear
from gte.rope import RotaryEmbedding

GEMM = "GEMMs (qkv, o, up_gate, down)"
ATTENTION = "attention kernel"
GRID = "pad/unpad (packed <-> attention grid)"
NORMS = "norms"
ROPE = "RoPE (table + rotation)"
ACTIVATION = "MLP activation (act(gate) * up, or act(up))"
EMBEDDINGS = "embedding lookup"
LAYER_GLUE = "layer glue (residual adds, chunking, subset)"
OTHER = "other (batching, pooling, Python)"


class OpTimer:
    """A stack of open timings; each category gets its time minus its children's."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [category, start, children's time]

    def enter(self, category: str) -> None:
        self.sync()
        self._stack.append([category, time.perf_counter(), 0.0])

    def exit(self) -> None:
        self.sync()
        category, start, children = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[category] += elapsed - children
        if self._stack:
            self._stack[-1][2] += elapsed

    def wrap(self, fn: Callable, category: str) -> Callable:
        def timed(*args, **kwargs):
            self.enter(category)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return timed


def module_category(module: nn.Module) -> str | None:
    if isinstance(module, (nn.Linear, PackedLinear)):
        return GEMM
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return NORMS
    if isinstance(module, RotaryEmbedding):
        return ROPE
    if isinstance(module, (NewGatedMLP, NewMLP)):
        return ACTIVATION
    if isinstance(module, NewEmbeddings):
        return EMBEDDINGS
    if isinstance(module, (NewLayer, NewAttention)):
        return LAYER_GLUE
    return None


@contextlib.contextmanager
def instrumented(model: nn.Module, timer: OpTimer) -> Iterator[None]:
    """Time `model`'s pieces into `timer` while the context is open."""
    handles = []
    for module in model.modules():
        category = module_category(module)
        if category is not None:
            handles.append(module.register_forward_pre_hook(lambda *_, c=category: timer.enter(c)))
            handles.append(module.register_forward_hook(lambda *_: timer.exit()))
    backends = dict(gte.attention.BACKENDS)
    patched = {
        (gte.layers, "apply_rotary"): timer.wrap(gte.layers.apply_rotary, ROPE),
        (Packing, "to_grid"): timer.wrap(Packing.to_grid, GRID),
        (Packing, "from_grid"): timer.wrap(Packing.from_grid, GRID),
    }
    originals = {key: getattr(*key) for key in patched}
    try:
        for name, backend in backends.items():
            gte.attention.BACKENDS[name] = dataclasses.replace(backend, attend=timer.wrap(backend.attend, ATTENTION))
        for (owner, attr), fn in patched.items():
            setattr(owner, attr, fn)
        yield
    finally:
        for handle in handles:
            handle.remove()
        gte.attention.BACKENDS.update(backends)
        for (owner, attr), fn in originals.items():
            setattr(owner, attr, fn)


def profile(model: nn.Module, run: Callable[[], object], sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Seconds per category for one call of `run` (which must use `model`), "other" included."""
    timer = OpTimer(sync)
    with instrumented(model, timer):
        sync()
        start = time.perf_counter()
        run()
        sync()
        total = time.perf_counter() - start
    totals = dict(timer.totals)
    totals[OTHER] = total - sum(totals.values())
    return totals


def profile_table(totals: dict[str, float]) -> str:
    total = sum(totals.values())
    lines = ["| op | time s | share |", "|---|---:|---:|"]
    for category, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {category} | {seconds:.2f} | {seconds / total:.1%} |")
    lines.append(f"| total | {total:.2f} | 100% |")
    return "\n".join(lines)
