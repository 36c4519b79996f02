"""Chunks cut on the model's tokens (spans that tile each document, overlap as asked) or packed from whole
sentences, and their vectors: naive chunks equal to embedding each chunk's text alone; late chunking equal to
mean-pooling NewModel's token states of the whole document by hand; macro-windows stitched from the window where a
token has most context."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import gte
from gte import chunking

TEXTS = ["Pandas live in the mountains of central China. They eat bamboo, almost nothing else, for most of the day.",
         "short one", "", "Élan vital, naïve café: unicode — and punctuation!!! " * 3]  # fmt: skip


@pytest.fixture(scope="module")
def embedder() -> gte.Embedder:
    return gte.Embedder()


@pytest.mark.parametrize("chunk_tokens, overlap", [(5, 0), (7, 3), (1, 0), (100, 0)])
def test_chunk_spans_tile_each_document(embedder, chunk_tokens, overlap):
    chunks, vectors = embedder.encode_chunks(TEXTS, chunk_tokens=chunk_tokens, overlap=overlap)
    assert vectors.shape == (len(chunks), embedder.dimension)
    offsets = embedder.tokenizer(TEXTS, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for document, text in enumerate(TEXTS):
        mine = [c for c in chunks if c.document == document]
        assert [c.index for c in mine] == list(range(len(mine)))
        assert mine[0].start == 0 and mine[-1].end == len(text) and mine[-1].last == len(offsets[document])
        for before, after in zip(mine, mine[1:]):
            assert after.first == before.last - overlap and after.start < before.end or overlap == 0
            if overlap == 0:
                assert after.start == before.end  # no gap, no overlap: the spans tile the text
        for c in mine:
            assert c.last - c.first <= chunk_tokens
            assert all(c.start <= s and e <= c.end for s, e in offsets[document][c.first : c.last])  # whole tokens
        if overlap == 0:
            assert "".join(text[c.start : c.end] for c in mine) == text


@pytest.mark.parametrize("by", ["tokens", "sentences"])
def test_naive_chunks_are_their_texts_embedded_alone(embedder, by):
    chunks, vectors = embedder.encode_chunks(TEXTS[:2], chunk_tokens=6, by=by)
    alone = embedder.encode([TEXTS[c.document][c.start : c.end].strip() for c in chunks])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


@pytest.mark.parametrize("by", ["tokens", "sentences"])
def test_late_chunks_are_the_mean_of_the_documents_token_states(embedder, by):
    chunks, vectors = embedder.encode_chunks(TEXTS, chunk_tokens=6, overlap=2, by=by, late=True)
    for document, text in enumerate(TEXTS):
        ids = embedder.tokenizer(text)["input_ids"]  # [CLS] tokens [SEP]
        with torch.inference_mode():
            states = embedder.encoder(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        for c in (c for c in chunks if c.document == document):
            if c.last == c.first:  # an empty document: a zero vector
                np.testing.assert_array_equal(vectors[chunks.index(c)], 0)
                continue
            mean = states[1 + c.first : 1 + c.last].mean(0)
            np.testing.assert_allclose(vectors[chunks.index(c)], mean / np.linalg.norm(mean), atol=1e-5)


def test_a_long_document_runs_in_stitched_windows(embedder):
    short = gte.Embedder(max_length=24)
    text = TEXTS[0] * 3  # about 70 tokens: windows of 22 content tokens, 5 shared
    chunks, vectors = short.encode_chunks([text], chunk_tokens=8, late=True)
    tokens = len(short.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(chunks) == -(-tokens // 8) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # the first chunk lies in the first window's own part: its states are the first window's
    ids = short.tokenizer(text, add_special_tokens=False)["input_ids"][:22]
    with torch.inference_mode():
        states = short.encoder(input_ids=torch.tensor([[101, *ids, 102]])).last_hidden_state[0].numpy()
    mean = states[1:9].mean(0)
    np.testing.assert_allclose(vectors[0], mean / np.linalg.norm(mean), atol=1e-5)


def test_stitching_takes_each_token_from_its_most_central_window():
    ranges = chunking.windows(12, 6, 2)
    assert ranges == [(0, 6), (4, 10), (8, 12)]
    states = [np.full((last - first, 1), float(w)) for w, (first, last) in enumerate(ranges)]
    # token 4: one from window 0's edge, none from window 1's; token 5: the other way round
    assert chunking.stitch(states, ranges, 12)[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert chunking.windows(5, 6, 2) == [(0, 5)]


def test_bad_chunk_sizes_are_refused(embedder):
    with pytest.raises(ValueError, match="overlap must be"):
        embedder.encode_chunks(["a b c"], chunk_tokens=3, overlap=3)
    with pytest.raises(ValueError, match="chunk_tokens must be"):
        embedder.encode_chunks(["a b c"], chunk_tokens=0)
    with pytest.raises(ValueError, match="leaves no room"):
        embedder.encode_chunks(["a b c"], chunk_tokens=embedder.max_length)
    with pytest.raises(ValueError, match="chunks are cut by tokens or sentences, not by 'words'"):
        embedder.encode_chunks(["a b c"], chunk_tokens=3, by="words")


def test_late_chunks_with_another_tokenizer_and_a_prompt(multilingual_model_dir):
    """An XLM-R-style checkpoint (its own special tokens) and a document prompt: the prompt's tokens are in the
    pass, not in any chunk."""
    embedder = gte.Embedder(multilingual_model_dir)
    text = "der hund ist schnell und die katze auch"
    chunks, vectors = embedder.encode_chunks([text], chunk_tokens=3, late=True, prompt="doc: ")
    prompt = embedder.tokenizer("doc: ", add_special_tokens=False)["input_ids"]
    tokens = embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
    full = embedder.tokenizer("doc: " + text)["input_ids"]
    assert full[1 : 1 + len(prompt) + len(tokens)] == prompt + tokens  # one special token before, here
    with torch.inference_mode():
        states = embedder.encoder(input_ids=torch.tensor([full])).last_hidden_state[0].numpy()
    lead = 1 + len(prompt)
    for c, vector in zip(chunks, vectors):
        mean = states[lead + c.first : lead + c.last].mean(0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)


def test_late_chunking_in_groups_of_documents_gives_the_same_vectors(embedder, monkeypatch):
    """Documents go through in groups of LATE_GROUP_TOKENS tokens (one group's token states in memory at a time)."""
    whole = embedder.encode_chunks(TEXTS, chunk_tokens=6, late=True)[1]
    monkeypatch.setattr(gte.embed, "LATE_GROUP_TOKENS", 10)  # a document a group, here
    np.testing.assert_allclose(embedder.encode_chunks(TEXTS, chunk_tokens=6, late=True)[1], whole, atol=1e-6)


# ------------------------------------------------------------------------------ by sentences
def words(text: str) -> list[tuple[int, int]]:
    """Offsets of a toy tokenizer: each word, each punctuation mark."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def test_sentences_end_at_end_punctuation_and_line_breaks():
    text = 'One two. "Three?!" Four 3.14 five\nsix 北京。上海！seven... eight'
    offsets = words(text)
    sentences = [" ".join(text[s:e] for s, e in offsets[first:last]) for first, last in chunking.sentences(offsets, text)]
    assert sentences == ["One two .", '" Three ? ! "', "Four 3 . 14 five", "six 北京 。", "上海 ！", "seven . . .", "eight"]
    assert chunking.sentences([], "") == [] and chunking.sentences(words("no end"), "no end") == [(0, 2)]


def test_whole_sentences_are_packed_and_the_last_that_fit_repeated():
    units = [(0, 3), (3, 7), (7, 9), (9, 14)]
    assert chunking.pack(units, 7, 0) == [(0, 7), (7, 14)]
    # overlap 4: (3, 7) is repeated; then only (7, 9) fits beside the 5 tokens of (9, 14)
    assert chunking.pack(units, 7, 4) == [(0, 7), (3, 9), (7, 14)]
    assert chunking.pack(units, 7, 1) == [(0, 7), (7, 14)]  # no whole sentence fits in 1 token
    assert chunking.pack([], 7, 0) == []


def test_a_sentence_longer_than_a_chunk_is_cut_on_tokens():
    text = "A b. " + " ".join("w" * 11) + ". C."  # sentences of 3, 12 and 2 tokens
    offsets = words(text)
    chunks = chunking.cut(offsets, text, 0, 5, 2, by="sentences")
    # the long sentence's windows share 2 tokens, as `cut` by tokens shares them; its last one takes in "C."
    assert [(c.first, c.last) for c in chunks] == [(0, 3), (3, 8), (6, 11), (9, 14), (12, 17)]
    assert [(c.first, c.last) for c in chunking.cut(offsets[3:15], text, 0, 5, 2)] == [(0, 5), (3, 8), (6, 11), (9, 12)]
    assert [text[c.start : c.end] for c in chunks][:2] == ["A b. ", "w w w w w "]


@pytest.mark.parametrize("chunk_tokens, overlap", [(8, 0), (12, 5), (3, 0), (100, 0)])
def test_sentence_chunks_tile_each_document_in_whole_sentences(embedder, chunk_tokens, overlap):
    texts = [*TEXTS, "First line\nsecond line.\n\nThird! 北京很大。上海也很大。 Fourth? Done"]
    chunks, _ = embedder.encode_chunks(texts, chunk_tokens=chunk_tokens, overlap=overlap, by="sentences", late=True)
    offsets = embedder.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for document, text in enumerate(texts):
        mine = [c for c in chunks if c.document == document]
        if not offsets[document]:
            assert mine == [chunking.Chunk(document, 0, 0, len(text), 0, 0)]
            continue
        sentences = chunking.sentences(offsets[document], text)
        starts = {first for first, _ in sentences}
        long = {t for first, last in sentences if last - first > chunk_tokens for t in range(first, last)}
        assert [c.index for c in mine] == list(range(len(mine)))
        assert mine[0].start == 0 and mine[-1].end == len(text)
        for before, after in zip(mine, mine[1:]):
            assert before.first < after.first and before.last < after.last and after.start <= before.end
            repeated = before.last - after.first
            assert repeated <= overlap or after.first in long  # whole sentences within the overlap
        for c in mine:
            assert c.last - c.first <= chunk_tokens and (c.first in starts or c.first in long)
            assert c.last in starts or c.last == len(offsets[document]) or c.last - 1 in long
        if overlap == 0:
            assert "".join(text[c.start : c.end] for c in mine) == text
