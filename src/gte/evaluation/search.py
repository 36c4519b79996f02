"""Exact nearest-neighbour search in bounded memory: every query against every document, block by block.

The scores of one block of queries against one block of documents are the only thing computed beyond the inputs
and the running top k: [QUERY_BLOCK, CORPUS_BLOCK] float32, 64 MiB, whatever the corpus's size.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ..embed import progress_enabled

QUERY_BLOCK = 1024
CORPUS_BLOCK = 16384


def top_k(
    queries: np.ndarray,  # [Q, d]
    corpus: np.ndarray,  # [N, d]
    k: int,
    dim: int | None = None,
    show_progress: bool | None = False,  # None: a bar on a terminal, for long searches
) -> tuple[np.ndarray, np.ndarray]:
    """The k highest dot products of each query over the corpus: (scores [Q, k'], document rows [Q, k']), best
    first, k' = min(k, N). Vectors normalised beforehand make the scores cosines; with `dim`, of their first `dim`
    values re-normalised (Matryoshka), cut block by block."""
    k = min(k, len(corpus))
    best_scores = torch.full((len(queries), k), -torch.inf)
    best_rows = torch.zeros((len(queries), k), dtype=torch.long)
    blocks = range(0, len(corpus), CORPUS_BLOCK)
    with torch.inference_mode():
        bar = not progress_enabled(show_progress, len(blocks))
        for start in tqdm(blocks, desc="search", unit="block", disable=bar, file=sys.stderr):
            block = _block(corpus[start : start + CORPUS_BLOCK], dim)
            for q in range(0, len(queries), QUERY_BLOCK):
                query = _block(queries[q : q + QUERY_BLOCK], dim)
                block_scores, block_rows = (query @ block.T).topk(min(k, len(block)), dim=1)
                scores = torch.cat([best_scores[q : q + QUERY_BLOCK], block_scores], dim=1)
                rows = torch.cat([best_rows[q : q + QUERY_BLOCK], block_rows + start], dim=1)
                best, where = scores.topk(k, dim=1)
                best_scores[q : q + QUERY_BLOCK], best_rows[q : q + QUERY_BLOCK] = best, rows.gather(1, where)
    return best_scores.numpy(), best_rows.numpy()


def _block(vectors: np.ndarray, dim: int | None) -> torch.Tensor:
    """A float32 copy of rows (a memory map's are read-only), cut to `dim` values and re-normalised if given."""
    block = torch.from_numpy(np.array(vectors[:, :dim] if dim else vectors, dtype=np.float32))
    return block if dim is None else torch.nn.functional.normalize(block, dim=1)
