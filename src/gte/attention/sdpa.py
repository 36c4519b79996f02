"""torch's scaled_dot_product_attention on the [B, max_seqlen] grid: padding exists only inside
the attention op (length-sorted batches keep it small), never in the GEMMs around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..padding import Packing


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    qg, kg, vg = (packing.to_grid(t).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    mask = packing.grid_key_mask
    out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=None if mask is None else mask[:, None, None, :])
    return packing.from_grid(out.transpose(1, 2))
