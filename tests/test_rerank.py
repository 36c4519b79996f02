"""gte.Reranker: pair scores against independent references (transformers' own native GteForSequenceClassification
on the checkpoint converted to its layout, and the golden fixtures' float64 logits), ranking, normalisation, batch
independence, input checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

import gte
from gte.embed import TruncationWarning
from model_helpers import golden_case, golden_manifest, golden_tensors, golden_tokenizer, one_label_copy, valid_tokens

QUERY = "where is the giant panda from?"
DOCS = ["der hund ist schnell", "the panda is a bear from china", "", "北京 上海 模型", "le chat est rapide"]


@pytest.fixture(scope="module")
def reranker(reranker_model_dir) -> gte.Reranker:
    return gte.Reranker(reranker_model_dir)


def native_scores(native: Path, query: str, docs: list[str]) -> list[float]:
    """The independent reference: transformers' own GteForSequenceClassification on the checkpoint converted to the
    native `gte` layout (the native_dir fixture), on the padded pairs its tokenizer makes."""
    tokenizer = AutoTokenizer.from_pretrained(native)
    batch = tokenizer([query] * len(docs), docs, padding=True, return_tensors="pt")
    model = transformers.GteForSequenceClassification.from_pretrained(native).eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()


def test_scores_match_transformers_native_gte(reranker, reranker_model_dir, native_dir):
    scores = reranker.score(QUERY, DOCS)
    np.testing.assert_allclose(scores, native_scores(native_dir(reranker_model_dir), QUERY, DOCS), atol=1e-5)
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


def test_attributes(reranker, reranker_model_dir, backends_used):
    assert reranker.model_name == str(reranker_model_dir)
    assert isinstance(reranker.model, gte.engine.EncoderWithHead) and reranker.model.architecture == "NewForSequenceClassification"
    assert reranker.max_length == 128 and reranker.dtype == torch.float32
    reranker.score(QUERY, DOCS)
    assert set(backends_used) == {reranker.backend}  # the backend it reports is the one that runs


@pytest.mark.parametrize(("name", "label"), [("p05", 0), ("p06", 0), ("p06", 1), ("p06", 2)])
def test_scores_match_the_golden_fixtures(name, label, tmp_path):
    """The original's float64 logits[:, label], through score_tokens on the fixture's token ids, the checkpoint (its
    classifier cut to that label) loaded from its directory as a user loads one. p05: absolute positions, non-zero
    token types; p06: RMSNorm, logn scale without clip, a row of one token."""
    case = golden_case(name)
    reranker = gte.Reranker(one_label_copy(case, label, tmp_path / "one-label"), tokenizer=golden_tokenizer(case))
    types = valid_tokens(case, "token_type_ids")
    scores = reranker.score_tokens(valid_tokens(case), types, batch_tokens=32)
    expected = golden_tensors(case, "expected")["logits"][:, label]
    np.testing.assert_allclose(scores, expected.numpy(), atol=golden_manifest()["tolerance"]["atol"], rtol=0)
