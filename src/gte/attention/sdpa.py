"""torch's scaled_dot_product_attention.

On the CPU, without padding anywhere: one call per stretch of equal-length sequences (a plain view of
the packed tokens; the Embedder's length-sorted batches make the stretches long). A masked padded
grid is several times slower there than these unmasked calls, even counting their number. Elsewhere,
and for padded batches, one call on the [B, max_seqlen] grid with a key mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..padding import Packing


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    if q.device.type == "cpu" and packing.key_mask is None:
        return _by_runs(q, k, v, packing)
    qg, kg, vg = (packing.to_grid(t).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    mask = packing.grid_key_mask
    out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=None if mask is None else mask[:, None, None, :])
    return packing.from_grid(out.transpose(1, 2))


def _by_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """q, k, v [T, h, d] -> [T, h, d], one unmasked call per run of equal-length sequences."""
    out = torch.empty_like(q)
    heads, dim = q.shape[1:]
    for start, count, length in packing.runs:
        end = start + count * length
        grids = (t[start:end].view(count, length, heads, dim).transpose(1, 2) for t in (q, k, v))  # [count, h, L, d]
        out[start:end] = F.scaled_dot_product_attention(*grids).transpose(1, 2).reshape(end - start, heads, dim)
    return out
