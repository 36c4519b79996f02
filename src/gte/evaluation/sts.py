"""`gte eval sts` / `gte.evaluate_sts`: Spearman and Pearson correlation between the cosine similarity of two
texts' vectors and a gold score (scipy's, on the same numbers), as MTEB's STS tasks report them."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..embed import Embedder
from ..sources import InputError
from .data import read_columns

COLUMNS = ("sentence1", "sentence2", "score")


@dataclass
class StsReport:
    model: str
    pairs: int
    spearman: float
    pearson: float
    seconds: float

    def table(self) -> str:
        return "\n".join(["| pairs | Spearman | Pearson |", "|---:|---:|---:|",
                          f"| {self.pairs} | {self.spearman:.4f} | {self.pearson:.4f} |"])  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_sts(pairs: str | os.PathLike, *, model: str | os.PathLike | None = None, embedder: Embedder | None = None,
                 show_progress: bool | None = None) -> StsReport:  # fmt: skip
    """Correlations of cosine similarity with the gold scores of a file of sentence1, sentence2, score."""
    try:
        from scipy import stats
    except ImportError:
        raise ImportError("gte eval sts needs scipy: pip install 'gte-engine[eval]'") from None

    values = read_columns(pairs, COLUMNS[0], COLUMNS)
    gold = np.asarray(values["score"], dtype=np.float64)
    if len(gold) < 2:
        raise InputError(f"{pairs}: correlations need at least 2 pairs, it has {len(gold)}")
    if np.ptp(gold) == 0:
        raise InputError(f"{pairs}: every gold score is {gold[0]:g}; correlations need scores that differ")
    embedder = embedder or Embedder(model)
    started = time.perf_counter()
    first, second = (embedder.encode(values[c], normalize=True, show_progress=show_progress) for c in COLUMNS[:2])
    cosine = (first.astype(np.float64) * second).sum(axis=1)
    spearman, pearson = stats.spearmanr(cosine, gold).statistic, stats.pearsonr(cosine, gold).statistic
    return StsReport(embedder.model_name, len(gold), float(spearman), float(pearson), time.perf_counter() - started)
