"""torch's own variable-length attention (torch.nn.attention.varlen), CUDA half precision."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F

from ..padding import Packing

HEAD_DIM_MULTIPLE = 8  # the kernel takes head sizes in multiples of 8 only


@cache
def kernel() -> Callable | None:
    """varlen_attn; None on a torch without it, or whose varlen_attn takes no `scale` or `window_size`. Imported on first use:
    the module imports torch._dynamo (about a second), which a CPU run never needs."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch
        return None
    return varlen_attn if {"scale", "window_size"} <= inspect.signature(varlen_attn).parameters.keys() else None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and kernel() is not None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None = None) -> torch.Tensor:
    """Other head sizes are zero-padded up to the next multiple of 8: zeros change neither the scores
    (q·k) nor the kept output columns, and the scale stays the true head size's. A window is the kernel's
    (left, right) window_size."""
    head_dim = q.shape[-1]
    extra = -head_dim % HEAD_DIM_MULTIPLE
    if extra:
        q, k, v = (F.pad(t, (0, extra)) for t in (q, k, v))
    cu = packing.cu_seqlens
    local = {} if window is None else {"window_size": (window, window)}  # keys [i - left, i + right], inclusive
    out = kernel()(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen, scale=head_dim**-0.5, **local)
    return out[..., :head_dim]
