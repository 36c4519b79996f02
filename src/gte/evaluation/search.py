"""Exact nearest-neighbour search in bounded memory: every query against every document, block by block.

The scores of one block of queries against one block of documents are the only thing computed beyond the inputs
and the running top k: [QUERY_BLOCK, CORPUS_BLOCK] float32, 64 MiB, whatever the corpus's size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..embed import progress_enabled

QUERY_BLOCK = 1024
CORPUS_BLOCK = 16384
Encode = Callable[[np.ndarray], torch.Tensor]  # float32 rows [n, d] -> the float32 rows scored [n, d']


def top_k(
    queries: np.ndarray,  # [Q, d]
    corpus: np.ndarray,  # [N, d]
    k: int,
    encode: Encode = torch.from_numpy,
    show_progress: bool | None = False,  # None: a bar on a terminal, for long searches
) -> tuple[np.ndarray, np.ndarray]:
    """The k highest dot products of each query over the corpus: (scores [Q, k'], document rows [Q, k']), best
    first, k' = min(k, N), of the vectors as `encode` makes them, block by block (a Matryoshka cut, a
    quantization). Vectors normalised beforehand make the plain scores cosines."""
    k = min(k, len(corpus))
    best_scores = torch.full((len(queries), k), -torch.inf)
    best_rows = torch.zeros((len(queries), k), dtype=torch.long)
    blocks = range(0, len(corpus), CORPUS_BLOCK)
    with torch.inference_mode():
        bar = not progress_enabled(show_progress, len(blocks))
        for start in tqdm(blocks, desc="search", unit="block", disable=bar, file=sys.stderr):
            block = encode(np.array(corpus[start : start + CORPUS_BLOCK], dtype=np.float32))  # a copy: a map is read-only
            for q in range(0, len(queries), QUERY_BLOCK):
                query = encode(np.array(queries[q : q + QUERY_BLOCK], dtype=np.float32))
                block_scores, block_rows = (query @ block.T).topk(min(k, len(block)), dim=1)
                scores = torch.cat([best_scores[q : q + QUERY_BLOCK], block_scores], dim=1)
                rows = torch.cat([best_rows[q : q + QUERY_BLOCK], block_rows + start], dim=1)
                best, where = scores.topk(k, dim=1)
                best_scores[q : q + QUERY_BLOCK], best_rows[q : q + QUERY_BLOCK] = best, rows.gather(1, where)
    return best_scores.numpy(), best_rows.numpy()

