"""Packed tokens: how a batch of T valid tokens splits into B sequences, and the moves between
the caller's padded [B, L] layout, the packed [T] layout and the [B, max_seqlen] attention grid."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True, eq=False)
class Packing:
    """T packed tokens forming B sequences laid end to end.

    `key_mask` is set only when padding tokens are kept in the stream (padded mode, every row
    `max_seqlen` long): it marks the keys a query may attend to.
    """

    seqlens: torch.Tensor  # [B] int64
    max_seqlen: int
    key_mask: torch.Tensor | None = None  # [B, max_seqlen] bool

    @classmethod
    def from_seqlens(cls, seqlens: torch.Tensor) -> Packing:
        return cls(seqlens, int(seqlens.max()))

    @classmethod
    def padded(cls, attention_mask: torch.Tensor) -> Packing:
        """Every position of a [B, L] batch is a token; padding is masked as a key only."""
        batch, length = attention_mask.shape
        seqlens = torch.full((batch,), length, dtype=torch.long, device=attention_mask.device)
        return cls(seqlens, length, attention_mask.bool())

    @cached_property
    def lengths(self) -> torch.Tensor:  # [B] each sequence's valid tokens (in padded mode: the right-padded row's)
        return self.seqlens if self.key_mask is None else self.key_mask.sum(1)

    @property
    def batch_size(self) -> int:
        return self.seqlens.shape[0]

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:  # [B+1] int32
        return torch.nn.functional.pad(self.seqlens.cumsum(0, dtype=torch.int32), (1, 0))

    @cached_property
    def seqlens_list(self) -> list[int]:
        return self.seqlens.tolist()

    @cached_property
    def runs(self) -> list[tuple[int, int, int]]:
        """(first token, sequences, length) of each stretch of consecutive equal-length sequences: a stretch
        is a [sequences, length] grid without padding, a plain view of the packed tokens."""
        out: list[tuple[int, int, int]] = []
        start = 0
        for length in self.seqlens_list:
            if out and out[-1][2] == length:
                first, count, _ = out[-1]
                out[-1] = (first, count + 1, length)
            else:
                out.append((start, 1, length))
            start += length
        return out

    @cached_property
    def positions(self) -> torch.Tensor:  # [T] int64: index of each token within its sequence
        if self.is_uniform:  # from the shape alone, as in per_token
            return torch.arange(self.max_seqlen, device=self.seqlens.device).repeat(self.batch_size)
        starts = self.cu_seqlens[:-1].long().repeat_interleave(self.seqlens)
        return torch.arange(starts.shape[0], device=starts.device) - starts

    @cached_property
    def is_uniform(self) -> bool:
        """All sequences are max_seqlen long: the grid is a plain reshape."""
        return self.key_mask is not None or bool((self.seqlens == self.max_seqlen).all())

    @cached_property
    def grid_index(self) -> torch.Tensor:  # [T]: flat index of each token in the [B, max_seqlen] grid
        rows = torch.arange(self.batch_size, device=self.seqlens.device).repeat_interleave(self.seqlens)
        return rows * self.max_seqlen + self.positions

    @cached_property
    def grid_key_mask(self) -> torch.Tensor | None:  # [B, max_seqlen] bool, None when every key is valid
        if self.key_mask is not None:
            return self.key_mask
        if self.is_uniform:
            return None
        return torch.arange(self.max_seqlen, device=self.seqlens.device) < self.seqlens[:, None]

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """[B, ...] per-sequence values -> [T, ...], repeated for each token of the sequence."""
        if self.is_uniform:  # sizes from the shape alone: exported graphs stay free of data-dependent sizes
            return values.unsqueeze(1).expand(-1, self.max_seqlen, *values.shape[1:]).flatten(0, 1)
        return values.repeat_interleave(self.seqlens, dim=0)

    def first_token_index(self) -> torch.Tensor:  # [B]: index of each sequence's first token
        return self.cu_seqlens[:-1].long()

    def sequence_means(self, x: torch.Tensor) -> torch.Tensor:
        """[T, H] -> [B, H]: each sequence's mean over its valid tokens (padding left out in padded mode)."""
        if self.key_mask is not None:
            valid = self.key_mask.to(x.dtype)
            return (x.view(self.batch_size, self.max_seqlen, -1) * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        rows = torch.arange(self.batch_size, device=x.device).repeat_interleave(self.seqlens)
        sums = x.new_zeros(self.batch_size, x.shape[-1]).index_add_(0, rows, x)
        return sums / self.seqlens[:, None].to(x.dtype)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, max_seqlen, ...], zeros where a sequence is shorter."""
        shape = (self.batch_size, self.max_seqlen, *x.shape[1:])
        if self.is_uniform:
            return x.view(shape)
        grid = x.new_zeros((self.batch_size * self.max_seqlen, *x.shape[1:]))
        return grid.index_copy_(0, self.grid_index, x).view(shape)

    def from_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[B, max_seqlen, ...] -> [T, ...]."""
        flat = x.reshape(self.batch_size * self.max_seqlen, *x.shape[2:])
        return flat if self.is_uniform else flat.index_select(0, self.grid_index)


def unpad_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask -> [T] flat indices of the valid positions, row by row."""
    return attention_mask.reshape(-1).nonzero().squeeze(1)


def pad(x: torch.Tensor, index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[T, ...] packed values -> [B, L, ...] with zeros at padded positions."""
    out = x.new_zeros((batch * length, *x.shape[1:]))
    return out.index_copy(0, index, x).view(batch, length, *x.shape[1:])
