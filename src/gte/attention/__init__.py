"""Attention backends behind one interface.

    attend(q, k, v, packing, window=None) -> out   # q, k, v, out: [T, heads, head_dim]; packing: padding.Packing

Queries arrive already scaled by any logn factor; every backend applies 1/sqrt(head_dim). `window` (local
attention) limits each query to the keys of its sequence at most `window` positions away (|i - j| <= window);
a backend that cannot do that says so (`windows`), and models with local attention layers run on one that can.
Adding a backend = one module with `attend` and `available`, plus one line in `BACKENDS`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from . import eager, flash, sdpa, varlen, xformers

logger = logging.getLogger(__name__)

AUTO = "auto"
ALIASES = {"flash_attention_2": "flash_attn", "flash_attention": "flash_attn", "mem_efficient": "xformers"}


@dataclass(frozen=True)
class Backend:
    name: str
    attend: Callable[..., torch.Tensor]
    available: Callable[[torch.device, torch.dtype], bool]
    padded: bool  # can take a padded batch (Packing.key_mask)
    windows: bool = True  # can limit attention to a window (local attention layers)


# In order of preference for "auto".
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("flash_attn", flash.attend, flash.available, padded=False),
        Backend("varlen", varlen.attend, varlen.available, padded=False),
        Backend("xformers", xformers.attend, xformers.available, padded=False, windows=False),
        Backend("sdpa", sdpa.attend, sdpa.available, padded=True),
        Backend("eager", eager.attend, eager.available, padded=True),
    )
}


def canonical_name(name: str | None) -> str:
    """Validate a requested attn_implementation; None means the best available at run time."""
    if name is None:
        return AUTO
    name = ALIASES.get(name, name)
    if name != AUTO and name not in BACKENDS:
        raise ValueError(
            f"unknown attn_implementation {name!r}: choose one of {', '.join([AUTO, *BACKENDS])} (or leave it unset)"
        )
    return name


def requested(name: str | None, memory_efficient: bool) -> str:
    """The backend a model asks for: `name` (checked), or, unset, xformers for a config with
    `use_memory_efficient_attention` (the original's switch) where xformers is installed."""
    if name in (None, AUTO) and memory_efficient:
        if xformers.kernel() is not None:
            return "xformers"
        _no_xformers()
    return canonical_name(name)


@functools.cache
def _no_xformers() -> None:
    logger.warning(
        "use_memory_efficient_attention=True but xformers is not installed: using the best memory-efficient attention "
        "available instead (`pip install 'gte-engine[xformers]'` to get xformers)."
    )


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.available(device, dtype)]


_warned: set[tuple[str, str, str]] = set()


def select(
    requested: str, device: torch.device, dtype: torch.dtype, padded: bool, need_probs: bool, windowed: bool = False
) -> Backend:
    """The backend to run: the requested one if it can serve this call, else the best that can. `windowed`: the
    model has local attention layers."""
    if need_probs:
        return BACKENDS["eager"]
    candidates = [
        b for b in BACKENDS.values() if b.available(device, dtype) and (b.padded or not padded) and (b.windows or not windowed)
    ]
    wanted = BACKENDS.get(requested)
    if wanted is not None and wanted in candidates:
        return wanted
    best = candidates[0]
    if wanted is not None and wanted.available(device, dtype) and (wanted.windows or not windowed):
        return best  # a packed-only kernel asked to run a padded batch: quietly take the padded one
    key = (requested, str(device.type), str(dtype), windowed)
    if wanted is not None and key not in _warned:
        _warned.add(key)
        why = "cannot run local attention (windows)" if wanted.available(device, dtype) else f"is not available for {dtype} on {device.type}"
        logger.warning("attention backend %r %s; using %r instead", requested, why, best.name)
    return best
