"""From token states to one vector per text, on packed tokens: sentence-transformers' Pooling (every mode,
combined, with or without the prompt's tokens), then the Dense and Normalize modules, in the checkpoint's order.

Pooling reads the packed hidden [T, H] of a batch, or only the tokens that `Pooling.picks` names when every
mode reads one token (cls, lasttoken: then `NewModel.run(subset=...)` computes just those in the last layer),
and returns float32 [B, D]. In a `Packing.padded` batch (the ONNX export's) the padding tokens are left out.
The numbers are sentence-transformers' own on right-padded batches; a prompt that pooling leaves out
(`include_prompt: false`) is the first `skip` tokens of every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .padding import Packing

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
ONE_TOKEN_MODES = frozenset({"cls", "lasttoken"})
Skip = int | torch.Tensor  # the tokens pooling leaves out at the start of each sequence (ONNX: an int64 scalar)


@dataclass(frozen=True)
class Pooling:
    modes: tuple[str, ...]  # concatenated in this order
    include_prompt: bool = True

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError(f"pooling needs at least one mode: choose from {', '.join(POOLING_MODES)}")
        bad = [mode for mode in self.modes if mode not in POOLING_MODES]
        if bad:
            raise ValueError(f"pooling {bad[0]!r} is not supported: choose from {', '.join(POOLING_MODES)}")

    @classmethod
    def parse(cls, text: str, include_prompt: bool = True) -> Pooling:
        """'mean', or modes joined by '+' ('cls+mean')."""
        return cls(tuple(text.split("+")), include_prompt)

    @property
    def name(self) -> str:
        return "+".join(self.modes)

    @property
    def one_token(self) -> bool:
        """Every mode reads one token per sequence (cls, lasttoken): the encoder's last layer need not compute the rest."""
        return ONE_TOKEN_MODES.issuperset(self.modes)

    def picks(self, packing: Packing, skip: int = 0) -> torch.Tensor:
        """[B * modes] the tokens the one-token modes read, sequence-major."""
        return torch.stack([_token(mode, packing, skip) for mode in self.modes], dim=1).flatten()

    def __call__(self, hidden: torch.Tensor, packing: Packing, skip: Skip = 0, *, picked: bool = False) -> torch.Tensor:
        """hidden [T, H], or with `picked` the [B * modes, H] tokens that `picks` named -> float32 [B, H * modes]."""
        hidden = hidden.float()
        if picked:
            columns = hidden.view(packing.batch_size, len(self.modes), -1).unbind(1)
        else:
            columns = [_pool(mode, hidden, packing, skip) for mode in self.modes]
        short = (packing.lengths <= skip)[:, None]  # sequences no longer than the prompt: lasttoken has no token
        return torch.cat([c.masked_fill(short, 0.0) if m == "lasttoken" else c for m, c in zip(self.modes, columns)], 1)


def _token(mode: str, packing: Packing, skip: Skip) -> torch.Tensor:
    """[B] the token a one-token mode reads: cls the first after the prompt (the first, if none is), lasttoken the last."""
    starts, lengths = packing.cu_seqlens[:-1].long(), packing.lengths.long()
    if mode == "cls":
        return starts + torch.where(lengths > skip, skip, 0)
    return starts + lengths - 1


def _pool(mode: str, hidden: torch.Tensor, packing: Packing, skip: Skip) -> torch.Tensor:
    """[T, H] -> [B, H] for one mode, over each sequence's tokens from `skip` on."""
    if mode in ONE_TOKEN_MODES:
        return hidden[_token(mode, packing, skip)]
    positions = packing.positions  # [T]
    valid = (positions >= skip) & (positions < packing.per_token(packing.lengths))  # [T]: past the prompt, not padding
    if mode == "max":
        return _sequence_max(hidden.masked_fill(~valid[:, None], float("-inf")), packing)
    weights = valid.float() * (positions + 1 if mode == "weightedmean" else 1)  # [T]
    sums = _sequence_sum(hidden * weights[:, None], packing)
    total = _sequence_sum(weights, packing)[:, None].clamp(min=1e-9)
    return sums / (total.sqrt() if mode == "mean_sqrt_len_tokens" else total)


# Sequences of one length (every padded batch: the ONNX export's) reduce a [B, L, ...] view of the tokens. The graph
# then holds no scatter: ONNX Runtime's ScatterND with a reduction adds from several threads at once and loses updates.
def _sequence_sum(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """[T, ...] -> [B, ...]: the sum over each sequence's tokens."""
    if packing.is_uniform:
        return x.view(packing.batch_size, packing.max_seqlen, *x.shape[1:]).sum(1)
    return x.new_zeros((packing.batch_size, *x.shape[1:])).index_add_(0, _rows(packing), x)


def _sequence_max(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """[T, H] -> [B, H]: the maximum over each sequence's tokens."""
    if packing.is_uniform:
        return x.view(packing.batch_size, packing.max_seqlen, *x.shape[1:]).amax(1)
    index = _rows(packing)[:, None].expand_as(x)
    return x.new_full((packing.batch_size, x.shape[1]), float("-inf")).scatter_reduce(0, index, x, reduce="amax")


def _rows(packing: Packing) -> torch.Tensor:
    """[T] the sequence each token belongs to."""
    return packing.per_token(torch.arange(packing.batch_size, device=packing.seqlens.device))


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) [+ x, or + residual(x) when the sizes differ]."""

    def __init__(self, linear: nn.Linear, activation: nn.Module, residual: nn.Linear | nn.Identity | None = None):
        super().__init__()
        self.linear, self.activation, self.residual = linear, activation, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        return out if self.residual is None else out + self.residual(x)


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class Head(nn.Module):
    """Pooling, then the checkpoint's vector modules (Dense, Normalize) in order; float32 throughout."""

    def __init__(self, pooling: Pooling, steps: Sequence[nn.Module] = ()):
        super().__init__()
        self.pooling = pooling
        self.steps = nn.ModuleList(steps)

    def forward(self, hidden: torch.Tensor, packing: Packing, skip: Skip = 0, picked: bool = False) -> torch.Tensor:
        x = self.pooling(hidden, packing, skip, picked=picked)  # [B, H * modes]
        for step in self.steps:
            x = step(x)
        return x  # [B, D]

    @property
    def dim(self) -> int | None:
        """The output size when a Dense sets it (else the pooled size)."""
        sizes = [step.linear.out_features for step in self.steps if isinstance(step, Dense)]
        return sizes[-1] if sizes else None

    def describe(self) -> str:
        names = [self.pooling.name + ("" if self.pooling.include_prompt else " (without the prompt)")]
        names += [f"Dense {s.linear.in_features}->{s.linear.out_features}" if isinstance(s, Dense) else "Normalize"
                  for s in self.steps]  # fmt: skip
        return ", ".join(names)
