"""Documents cut into chunks on the model's own tokens, and the two ways to embed them (`Embedder.encode_chunks`).

A chunk is a run of at most `chunk_tokens` of a document's tokens (special tokens aside), never a part of a token.
By tokens (`cut`), consecutive chunks share `overlap` tokens. By sentences (`cut_sentences`), whole sentences are
packed greedily into each chunk, and the next chunk repeats the last whole sentences of the one before that fit
in `overlap` tokens; a sentence longer than `chunk_tokens` is cut by tokens, as `cut` cuts a document. A sentence
ends after . ! or ? (a run of them, then any closing quotes or brackets) followed by whitespace or the text's end,
after 。！or ？ anywhere (CJK text puts no space after them), and at a line break; a token belongs to the sentence
in which it starts. A chunk's character span [start, end) runs from its first token's start to the start of the
token after its last (the document's end for the last chunk; 0 for the first chunk's start), so chunks without
overlap tile the document exactly, the spaces between tokens and sentences included.

- naive: each chunk is embedded on its own, as a text of its tokens (the model's special tokens around them and
  the document prompt before them), pooled as the checkpoint pools;
- late chunking (Günther et al., 2024, arXiv 2409.04701): the document runs through the encoder once (a document
  longer than the model's max length in overlapping macro-windows, each token's state taken from the window in
  which it sits farthest from an edge), and each chunk's vector is the mean of its tokens' final hidden states,
  normalised. Late chunking is defined with mean pooling, whatever the checkpoint pools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gte_defaults import CHUNK_BY

SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？]+|\n")  # see above: where a sentence ends


@dataclass(frozen=True)
class Chunk:
    document: int  # the text's position in the input
    index: int  # the chunk's position in its document
    start: int  # character span [start, end) in the document
    end: int
    first: int  # token span [first, last) among the document's tokens (special tokens aside)
    last: int


def cut(offsets: list[tuple[int, int]], text: str, document: int, chunk_tokens: int, overlap: int,
        by: str = "tokens") -> list[Chunk]:  # fmt: skip
    """The chunks of one document, from its tokens' character offsets: by tokens or by sentences (see above)."""
    check(chunk_tokens, overlap, by)
    if by == "tokens":
        ranges = windows(len(offsets), chunk_tokens, overlap)
    else:
        units = [(first + a, first + b) for first, last in sentences(offsets, text)
                 for a, b in windows(last - first, chunk_tokens, overlap)]  # fmt: skip
        ranges = pack(units, chunk_tokens, overlap) or [(0, 0)]
    return _chunks(ranges, offsets, len(text), document)


def sentences(offsets: list[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """[first, last) token ranges of the text's sentences that hold tokens, in order."""
    if not offsets:
        return []
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    sentence = np.searchsorted(ends, [start for start, _ in offsets], side="right")  # of each token
    cuts = [0, *(np.flatnonzero(np.diff(sentence)) + 1).tolist(), len(offsets)]
    return list(zip(cuts, cuts[1:]))


def pack(units: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """[first, last) token ranges of at most `size` tokens, each a run of whole units (token ranges in order, none
    longer than `size`), greedily; each repeats the last units of the one before that fit in `overlap` tokens and
    leave room for the unit that did not fit."""
    ranges: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []
    for unit in units:
        if current and unit[1] - current[0][0] > size:
            ranges.append((current[0][0], current[-1][1]))
            keep = min(overlap, size - (unit[1] - unit[0]))
            current = [u for u in current if current[-1][1] - u[0] <= keep]
        current.append(unit)
    return ranges + ([(current[0][0], current[-1][1])] if current else [])


def _chunks(ranges: list[tuple[int, int]], offsets: list[tuple[int, int]], length: int, document: int) -> list[Chunk]:
    """Chunks of the [first, last) token ranges, with their character spans."""
    chunks = []
    for index, (first, last) in enumerate(ranges):
        start = 0 if first == 0 else offsets[first][0]
        end = length if last == len(offsets) else offsets[last][0]
        chunks.append(Chunk(document, index, start, end, first, last))
    return chunks


def check(chunk_tokens: int, overlap: int, by: str = "tokens") -> None:
    if by not in CHUNK_BY:
        raise ValueError(f"chunks are cut by {' or '.join(CHUNK_BY)}, not by {by!r}")
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
