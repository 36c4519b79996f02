"""Documents cut into chunks on the model's own tokens, and the two ways to embed them (`Embedder.encode_chunks`).

A chunk is a run of at most `chunk_tokens` of a document's tokens (special tokens aside), never a part of a token;
consecutive chunks share `overlap` tokens. Its character span [start, end) runs from its first token's start to
the start of the token after its last (the document's end for the last chunk; 0 for the first chunk's start), so
chunks without overlap tile the document exactly, the spaces between tokens included.

- naive: each chunk is embedded on its own, as a text of its tokens (the model's special tokens around them and
  the document prompt before them), pooled as the checkpoint pools;
- late chunking (Günther et al., 2024, arXiv 2409.04701): the document runs through the encoder once (a document
  longer than the model's max length in overlapping macro-windows, each token's state taken from the window in
  which it sits farthest from an edge), and each chunk's vector is the mean of its tokens' final hidden states,
  normalised. Late chunking is defined with mean pooling, whatever the checkpoint pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    document: int  # the text's position in the input
    index: int  # the chunk's position in its document
    start: int  # character span [start, end) in the document
    end: int
    first: int  # token span [first, last) among the document's tokens (special tokens aside)
    last: int


def cut(offsets: list[tuple[int, int]], length: int, document: int, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """The chunks of one document of `length` characters, from its tokens' character offsets."""
    check(chunk_tokens, overlap)
    if not offsets:
        return [Chunk(document, 0, 0, length, 0, 0)]
    step = chunk_tokens - overlap
    firsts = range(0, max(len(offsets) - overlap, 1), step)
    chunks = []
    for index, first in enumerate(firsts):
        last = min(first + chunk_tokens, len(offsets))
        start = 0 if first == 0 else offsets[first][0]
        end = length if last == len(offsets) else offsets[last][0]
        chunks.append(Chunk(document, index, start, end, first, last))
    return chunks


def check(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap must be at least 0 and less than chunk_tokens ({chunk_tokens}), got {overlap}")


def windows(tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[first, last) token ranges of at most `size` tokens covering `tokens`, consecutive ones sharing `overlap`."""
    if tokens <= size:
        return [(0, tokens)]
    step = size - overlap
    starts = list(range(0, tokens - overlap, step))
    return [(start, min(start + size, tokens)) for start in starts]


def stitch(states: list[np.ndarray], ranges: list[tuple[int, int]], tokens: int) -> np.ndarray:
    """[tokens, H] from the windows' states: each token's from the window in which it sits farthest from an edge
    (the first such window on a tie)."""
    out = np.empty((tokens, states[0].shape[1]), dtype=np.float32)
    margin = np.full(tokens, -1)
    for rows, (first, last) in zip(states, ranges):
        positions = np.arange(first, last)
        room = np.minimum(positions - first, last - 1 - positions)
        better = room > margin[first:last]
        out[positions[better]] = rows[better]
        margin[positions[better]] = room[better]
    return out
