"""Rotary position embeddings: plain, fixed NTK scaling, NTK with `mixed_b`, and dynamic NTK.

The inverse frequencies are computed in float32 exactly as the original does (official checkpoints
were trained with those values); the angles are then taken in float64. The cos/sin table lives
outside the state dict and grows on demand for inputs longer than it.

Dynamic NTK (`{"type": "dynamic", "factor": f, "original_max_position_embeddings": n0}`, nomic-bert's
`rotary_scaling_factor`) is defined per sequence: a sequence of n > n0 valid tokens gets the base
theta * (f * n / n0 - (f - 1)) ** (d / (d - 2)), computed for its own length n; a sequence of at most n0
tokens keeps the plain frequencies. That is what transformers' and nomic's code give a sequence run alone
(or in a padded batch of equal lengths); in their batches the base follows the padded length (and earlier
calls, through a cache) instead, so a sequence's vectors there depend on what it is batched with.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .configuration import NewConfig
from .padding import Packing
from .tracing import is_exporting


def exponents(head_dim: int) -> torch.Tensor:
    """[head_dim / 2] float32: 2i / head_dim, on the CPU even under a meta-device context (transformers builds
    models on "meta")."""
    return torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies; fixed NTK scaling applies for every length (dynamic NTK starts
    from the plain ones: `RotaryEmbedding.sequence_frequencies`)."""
    powers = exponents(head_dim)
    if scaling is None or scaling["type"] == "dynamic":
        return 1.0 / (theta**powers)
    factor, mixed_b = float(scaling["factor"]), scaling.get("mixed_b")
    if mixed_b is None:
        return 1.0 / ((theta * factor) ** powers) / factor ** (2 / head_dim)
    a = torch.tensor(factor, device="cpu").log() / (head_dim / 2) ** mixed_b
    lambdas = (a * torch.arange(1, head_dim // 2 + 1, dtype=torch.float32, device="cpu") ** mixed_b).exp()
    return 1.0 / (theta**powers) / lambdas


class DynamicNTK(NamedTuple):
    factor: float
    trained: int  # n0: sequences longer than this get a base of their own


def dynamic_ntk(config: NewConfig) -> DynamicNTK | None:
    """The config's dynamic NTK scaling (n0 defaults to max_position_embeddings, as in transformers), None without."""
    scaling = config.rope_scaling
    if scaling is None or scaling["type"] != "dynamic":
        return None
    trained = scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    return DynamicNTK(float(scaling["factor"]), int(trained))


class RotaryEmbedding(nn.Module):
    """Maps positions [T] to (cos, sin) [T, 1, 1, head_dim], from a float32 table that grows as needed."""

    def __init__(self, config: NewConfig, theta: float | None = None):
        """`theta`: the base, when not config.rope_theta (local attention layers' `local_rope_theta`)."""
        super().__init__()
        scaling = config.rope_scaling
        self.head_dim, self.theta = config.head_dim, float(config.rope_theta if theta is None else theta)
        self.inv_freq = inverse_frequencies(self.head_dim, self.theta, scaling)
        self.dynamic = dynamic_ntk(config)
        fixed_factor = float(scaling["factor"]) if scaling and self.dynamic is None else 1.0
        self.initial_length = int(config.max_position_embeddings * fixed_factor)
        self._table: torch.Tensor | None = None  # [L, 2, head_dim] float32: cos, sin

    @property
    def cached_length(self) -> int:
        return 0 if self._table is None else self._table.shape[0]

    def table(self, length: int, device: torch.device) -> torch.Tensor:
        if self._table is None or self._table.shape[0] < length or self._table.device != device:
            size = max(length, self.initial_length, self.cached_length)
            self._table = self.cos_sin(torch.arange(size, device="cpu"), self.inv_freq).to(device)
        return self._table

    @staticmethod
    def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """[N] positions, inv_freq [head_dim / 2] or per position [N, head_dim / 2] -> [N, 2 (cos, sin), head_dim]
        float32, the angles taken in float64."""
        freqs = positions.double()[:, None] * inv_freq.double().to(positions.device)  # [N, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return torch.stack((emb.cos(), emb.sin()), dim=1).float()

    def sequence_frequencies(self, lengths: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK: [B] sequence lengths -> [B, head_dim / 2] float32 inverse frequencies, each sequence's
        for its own length (the plain ones up to the trained length)."""
        factor, trained = self.dynamic
        n = lengths.clamp(min=trained).double()  # no negative powers below n0, whose frequencies stay plain
        power = self.head_dim / (self.head_dim - 2)
        bases = self.theta * (factor * n / trained - (factor - 1)) ** power  # in float64, as nomic's Python floats
        scaled = 1.0 / bases.float()[:, None] ** exponents(self.head_dim).to(lengths.device)
        return torch.where((lengths > trained)[:, None], scaled, self.inv_freq.to(lengths.device))

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, 1, D]: they broadcast over (q/k, heads) of a [T, 2, heads, D] tensor. `packing`: the
        sequences the tokens form (dynamic NTK reads their lengths).

        An exported graph (torch.export, ONNX) computes them from the positions, so it takes any length;
        eager runs read them from the table, and compute only the tokens of sequences that dynamic NTK scales."""
        if is_exporting():
            inv_freq = self.inv_freq
            if self.dynamic is not None:
                inv_freq = packing.per_token(self.sequence_frequencies(packing.lengths))
            cos_sin = self.cos_sin(positions, inv_freq)
        else:
            cos_sin = self.table(int(positions.max()) + 1, positions.device)[positions]
            if self.dynamic is not None and self._scales_any(packing):
                self._rescale(cos_sin, positions, packing)
        cos, sin = cos_sin.to(dtype)[:, None, None].unbind(-2)  # [T, 2, D] -> 2 x [T, 1, 1, D]
        return cos, sin

    def _scales_any(self, packing: Packing) -> bool:
        """Whether a sequence is longer than the trained length. max_seqlen, a Python int, bounds the lengths (it is
        the longest one when unpadded): a batch of short sequences costs no device sync."""
        trained = self.dynamic.trained
        return packing.max_seqlen > trained and int(packing.lengths.max()) > trained

    def _rescale(self, cos_sin: torch.Tensor, positions: torch.Tensor, packing: Packing) -> None:
        """Overwrite, in [T, 2, D] `cos_sin`, the tokens of sequences longer than the trained length with their
        sequence's dynamic NTK values."""
        scaled = packing.per_token(packing.lengths > self.dynamic.trained).nonzero().squeeze(1)
        inv_freq = packing.per_token(self.sequence_frequencies(packing.lengths))[scaled]
        cos_sin[scaled] = self.cos_sin(positions[scaled], inv_freq)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), without building rotate_half(x).

    x [T, ..., D]; cos, sin broadcast against it ([T, 1, ..., D]).
    """
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out
