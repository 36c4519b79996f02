"""flash-attn's variable-length kernel over packed tokens, CUDA half precision."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch

from ..padding import Packing


@cache
def kernel() -> Callable | None:
    """flash_attn_varlen_func; None without the optional extra (pip install 'gte-engine[flash]'). Imported on
    first use: flash-attn loads CUDA kernels, which a CPU run never needs."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and kernel() is not None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None = None) -> torch.Tensor:
    cu = packing.cu_seqlens
    local = {} if window is None else {"window_size": (window, window)}  # keys [i - left, i + right], inclusive
    return kernel()(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen, **local)
