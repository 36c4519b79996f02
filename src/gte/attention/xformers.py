"""xformers memory-efficient attention over packed tokens (BlockDiagonalMask), CUDA."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch

from ..padding import Packing


@cache
def kernel() -> ModuleType | None:
    """xformers.ops; None without the optional extra (pip install 'gte-engine[xformers]'). Imported on first
    use: xformers loads CUDA kernels, which a CPU run never needs."""
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and kernel() is not None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: None = None) -> torch.Tensor:
    """No window: models with local attention layers run on another backend (Backend.windows)."""
    xops = kernel()
    bias = xops.fmha.BlockDiagonalMask.from_seqlens(packing.seqlens_list)
    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
