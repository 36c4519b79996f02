"""Rotary position embeddings: plain, fixed NTK scaling, and NTK with `mixed_b`.

The inverse frequencies are computed in float32 exactly as the original does (official checkpoints
were trained with those values); the angles are then taken in float64. The cos/sin table lives
outside the state dict and grows on demand for inputs longer than it.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration import NewConfig
from .tracing import is_exporting


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies (NTK scaling is fixed, applied for every length).

    Built on the CPU even under a meta-device context (transformers builds models on "meta").
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    if scaling is None:
        return 1.0 / (theta**exponents)
    factor, mixed_b = float(scaling["factor"]), scaling.get("mixed_b")
    if mixed_b is None:
        return 1.0 / ((theta * factor) ** exponents) / factor ** (2 / head_dim)
    a = torch.tensor(factor, device="cpu").log() / (head_dim / 2) ** mixed_b
    lambdas = (a * torch.arange(1, head_dim // 2 + 1, dtype=torch.float32, device="cpu") ** mixed_b).exp()
    return 1.0 / (theta**exponents) / lambdas


class RotaryEmbedding(nn.Module):
    """Maps positions [T] to (cos, sin) [T, 1, 1, head_dim], from a float32 table that grows as needed."""

    def __init__(self, config: NewConfig, theta: float | None = None):
        """`theta`: the base, when not config.rope_theta (local attention layers' `local_rope_theta`)."""
        super().__init__()
        scaling = config.rope_scaling
        self.inv_freq = inverse_frequencies(config.head_dim, config.rope_theta if theta is None else theta, scaling)
        factor = float(scaling["factor"]) if scaling else 1.0
        self.initial_length = int(config.max_position_embeddings * factor)
        self._table: torch.Tensor | None = None  # [L, 2, head_dim] float32: cos, sin

    @property
    def cached_length(self) -> int:
        return 0 if self._table is None else self._table.shape[0]

    def table(self, length: int, device: torch.device) -> torch.Tensor:
        if self._table is None or self._table.shape[0] < length or self._table.device != device:
            size = max(length, self.initial_length, self.cached_length)
            self._table = self.cos_sin(torch.arange(size, device="cpu")).to(device)
        return self._table

    def cos_sin(self, positions: torch.Tensor) -> torch.Tensor:
        """[N] positions -> [N, 2 (cos, sin), head_dim] float32, the angles taken in float64."""
        freqs = positions.double()[:, None] * self.inv_freq.double().to(positions.device)  # [N, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return torch.stack((emb.cos(), emb.sin()), dim=1).float()

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, 1, D]: they broadcast over (q/k, heads) of a [T, 2, heads, D] tensor.

        An exported graph (torch.export, ONNX) computes them from the positions, so it takes any length;
        eager runs read them from the table."""
        if is_exporting():
            cos_sin = self.cos_sin(positions)
        else:
            cos_sin = self.table(int(positions.max()) + 1, positions.device)[positions]
        cos, sin = cos_sin.to(dtype)[:, None, None].unbind(-2)  # [T, 2, D] -> 2 x [T, 1, 1, D]
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), without building rotate_half(x).

    x [T, ..., D]; cos, sin broadcast against it ([T, 1, ..., D]).
    """
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out
