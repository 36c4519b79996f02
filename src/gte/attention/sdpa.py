"""torch's scaled_dot_product_attention.

On the CPU, without padding anywhere: one call per stretch of equal-length sequences (a plain view of
the packed tokens; the Embedder's length-sorted batches make the stretches long). A masked padded
grid is several times slower there than these unmasked calls, even counting their number. Elsewhere,
and for padded batches, one call on the [B, max_seqlen] grid with a key mask.

A window (local attention) is a band mask; on the CPU's stretches, queries go in blocks that each see only
the keys within the window of the block: O(L x window) instead of O(L^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..padding import Packing
from .eager import band, grid_mask

MIN_BLOCK = 64  # queries per block of windowed attention on the CPU, at least


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None = None) -> torch.Tensor:
    if q.device.type == "cpu" and packing.key_mask is None:
        return _by_runs(q, k, v, packing, window)
    qg, kg, vg = (packing.to_grid(t).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=grid_mask(packing, window))
    return packing.from_grid(out.transpose(1, 2))


def _by_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None) -> torch.Tensor:
    """q, k, v [T, h, d] -> [T, h, d], one unmasked call per run of equal-length sequences (windowed: per block)."""
    out = torch.empty_like(q)
    heads, dim = q.shape[1:]
    for start, count, length in packing.runs:
        end = start + count * length
        grids = [t[start:end].view(count, length, heads, dim).transpose(1, 2) for t in (q, k, v)]  # [count, h, L, d]
        out[start:end] = _windowed(*grids, window).transpose(1, 2).reshape(end - start, heads, dim)
    return out


def _windowed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    """[n, h, L, d] grids without padding -> [n, h, L, d]; each block of queries against the keys in its reach."""
    length = q.shape[2]
    if window is None or window >= length - 1:
        return F.scaled_dot_product_attention(q, k, v)
    block = max(MIN_BLOCK, window)
    out = torch.empty_like(q)
    positions = torch.arange(length, device=q.device)
    for first in range(0, length, block):
        last = min(first + block, length)
        low, high = max(0, first - window), min(length, last + window)
        mask = band(positions[first:last], positions[low:high], window)  # [block, reach]
        out[:, :, first:last] = F.scaled_dot_product_attention(q[:, :, first:last], k[:, :, low:high], v[:, :, low:high], attn_mask=mask)
    return out
