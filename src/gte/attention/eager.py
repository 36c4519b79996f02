"""The reference attention math; the only backend that can return attention probabilities."""

from __future__ import annotations

import torch

from ..padding import Packing


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [T, h, d] -> out [T, h, d], probs [B, h, L, L] on the packing's grid."""
    qg, kg, vg = (packing.to_grid(t).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    scores = qg @ kg.transpose(-1, -2) * q.shape[-1] ** -0.5
    mask = grid_mask(packing, window)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    out = (probs @ vg).transpose(1, 2)
    return packing.from_grid(out), probs


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, window: int | None = None) -> torch.Tensor:
    return attention_with_probs(q, k, v, packing, window)[0]


def grid_mask(packing: Packing, window: int | None) -> torch.Tensor | None:
    """[B or 1, 1, L or 1, L] bool: the keys each query of the grid may see (valid, and within the window of a valid
    query; a padding query, whose output nobody reads, sees every valid key: no row is empty); None: all."""
    keys = packing.grid_key_mask
    band = band_mask(packing.max_seqlen, window, packing.seqlens.device)
    if keys is None:
        return band
    if band is None:
        return keys[:, None, None, :]
    return keys[:, None, None, :] & (band | ~keys[:, None, :, None])


def band_mask(length: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """[1, 1, L, L] bool: |i - j| <= window; None when that holds everywhere (no window, or one as long as L)."""
    if window is None or window >= length - 1:
        return None
    return band(torch.arange(length, device=device), torch.arange(length, device=device), window)[None, None]


def band(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """[Q, K] bool: |query position - key position| <= window."""
    return (queries[:, None] - keys[None, :]).abs() <= window
