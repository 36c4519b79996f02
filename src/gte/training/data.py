"""Training data: (anchor, positive[, negative ...]) rows from .jsonl, .csv or parquet, tokenized once.

Columns are found by the names sentence-transformers' datasets use: the anchor is the first of ANCHOR_NAMES,
the positive the first of POSITIVE_NAMES, and every column whose name starts with "negative" is a hard
negative, in file order. A file with none of those names is read as sentence-transformers reads any dataset:
its text columns in order, the first the anchor, the second the positive, the rest negatives.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..embed import TruncationWarning
from ..sources import InputError

ANCHOR_NAMES = ("anchor", "query", "question", "sentence1", "text1")
POSITIVE_NAMES = ("positive", "pos", "document", "answer", "sentence2", "text2")
FORMATS = (".jsonl", ".csv", ".parquet")
TOKENIZE_ROWS = 8192


@dataclass
class Rows:
    """The data's texts: `columns[0]` anchors, `columns[1]` positives, the rest hard negatives (one list per column)."""

    names: list[str]
    columns: list[list[str]]

    def __len__(self) -> int:
        return len(self.columns[0])


@dataclass
class Tokens:
    """Token ids of one column, packed: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # [total] int32
    offsets: np.ndarray  # [rows + 1] int64

    @classmethod
    def pack(cls, rows: list[list[int]]) -> Tokens:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids, offsets)

    @classmethod
    def concat(cls, parts: list[Tokens]) -> Tokens:
        starts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        offsets = np.concatenate([[0], *(p.offsets[1:] + start for p, start in zip(parts, starts))])
        return cls(np.concatenate([p.ids for p in parts]), offsets)

    @classmethod
    def tokenized(cls, texts: list, tokenize: Callable[[list], tuple[list[list[int]], ...]], max_length: int) -> list[Tokens]:
        """One Tokens per sequence `tokenize` returns for a slice of texts (token ids; token type ids), tokenized
        TOKENIZE_ROWS at a time (Python lists of every id at once take gigabytes for a million rows), with one
        TruncationWarning for them all."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            slices = [[cls.pack(rows) for rows in tokenize(texts[i : i + TOKENIZE_ROWS])]
                      for i in range(0, len(texts), TOKENIZE_ROWS)]  # fmt: skip
        for warning in caught:
            if not isinstance(warning.message, TruncationWarning):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        cut = sum(w.message.count for w in caught if isinstance(w.message, TruncationWarning))
        if cut:
            warnings.warn(TruncationWarning(f"{cut} of {len(texts)} training inputs were longer than max_length="
                                            f"{max_length} tokens and were truncated", cut), stacklevel=3)  # fmt: skip
        return [cls.concat(list(parts)) for parts in zip(*slices)]

    def take(self, rows: list[int]) -> list[np.ndarray]:
        return [self.ids[self.offsets[r] : self.offsets[r + 1]] for r in rows]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_rows(location: str | os.PathLike) -> Rows:
    """The anchors, positives and negatives of a training file; InputError for a missing or empty text."""
    table = read_table(Path(location))
    names = _text_columns(table, location)
    columns = [table.column(name).to_pylist() for name in names]
    for name, values in zip(names, columns):
        bad = next((i for i, text in enumerate(values) if not isinstance(text, str) or not text.strip()), None)
        if bad is not None:
            raise InputError(f"{location}, row {bad + 1}: column {name!r} is empty or not text; every row needs an "
                             "anchor, a positive and each negative column filled")  # fmt: skip
    if not columns[0]:
        raise InputError(f"{location}: no rows to train on; give it (anchor, positive) rows")
    return Rows(names, columns)


def epoch_order(rows: int, epoch: int, seed: int) -> list[int]:
    """The rows in the order one epoch visits them: a permutation fixed by (seed, epoch), so a resumed run
    sees the same order as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=generator).tolist()


def read_table(path: Path) -> pa.Table:
    """A whole .jsonl, .csv or parquet file as a table."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: training data must be {', '.join(FORMATS)}, not {suffix or '(no extension)'!r}")
    if not path.exists():
        raise InputError(f"{path}: no such file; check the --data path")
    try:
        if suffix == ".parquet":
            return pyarrow.parquet.read_table(path)
        if suffix == ".csv":
            return pyarrow.csv.read_csv(path)
        return pyarrow.json.read_json(path)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not readable as {suffix[1:]} ({error})") from error


def _text_columns(table: pa.Table, location: str | os.PathLike) -> list[str]:
    names = table.column_names
    anchor = next((n for n in ANCHOR_NAMES if n in names), None)
    positive = next((n for n in POSITIVE_NAMES if n in names), None)
    if anchor is not None and positive is not None:
        return [anchor, positive, *(n for n in names if n.startswith("negative"))]
    texts = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if len(texts) < 2:
        raise InputError(f"{location}: training needs an anchor and a positive text column (named e.g. "
                         f"{ANCHOR_NAMES[0]!r} and {POSITIVE_NAMES[0]!r}); its columns: {', '.join(names) or 'none'}")  # fmt: skip
    return texts
