"""xformers memory-efficient attention over packed tokens (BlockDiagonalMask), CUDA."""

from __future__ import annotations

import torch

from ..padding import Packing

try:
    import xformers.ops as xops
except ImportError:  # optional extra: pip install 'gte-engine[xformers]'
    xops = None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return xops is not None and device.type == "cuda"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    bias = xops.fmha.BlockDiagonalMask.from_seqlens(packing.seqlens_list)
    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
