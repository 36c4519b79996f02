"""gte.Classifier: label scores against independent references (the golden fixtures' float64 logits, transformers'
own native GteForSequenceClassification, transformers' BERT and XLM-R classifiers), activations as transformers'
text-classification pipeline picks them, texts and pairs in one call, input checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

import fixtures
import gte
from model_helpers import golden_case, golden_manifest, golden_tensors, golden_tokenizer, valid_tokens

TEXTS = ["a man is sleeping", "the dog runs in the park", "", "fox"]
PAIRS = [("a man is sleeping", "a person rests"), ("the dog runs", "a cat sleeps")]
LABELS = list(fixtures.CLASSIFIER_LABELS.values())


@pytest.fixture(scope="module")
def classifier(classifier_model_dir) -> gte.Classifier:
    return gte.Classifier(classifier_model_dir)


def native_logits(native_dir, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """transformers' own GteForSequenceClassification on the checkpoint in the native layout, padded batch."""
    tokenizer = AutoTokenizer.from_pretrained(native_dir)
    batch = tokenizer(texts, pairs, padding=True, return_tensors="pt")
    model = transformers.GteForSequenceClassification.from_pretrained(native_dir).eval()
    with torch.no_grad():
        return model(**batch).logits.numpy()


@pytest.mark.parametrize("name", ["p05", "p06"])
def test_logits_match_the_golden_fixtures(name):
    """The original's float64 logits, every label, through logits_tokens on the fixture's token ids (p05: one label,
    absolute positions, token types; p06: three labels, RMSNorm, logn scale, a row of one token)."""
    case = golden_case(name)
    classifier = gte.Classifier(case["dir"], tokenizer=golden_tokenizer(case))
    logits = classifier.logits_tokens(valid_tokens(case), valid_tokens(case, "token_type_ids"), batch_tokens=32)
    expected = golden_tensors(case, "expected")["logits"]
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=golden_manifest()["tolerance"]["atol"], rtol=0)


def test_texts_and_pairs_match_transformers_native_gte(classifier, classifier_model_dir, native_dir):
    """Texts and pairs mixed in one call: each scored as transformers' own classes score it alone in its kind."""
    native = native_dir(classifier_model_dir)
    mixed = [TEXTS[0], PAIRS[0], TEXTS[1], PAIRS[1]]
    got = classifier.predict(mixed, activation="none")
    by_label = np.array([[{p["label"]: p["score"] for p in row}[label] for label in LABELS] for row in got])
    expected_texts = native_logits(native, TEXTS[:2])
    expected_pairs = native_logits(native, [a for a, _ in PAIRS], [b for _, b in PAIRS])
    expected = np.stack([expected_texts[0], expected_pairs[0], expected_texts[1], expected_pairs[1]])
    np.testing.assert_allclose(by_label, expected, atol=1e-5, rtol=0)


def test_predict_labels_best_first_with_softmax(classifier):
    logits = classifier.logits_tokens(*classifier.tokenize(TEXTS))
    probabilities = logits.softmax(-1).numpy()
    predictions = classifier.predict(TEXTS)
    assert classifier.activation == "softmax" and classifier.labels == LABELS
    for row, expected in zip(predictions, probabilities):
        assert [p["label"] for p in row] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]
        np.testing.assert_allclose([p["score"] for p in row], np.sort(expected)[::-1], rtol=1e-6)
    top = classifier.predict(TEXTS, top_k=1)
    assert [row for row in top] == [row[:1] for row in predictions]
    assert classifier.predict("fox") == classifier.predict(["fox"])
    assert classifier.predict(PAIRS[0]) == classifier.predict([PAIRS[0]])  # a tuple is one pair
    assert classifier.predict([]) == []


def test_activations(classifier):
    logits = classifier.logits_tokens(*classifier.tokenize(TEXTS[:2]))
    for activation, expected in (("none", logits), ("sigmoid", logits.sigmoid()), ("softmax", logits.softmax(-1))):
        got = classifier.predict(TEXTS[:2], activation=activation)
        scores = [sorted(p["score"] for p in row) for row in got]
        np.testing.assert_allclose(scores, np.sort(expected.numpy(), axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="activation 'tanh' is not one of softmax, sigmoid, none"):
        classifier.predict(TEXTS, activation="tanh")


def test_multi_label_and_one_label_checkpoints_default_to_the_sigmoid(classifier_model_dir, reranker_model_dir, tmp_path):
    multi = shutil.copytree(classifier_model_dir, tmp_path / "multi-label")
    config = json.loads((multi / "config.json").read_text())
    (multi / "config.json").write_text(json.dumps(config | {"problem_type": "multi_label_classification"}))
    assert gte.Classifier(multi).activation == "sigmoid"
    one_label = gte.Classifier(reranker_model_dir)
    assert one_label.activation == "sigmoid" and one_label.labels == ["LABEL_0"]
    # a reranker is a one-label classifier: predict on a pair is the sigmoid of its score
    reranker = gte.Reranker(reranker_model_dir)
    (prediction,) = reranker.predict([("query", "a document")])
    assert prediction[0]["score"] == pytest.approx(reranker.score("query", ["a document"], normalize=True)[0], abs=1e-6)


@pytest.mark.parametrize("architecture", ["BertForSequenceClassification", "XLMRobertaForSequenceClassification"])
def test_bert_family_classifiers_match_transformers(architecture, tmp_path):
    """Three-label BERT and XLM-R classifiers, converted on load: transformers' own logits, for texts and pairs."""
    class_name, multilingual = fixtures.BERT_FAMILY[architecture]
    tok = fixtures._multilingual_tokenizer() if multilingual else fixtures._english_tokenizer()
    torch.manual_seed(7)
    reference = getattr(transformers, class_name)(fixtures.bert_family_config(architecture, tok, num_labels=3)).eval()
    reference.save_pretrained(tmp_path)
    fixtures.save_tokenizer(tok, tmp_path, multilingual=multilingual, max_length=64)
    classifier = gte.Classifier(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for first, second in ((TEXTS, None), ([a for a, _ in PAIRS], [b for _, b in PAIRS])):
        batch = tokenizer(first, second, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = reference(**batch).logits
        inputs = first if second is None else list(zip(first, second))
        got = classifier.logits_tokens(*classifier.tokenize(inputs))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_input_checks(classifier, tiny_model_dir, reranker_model_dir):
    with pytest.raises(TypeError, match=r"inputs\[1\] is int"):
        classifier.predict(["a", 1])
    with pytest.raises(TypeError, match=r"inputs\[0\] is list of 3: pass a text, or a pair"):
        classifier.predict([["a", "b", "c"]])
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        classifier.predict(TEXTS, top_k=0)
    with pytest.raises(ValueError, match="not a sequence classifier"):
        gte.Classifier(tiny_model_dir)
    with pytest.raises(ValueError, match="this checkpoint has 3: use gte.Classifier"):
        gte.Reranker(classifier.model)


def test_truncation_and_attributes(classifier, classifier_model_dir, backends_used):
    with pytest.warns(gte.embed.TruncationWarning, match="1 of 2 texts were longer than max_length=128"):
        ids, types = classifier.tokenize(["fox " * 300, "fox"])
    assert len(ids[0]) == 128 and types is not None and len(types[0]) == 128
    with pytest.raises(ValueError, match="longer than max_length"):
        classifier.predict(["fox " * 300], truncate=False)
    assert classifier.model_name == str(classifier_model_dir)
    classifier.predict(TEXTS)
    assert set(backends_used) == {classifier.backend}
    assert "Classifier(" in repr(classifier) and "labels=3" in repr(classifier)
