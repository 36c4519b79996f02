"""torch's own variable-length attention (torch.nn.attention.varlen), CUDA half precision."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch

from ..padding import Packing


@cache
def kernel() -> Callable | None:
    """varlen_attn; None on a torch without it. Imported on first use: the module imports torch._dynamo
    (about a second), which a CPU run never needs."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch
        return None
    return varlen_attn


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and kernel() is not None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    cu = packing.cu_seqlens
    return kernel()(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen)
