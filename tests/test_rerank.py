"""gte.Reranker: pair scores against the padded transformers path and the golden fixture, ranking,
normalisation, batch independence, input checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import gte
from gte.embed import TruncationWarning
from model_helpers import golden_case

QUERY = "where is the giant panda from?"
DOCS = ["der hund ist schnell", "the panda is a bear from china", "", "北京 上海 模型", "le chat est rapide"]


@pytest.fixture(scope="module")
def reranker(reranker_model_dir) -> gte.Reranker:
    return gte.Reranker(reranker_model_dir)


def padded_scores(model_dir: Path, query: str, docs: list[str]) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer([query] * len(docs), docs, padding=True, return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()


def test_scores_match_the_padded_transformers_path(reranker, reranker_model_dir):
    scores = reranker.score(QUERY, DOCS)
    np.testing.assert_allclose(scores, padded_scores(reranker_model_dir, QUERY, DOCS), atol=1e-5)
    assert len(set(scores)) == len(DOCS)


def test_normalize_is_the_sigmoid(reranker):
    raw = reranker.score(QUERY, DOCS)
    probs = reranker.score(QUERY, DOCS, normalize=True)
    np.testing.assert_allclose(probs, [1 / (1 + math.exp(-x)) for x in raw], atol=1e-6)


def test_rank_orders_best_first(reranker):
    scores = reranker.score(QUERY, DOCS)
    ranked = reranker.rank(QUERY, DOCS)
    assert [hit["index"] for hit in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert all(hit["text"] == DOCS[hit["index"]] and hit["score"] == scores[hit["index"]] for hit in ranked)
    assert reranker.rank(QUERY, DOCS, top_k=2) == ranked[:2]
    assert reranker.rank(QUERY, []) == []


def test_scores_do_not_depend_on_batching(reranker):
    docs = DOCS * 6
    reference = reranker.score(QUERY, docs)
    ids, types = reranker.tokenize_pairs(QUERY, docs[::-1])
    shuffled = reranker.score_tokens(ids, types, batch_tokens=20)[::-1]
    np.testing.assert_allclose(shuffled, reference, atol=1e-5)


def test_pair_encoding_and_truncation(reranker):
    tokenizer = reranker.tokenizer
    (ids,), _ = reranker.tokenize_pairs("fox", ["dog"])
    assert ids == tokenizer("fox", "dog")["input_ids"]
    with pytest.warns(TruncationWarning, match="1 of 2 pairs were longer than max_length=128"):
        (long, short), _ = reranker.tokenize_pairs(QUERY, ["the panda " * 100, "dog"])
    assert len(long) == 128 and long[-1] == tokenizer.eos_token_id and len(short) < 128
    with pytest.raises(ValueError, match="longer than max_length"):
        reranker.score(QUERY, ["the panda " * 100], truncate=False)


def test_truncation_side_left_cuts_the_start(reranker, reranker_model_dir):
    """truncation_side="left" cuts an over-long pair as the tokenizer does with truncation_side="left"."""
    doc = "the panda " * 100 + "lives in china"
    tokenizer = AutoTokenizer.from_pretrained(reranker_model_dir, truncation_side="left")
    with pytest.warns(TruncationWarning):
        (ids,), _ = reranker.tokenize_pairs(QUERY, [doc], truncation_side="left")
        left = reranker.score(QUERY, [doc, "dog"], truncation_side="left")
        right = reranker.score(QUERY, [doc, "dog"])
        by_default = gte.Reranker(reranker_model_dir, truncation_side="left").score(QUERY, [doc, "dog"])
    assert ids == tokenizer(QUERY, doc, truncation=True, max_length=128)["input_ids"]
    assert abs(left[0] - right[0]) > 1e-3 and left[1] == pytest.approx(right[1], abs=1e-6)
    assert by_default == pytest.approx(left, abs=1e-6)
    with pytest.raises(ValueError, match="truncation side 'up' is not one of right, left"):
        reranker.score(QUERY, [doc], truncation_side="up")


def test_input_checks(reranker):
    with pytest.raises(TypeError, match=r"documents\[1\] is int"):
        reranker.score(QUERY, ["a", 1])
    with pytest.raises(TypeError, match="query is NoneType"):
        reranker.rank(None, ["a"])


def test_only_sequence_classification_checkpoints(tiny_model_dir, sparse_model_dir):
    for directory in (tiny_model_dir, sparse_model_dir):
        with pytest.raises(ValueError, match="not a reranker"):
            gte.Reranker(directory)


def test_attributes(reranker, reranker_model_dir):
    assert reranker.model_name == str(reranker_model_dir)
    assert isinstance(reranker.model, gte.NewForSequenceClassification)
    assert reranker.max_length == 128 and reranker.dtype == torch.float32
    assert reranker.backend in gte.available_backends("cpu", torch.float32)


def test_logits_match_the_golden_fixture():
    """p05: one label, absolute positions, two token types (non-zero token_type_ids)."""
    case_dir = golden_case("p05")["dir"]
    model = gte.NewForSequenceClassification.from_pretrained(case_dir, dtype=torch.float32)
    inputs, expected = load_file(case_dir / "inputs.safetensors"), load_file(case_dir / "expected.safetensors")
    masks = inputs["attention_mask"].bool()
    ids = [row[m].tolist() for row, m in zip(inputs["input_ids"], masks)]
    types = [row[m].tolist() for row, m in zip(inputs["token_type_ids"], masks)]
    scores = gte.Reranker(model).score_tokens(ids, types, batch_tokens=32)
    np.testing.assert_allclose(scores, expected["logits"][:, 0].numpy(), atol=3e-5, rtol=0)
