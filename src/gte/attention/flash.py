"""flash-attn's variable-length kernel over packed tokens, CUDA half precision."""

from __future__ import annotations

import torch

from ..padding import Packing

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # optional extra: pip install 'gte-engine[flash]'
    flash_attn_varlen_func = None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return flash_attn_varlen_func is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    cu = packing.cu_seqlens
    return flash_attn_varlen_func(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen)
