"""Chunks cut on the model's tokens (spans that tile each document, overlap as asked) and their vectors: naive
chunks equal to embedding each chunk's text alone; late chunking equal to mean-pooling NewModel's token states of
the whole document by hand; macro-windows stitched from the window where a token has most context."""

from __future__ import annotations

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


def test_naive_chunks_are_their_texts_embedded_alone(embedder):
    chunks, vectors = embedder.encode_chunks(TEXTS[:2], chunk_tokens=6)
    alone = embedder.encode([TEXTS[c.document][c.start : c.end].strip() for c in chunks])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_late_chunks_are_the_mean_of_the_documents_token_states(embedder):
    chunks, vectors = embedder.encode_chunks(TEXTS, chunk_tokens=6, overlap=2, late=True)
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
