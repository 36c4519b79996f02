"""torch's own variable-length attention (torch.nn.attention.varlen), CUDA half precision."""

from __future__ import annotations

import torch

from ..padding import Packing

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # older torch
    varlen_attn = None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return varlen_attn is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    cu = packing.cu_seqlens
    return varlen_attn(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen)
