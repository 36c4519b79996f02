"""Quantized embeddings: float32 vectors as int8 / uint8 (255 buckets per dimension) or binary / ubinary (one sign
bit per dimension, packed eight to a byte), the values sentence-transformers' `quantize_embeddings` gives for the
same vectors, so that an index built with either library reads the other's.

int8 and uint8 need each dimension's range (its lowest and highest value): give `ranges` [2, dim] computed once on
a representative set of vectors (`calibration_ranges`), or they are taken from the vectors being quantized, which
then must be more than one (sentence-transformers' default, and its rule). The same text quantizes alike only
under the same ranges.
"""

from __future__ import annotations

import os

import numpy as np

from gte_defaults import PRECISIONS


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def stored_as(precision: str, dim: int) -> tuple[np.dtype, int]:
    """The dtype and the width of a `dim`-dimensional vector at `precision`."""
    width = (dim + 7) // 8 if check_precision(precision).endswith("binary") else dim
    dtype = {"float32": np.float32, "uint8": np.uint8, "ubinary": np.uint8}.get(precision, np.int8)
    return np.dtype(dtype), width


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """[2, dim]: each dimension's lowest and highest value over the rows of `vectors` [n, dim]."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"calibration needs at least two vectors [n, dim], got shape {vectors.shape}")
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)])


def load_ranges(path: str | os.PathLike) -> np.ndarray:
    """float32 [2, dim] ranges from a .npy file (numpy.save of `calibration_ranges`); ValueError saying what is wrong."""
    try:
        ranges = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"ranges {path}: not a readable .npy file ({error})") from None
    if ranges.ndim != 2 or ranges.shape[0] != 2 or not np.issubdtype(ranges.dtype, np.floating):
        raise ValueError(f"ranges {path}: holds {ranges.dtype} {list(ranges.shape)}, not float [2, dim] (each dimension's "
                         "low and high: gte.quantize.calibration_ranges(vectors))")  # fmt: skip
    return ranges.astype(np.float32)


def quantize_embeddings(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """`vectors` [n, dim] at `precision`: float32 [n, dim]; int8 / uint8 [n, dim] (bucket b of 0..255 of each
    dimension's range, stored as b - 128 for int8); binary / ubinary [n, ceil(dim / 8)] (bit set where the value is
    positive, first dimension in the highest bit; ubinary the byte, binary the byte - 128)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [n, dim], got shape {vectors.shape}")
    if check_precision(precision) == "float32":
        return vectors
    if precision.endswith("binary"):
        bits = np.packbits(vectors > 0, axis=-1)  # uint8 [n, ceil(dim / 8)]
        return bits if precision == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    if not len(vectors):
        return np.zeros(vectors.shape, dtype=np.dtype(precision))
    low, high = _checked_ranges(vectors, ranges)
    steps = (high - low) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value in bucket 0
    buckets = np.clip(np.floor((vectors - low) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def _checked_ranges(vectors: np.ndarray, ranges: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if ranges is None:
        if len(vectors) < 2:
            raise ValueError(
                "int8 / uint8 need each dimension's range, and one vector has none: pass ranges [2, dim] "
                "(gte.quantize.calibration_ranges of vectors for representative texts)"
            )
        ranges = calibration_ranges(vectors)
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, vectors.shape[1]):
        raise ValueError(f"ranges must be [2, {vectors.shape[1]}] (each dimension's low and high), got shape {ranges.shape}")
    return ranges[0], ranges[1]
