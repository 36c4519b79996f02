"""The reference attention math; the only backend that can return attention probabilities."""

from __future__ import annotations

import torch

from ..padding import Packing


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [T, h, d] -> out [T, h, d], probs [B, h, L, L] on the packing's grid."""
    qg, kg, vg = (packing.to_grid(t).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    scores = qg @ kg.transpose(-1, -2) * q.shape[-1] ** -0.5
    mask = packing.grid_key_mask
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    out = (probs @ vg).transpose(1, 2)
    return packing.from_grid(out), probs


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    return attention_with_probs(q, k, v, packing)[0]
