"""`gte serve`: every route and every error over real HTTP on 127.0.0.1, the official `openai`
client against it, dynamic batching, backpressure, and a graceful SIGTERM of the real CLI process.
Unit tests of the batcher, the input parser and the Prometheus text close the file."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import cohere
import httpx
import huggingface_hub
import numpy as np
import openai
import pytest
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings as st_quantize

import fixtures
from gte import threads
from gte.classify import Classifier
from gte.embed import Embedder
from gte.int8 import Int8Warning
from gte.quantize import calibration_ranges
from gte.rerank import Reranker
from gte.server import Http11, ServerSettings, create_app, load_model, served_name
from gte.server.batcher import Batcher
from gte.server.metrics import Metrics
from gte.server.schemas import parse_inputs
from gte_cli import main

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["the quick brown fox", "a lazy dog", "paris is a city on a river", "deep neural network learning"]
LONG_TEXT = " ".join(["token"] * 200)  # over the tiny model's 64-token limit
LONG_TEXTS = ["start words " + "token " * 200 + "end of the first", "the quick brown fox " * 40 + "ends here"]
PROMPTS = {"query": "query: ", "passage": "passage: ", "search": "search the data set for: "}
ATOL = 1e-5


# ---------------------------------------------------------------------- live servers
def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class LiveServer:
    """uvicorn serving `app` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=Http11))  # as gte serve runs
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), "the server to start")
        assert self.server.started, "the server did not start"
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextlib.contextmanager
def live(*models, names: list[str] | None = None, ranges: dict | None = None, **settings) -> Iterator[httpx.Client]:
    """A client of a live server of `models` (served as `names`, default: their directory names)."""
    names = names or [served_name(model.model_name) for model in models]
    app = create_app(dict(zip(names, models)), ServerSettings(**settings), ranges)
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> Embedder:
    return Embedder(tiny_model_dir)


@pytest.fixture(scope="module")
def server(embedder) -> Iterator[httpx.Client]:
    """The tiny English embedder behind an API key; the client sends the key."""
    with live(embedder, names=["tiny-gte"], api_key=KEY, max_client_batch_size=8) as client:
        client.headers.update(AUTH)
        yield client


@pytest.fixture(scope="module")
def sparse_embedder(sparse_model_dir) -> Embedder:
    return Embedder(sparse_model_dir)


@pytest.fixture(scope="module")
def reranker(reranker_model_dir) -> Reranker:
    return Reranker(reranker_model_dir)


def metric_values(client: httpx.Client) -> dict[str, float]:
    """{'name{labels}': value} from GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


def decode_base64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def assert_openai_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    return error["message"]


def assert_tei_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error"]
    return body["error"]


# ---------------------------------------------------------------------- OpenAI API
def test_openai_client_gets_the_embedders_vectors(server, embedder):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)
    expected = embedder.encode(TEXTS)
    for encoding_format in ("float", "base64", openai.NOT_GIVEN):  # not given: the client asks for base64, decodes
        result = client.embeddings.create(model="tiny-gte", input=TEXTS, encoding_format=encoding_format)
        assert [d.index for d in result.data] == list(range(len(TEXTS)))
        got = [decode_base64(d.embedding) if encoding_format == "base64" else d.embedding for d in result.data]
        np.testing.assert_allclose(got, expected, atol=ATOL)
        assert result.model == "tiny-gte"
        n_tokens = sum(map(len, embedder.tokenize(TEXTS)))
        assert result.usage.prompt_tokens == result.usage.total_tokens == n_tokens
    short = client.embeddings.create(model="tiny-gte", input=TEXTS[0], dimensions=16, encoding_format="float")
    np.testing.assert_allclose(short.data[0].embedding, embedder.encode(TEXTS[:1], dim=16)[0], atol=ATOL)
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1, abs=1e-5)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="gpt-nothing", input="x")
    assert caught.value.body["code"] == "model_not_found"


def test_openai_late_chunking_embeds_the_document_once(server, embedder):
    """Jina's late_chunking through the openai client: the inputs are one document's chunks, in order; each vector
    is the mean of its tokens' states in one pass over the whole document (Embedder.late_vectors by hand)."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)
    chunks = ["the quick brown fox", " jumps over", " the lazy dog"]
    result = client.embeddings.create(model="tiny-gte", input=chunks, encoding_format="float",
                                      extra_body={"late_chunking": True})  # fmt: skip
    ids = [embedder.tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunks]
    ends = np.cumsum([0, *map(len, ids)])
    expected = embedder.late_vectors([sum(ids, [])], [(0, a, b) for a, b in zip(ends, ends[1:])])
    np.testing.assert_allclose([d.embedding for d in result.data], expected, atol=ATOL)
    assert result.usage.prompt_tokens == int(ends[-1])
    assert not np.allclose(expected, embedder.encode(chunks), atol=1e-3)  # not each chunk alone
    short = client.embeddings.create(model="tiny-gte", input=chunks, dimensions=8, encoding_format="float",
                                     extra_body={"late_chunking": True})  # fmt: skip
    cut = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in short.data], cut, atol=ATOL)
    with pytest.raises(openai.UnprocessableEntityError, match="late_chunking takes the chunks' texts"):
        client.embeddings.create(model="tiny-gte", input=[[5, 6]], extra_body={"late_chunking": True})


def test_openai_input_forms(server, embedder):
    ids = embedder.tokenize(TEXTS)
    expected = embedder.encode(TEXTS)
    for given, rows in [
        (TEXTS[0], [0]),
        (TEXTS, [0, 1, 2, 3]),
        (ids[1], [1]),  # one list of token ids
        (ids, [0, 1, 2, 3]),  # a list of token-id lists
    ]:
        body = server.post("/v1/embeddings", json={"input": given, "model": "tiny-gte"}).json()
        assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["embedding"] * len(rows)
        np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected[rows], atol=ATOL)
    raw = server.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()["data"]
    np.testing.assert_allclose([decode_base64(d["embedding"]) for d in raw], expected, atol=ATOL)


def test_openai_models(server):
    body = server.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny-gte"]
    assert body["data"][0]["object"] == "model"


# ---------------------------------------------------------------------- TEI API
@pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")  # the server truncating LONG_TEXT
def test_embed(server, embedder):
    np.testing.assert_allclose(
        vectors(server.post("/embed", json={"inputs": TEXTS})), embedder.encode(TEXTS), atol=ATOL
    )
    raw = vectors(server.post("/embed", json={"inputs": TEXTS[0], "normalize": False}))
    np.testing.assert_allclose(raw, embedder.encode(TEXTS[:1], normalize=False), atol=ATOL)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3  # really not normalised
    short = vectors(server.post("/embed", json={"inputs": TEXTS, "dimensions": 8}))
    np.testing.assert_allclose(short, embedder.encode(TEXTS, dim=8), atol=ATOL)
    cut = vectors(server.post("/embed", json={"inputs": [LONG_TEXT]}))  # truncate defaults to true
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(cut, embedder.encode([LONG_TEXT]), atol=ATOL)


def test_embed_sparse(sparse_model_dir, sparse_embedder):
    texts = ["le chat est une maison", "der hund und die katze"]
    with live(sparse_embedder) as client:
        body = client.post("/embed_sparse", json={"inputs": texts}).json()
        dense = vectors(client.post("/embed", json={"inputs": texts}))  # the same checkpoint serves dense too
        info = client.get("/info").json()
    assert info["sparse"] is True
    np.testing.assert_allclose(dense, sparse_embedder.encode(texts), atol=ATOL)
    for row, expected in zip(body, sparse_embedder.encode_sparse(texts)):
        assert {v["token"]: v["value"] for v in row} == pytest.approx(expected, abs=ATOL)
        for v in row:
            assert sparse_embedder.tokenizer.decode([v["index"]]) == v["token"]


def test_embed_hybrid_gives_embed_and_embed_sparse_from_one_pass(sparse_embedder):
    texts = ["le chat est une maison", "der hund und die katze"]
    with live(sparse_embedder) as client:
        body = client.post("/embed_hybrid", json={"inputs": texts, "dimensions": 16}).json()
        dense = vectors(client.post("/embed", json={"inputs": texts, "dimensions": 16}))
        sparse = client.post("/embed_sparse", json={"inputs": texts}).json()
        refused = client.post("/embed_hybrid", json={"inputs": texts, "prompt_name": "query"})
    np.testing.assert_allclose([row["dense"] for row in body], dense, atol=ATOL)
    for row, expected in zip(body, sparse):
        assert {v["token"]: v["value"] for v in row["sparse"]} == pytest.approx({v["token"]: v["value"] for v in expected}, abs=ATOL)
    assert refused.status_code == 422 and "sparse weights take no prompt" in refused.text


def test_rerank(reranker):
    query, texts = "chat", ["le chat", "der hund", "casa", "北京 上海"]
    with live(reranker, max_client_batch_size=4) as client:
        ranked = client.post("/rerank", json={"query": query, "texts": texts, "return_text": True}).json()
        raw = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True}).json()
        too_many = client.post("/rerank", json={"query": query, "texts": texts * 2})
        not_embedder = client.post("/embed", json={"inputs": "x"})
        too_long = client.post("/rerank", json={"query": query, "texts": [LONG_TEXT], "truncate": False})
        empty = client.post("/rerank", json={"query": query, "texts": []})
        assert client.get("/info").json()["model_type"] == "reranker"
    expected = reranker.rank(query, texts, normalize=True)
    assert [r["index"] for r in ranked] == [r["index"] for r in expected]
    assert [r["score"] for r in ranked] == pytest.approx([r["score"] for r in expected], abs=ATOL)
    assert [r["text"] for r in ranked] == [r["text"] for r in expected]
    logits = reranker.score(query, texts)
    assert {r["index"]: r["score"] for r in raw} == pytest.approx(dict(enumerate(logits)), abs=ATOL)
    assert "text" not in raw[0]
    assert "max-client-batch-size" in assert_tei_error(too_many, 413)
    assert "/rerank" in assert_tei_error(not_embedder, 400)
    assert "truncate" in assert_tei_error(too_long, 413)
    assert "texts" in assert_tei_error(empty, 422)


@pytest.fixture(scope="module")
def classifier(classifier_model_dir) -> Classifier:
    return Classifier(classifier_model_dir)


def test_predict(classifier, reranker, monkeypatch):
    """TEI's /predict: a text, a pair, a batch of both; softmax over several labels, the sigmoid of one, raw logits;
    and huggingface_hub's InferenceClient.text_classification on the root route."""
    text, pair = "a man is sleeping", ["a man is sleeping", "a person rests"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # it blocks loopback too; nothing else runs
    with live(classifier, max_client_batch_size=4) as client:
        single = client.post("/predict", json={"inputs": text}).json()
        one_pair = client.post("/predict", json={"inputs": pair}).json()
        batch = client.post("/predict", json={"inputs": [[text], pair], "raw_scores": True}).json()
        hub_client = huggingface_hub.InferenceClient(model=str(client.base_url))
        via_hub = hub_client.text_classification(text)
        via_hub_top = hub_client.text_classification(text, top_k=1, function_to_apply="sigmoid")
        refusals = [
            (client.post("/predict", json={"inputs": ["a", "b", "c"]}), 422, "a list of strings is one pair"),
            (client.post("/predict", json={"inputs": [["a"], ["a", "b", "c"]]}), 422, "item 1 must be [text] or"),
            (client.post("/predict", json={"inputs": [["a"]] * 5}), 413, "max-client-batch-size"),
            (client.post("/predict", json={"inputs": "a", "raw_scores": "yes"}), 422, "raw_scores"),
            (client.post("/embed", json={"inputs": "a"}), 400, "use POST /predict"),
            (client.post("/rerank", json={"query": "a", "texts": ["b"]}), 400, "a classifier, not a reranker"),
        ]
        info = client.get("/info").json()
    assert [p["label"] for p in single] == [p["label"] for p in classifier.predict(text)[0]]
    assert [p["score"] for p in single] == pytest.approx([p["score"] for p in classifier.predict(text)[0]], abs=ATOL)
    assert [p["label"] for p in one_pair] == [p["label"] for p in classifier.predict(tuple(pair))[0]]
    expected = classifier.predict([text, tuple(pair)], activation="none")
    for got, want in zip(batch, expected):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=ATOL)
    assert [(e.label, e.score) for e in via_hub] == [(p["label"], pytest.approx(p["score"], abs=ATOL)) for p in single]
    best = classifier.predict(text, activation="sigmoid", top_k=1)[0][0]
    assert [(e.label, e.score) for e in via_hub_top] == [(best["label"], pytest.approx(best["score"], abs=ATOL))]
    for response, status, needle in refusals:
        assert needle in assert_tei_error(response, status)
    assert info["model_type"] == "classifier"
    with live(reranker) as client:  # a reranker predicts too, as TEI serves one: the sigmoid of its one logit
        scored = client.post("/predict", json={"inputs": [["chat", "le chat"]]}).json()
    assert scored[0][0]["score"] == pytest.approx(reranker.score("chat", ["le chat"], normalize=True)[0], abs=ATOL)


def assert_cohere_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"} and body["message"]
    return body["message"]


def test_cohere_client_reranks(reranker):
    """Cohere's own client against /v1/rerank and /v2/rerank: Cohere's shapes, the reranker's sigmoid scores."""
    query, texts = "chat", ["le chat", "der hund", "casa", "北京 上海"]
    expected = reranker.rank(query, texts, normalize=True)
    with live(reranker, names=["tiny-reranker"]) as client:
        v2 = cohere.ClientV2(api_key=KEY, base_url=str(client.base_url)).rerank(
            model="tiny-reranker", query=query, documents=texts, top_n=2
        )
        v1 = cohere.Client(api_key=KEY, base_url=str(client.base_url)).rerank(
            model="tiny-reranker", query=query, documents=[{"text": t, "id": str(i)} for i, t in enumerate(texts)],
            return_documents=True,
        )  # fmt: skip
        with pytest.raises(cohere.core.ApiError) as unknown:
            cohere.ClientV2(api_key=KEY, base_url=str(client.base_url)).rerank(model="rerank-v3.5", query=query, documents=texts)
    assert [r.index for r in v2.results] == [r["index"] for r in expected[:2]]
    assert [r.relevance_score for r in v2.results] == pytest.approx([r["score"] for r in expected[:2]], abs=ATOL)
    assert v2.meta.api_version.version == "2" and v2.meta.billed_units.search_units == 1
    assert [r.index for r in v1.results] == [r["index"] for r in expected]
    assert [r.document.model_dump() for r in v1.results] == [{"text": r["text"], "id": str(r["index"])} for r in expected]
    assert unknown.value.status_code == 404 and "tiny-reranker" in unknown.value.body["message"]


EMBEDDING_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


def test_cohere_client_embeds(embedder, prompted_dirs):
    """Cohere's own client against /v2/embed and /v1/embed: every embedding type, each quantized one exactly
    sentence-transformers' quantization of the float vectors (int8 / uint8 within the ranges given at start), and
    input_type as the checkpoint's prompt."""
    texts = ["le chat", "der hund", "casa", "北京 上海", ""]
    ranges = calibration_ranges(embedder.encode(TEXTS))
    prompted = Embedder(prompted_dirs["dense"])
    with live(embedder, prompted, names=["tiny", "prompted"], ranges={"tiny": ranges}) as client:
        v2 = cohere.ClientV2(api_key=KEY, base_url=str(client.base_url)).embed(
            model="tiny", texts=texts, input_type="search_document", embedding_types=EMBEDDING_TYPES
        )
        v1 = cohere.Client(api_key=KEY, base_url=str(client.base_url))
        floats = v1.embed(model="prompted", texts=texts, input_type="search_query")
        bits = v1.embed(model="prompted", texts=texts, input_type="search_document", embedding_types=["float", "ubinary"])
    vectors = np.array(v2.embeddings.float_, dtype=np.float32)  # float32 written as the shortest text that reads back
    np.testing.assert_allclose(vectors, embedder.encode(texts), atol=ATOL)
    for kind in ["int8", "uint8", "binary", "ubinary"]:
        expected = st_quantize(vectors, kind, ranges=ranges if kind.endswith("int8") else None)
        np.testing.assert_array_equal(np.array(getattr(v2.embeddings, kind)), expected)
    decoded = [np.frombuffer(base64.b64decode(b), dtype="<f4") for b in v2.embeddings.base64]
    np.testing.assert_array_equal(decoded, vectors)
    assert v2.texts == texts and v2.meta.billed_units.input_tokens > 0
    assert floats.response_type == "embeddings_floats"
    np.testing.assert_allclose(floats.embeddings, prompted.encode_query(texts), atol=ATOL)
    assert bits.response_type == "embeddings_by_type"
    np.testing.assert_allclose(bits.embeddings.float_, prompted.encode_document(texts), atol=ATOL)
    np.testing.assert_array_equal(bits.embeddings.ubinary, st_quantize(np.array(bits.embeddings.float_, dtype=np.float32), "ubinary"))


def test_cohere_embed_over_http(embedder):
    """Matryoshka output_dimension, truncation, and each refusal in Cohere's error shape."""
    ranges = calibration_ranges(embedder.encode(TEXTS))
    with live(embedder, names=["tiny"], ranges={"tiny": ranges}, max_client_batch_size=4) as client, \
            live(embedder, names=["plain"]) as plain:  # fmt: skip
        short = client.post("/v2/embed", json={"texts": ["a b c"], "output_dimension": 8}).json()
        long_text = " ".join(["word"] * 500)
        cut = client.post("/v2/embed", json={"texts": [long_text], "truncate": "START"}).json()
        refusals = [
            (plain.post("/v2/embed", json={"texts": ["a"], "embedding_types": ["int8"]}), 422, "--ranges"),
            (client.post("/v2/embed", json={"texts": ["a"], "embedding_types": ["uint8"], "output_dimension": 8}), 422,
             "full dimension"),
            (client.post("/v2/embed", json={"texts": [long_text], "truncate": "NONE"}), 413, "tokens"),
            (client.post("/v2/embed", json={"texts": ["a"], "images": ["data:x"]}), 422, "'images' is not supported"),
            (client.post("/v2/embed", json={"texts": ["a"], "max_tokens": 9}), 422, "'max_tokens' is not supported"),
            (client.post("/v1/embed", json={"texts": ["a"], "output_dimension": 8}), 422, "output_dimension"),
            (client.post("/v1/embed", json={"texts": []}), 422, "texts"),
            (client.post("/v1/embed", json={"texts": ["a"], "embedding_types": ["int4"]}), 422, "embedding_types"),
            (client.post("/v1/embed", json={"texts": ["a"] * 5}), 413, "max-client-batch-size"),
            (client.post("/embed", json={"inputs": "a", "embedding_types": ["int8"]}), 422, "/v2/embed"),
        ]
    assert np.array(short["embeddings"]["float"]).shape == (1, 8)
    np.testing.assert_allclose(short["embeddings"]["float"], embedder.encode(["a b c"], dim=8), atol=ATOL)
    np.testing.assert_allclose(cut["embeddings"]["float"], embedder.encode([long_text], truncation_side="left"), atol=ATOL)
    for response, status, words in refusals:
        assert response.status_code == status, (words, response.text)
        message = assert_cohere_error(response, status) if response.request.url.path != "/embed" else response.json()["error"]
        assert words in message, (words, message)


def test_cohere_rerank_over_http(reranker):
    """The request forms Jina's API and LangChain send, and every refusal in Cohere's error shape."""
    query, texts = "chat", ["le chat", "der hund", "casa"]
    expected = reranker.rank(query, texts, normalize=True)
    with live(reranker, max_client_batch_size=3) as client:
        strings = client.post("/v1/rerank", json={"query": query, "documents": texts, "return_documents": True}).json()
        fields = client.post("/v1/rerank", json={
            "query": query, "documents": [{"title": t} for t in texts], "rank_fields": ["title"], "top_n": 10,
        }).json()  # fmt: skip
        refusals = [
            (client.post("/v1/rerank", json={"query": query, "documents": [{"title": "x"}]}), 422, "no field 'text'"),
            (client.post("/v1/rerank", json={"query": query, "documents": []}), 422, "documents"),
            (client.post("/v1/rerank", json={"query": query, "documents": texts, "top_n": 0}), 422, "top_n"),
            (client.post("/v1/rerank", json={"query": query, "documents": texts * 2}), 413, "max-client-batch-size"),
            (client.post("/v2/rerank", json={"query": query, "documents": texts, "max_tokens_per_doc": 9}), 422,
             "'max_tokens_per_doc' is not supported"),
            (client.post("/v2/rerank", json={"query": query, "documents": [{"text": "x"}]}), 422, "documents"),
            (client.post("/rerank", json={"query": query, "documents": texts}), 422, "/v1/rerank"),
        ]
    assert [(r["index"], r["document"]) for r in strings["results"]] == [(r["index"], {"text": r["text"]}) for r in expected]
    assert [r["relevance_score"] for r in strings["results"]] == pytest.approx([r["score"] for r in expected], abs=ATOL)
    assert strings["usage"]["total_tokens"] == strings["meta"]["tokens"]["input_tokens"] > 0
    assert [r["index"] for r in fields["results"]] == [r["index"] for r in expected] and "document" not in fields["results"][0]
    for response, status, needle in refusals[:-1]:
        assert needle in assert_cohere_error(response, status)
    assert "/v1/rerank" in assert_tei_error(*refusals[-1][:2])


def test_tokenize_and_decode(prompted_dirs):
    """TEI's /tokenize (ids, token texts, offsets in the text sent, the prompt /embed would use) and /decode."""
    embedder = Embedder(prompted_dirs["dense"])
    text = "the quick brown fox"
    with live(embedder) as client:
        plain = client.post("/tokenize", json={"inputs": text, "prompt_name": "passage"}).json()
        bare = client.post("/tokenize", json={"inputs": [text, "a dog"], "add_special_tokens": False,
                                              "prompt_name": "passage"}).json()  # fmt: skip
        default = client.post("/tokenize", json={"inputs": text}).json()
        ids = [token["id"] for token in plain[0]]
        decoded = client.post("/decode", json={"ids": ids}).json()
        kept = client.post("/decode", json={"ids": [ids, ids[:2]], "skip_special_tokens": False}).json()
        refusals = [
            (client.post("/tokenize", json={"inputs": []}), "inputs"),
            (client.post("/tokenize", json={"inputs": text, "prompt_name": "nope"}), "prompt_name"),
            (client.post("/decode", json={"ids": [embedder.vocab_size]}), "outside the vocabulary"),
            (client.post("/decode", json={"ids": ["a"]}), "token ids"),
        ]
    assert ids == embedder.tokenize(text, prompt=PROMPTS["passage"])[0]
    assert [t["special"] for t in plain[0]] == [True] + [False] * (len(ids) - 2) + [True]
    words = [t for t in plain[0] if t["start"] is not None]
    assert "".join(text[t["start"] : t["stop"]] for t in words).replace(" ", "") == text.replace(" ", "")
    assert all(t["text"] == text[t["start"] : t["stop"]] for t in words)
    assert [t["id"] for t in bare[0]] == ids[1:-1] and len(bare) == 2
    assert [t["id"] for t in default[0]] == embedder.tokenize(text, prompt=embedder.resolve_prompt(None))[0]
    assert decoded == [embedder.tokenizer.decode(ids, skip_special_tokens=True)]
    assert kept == [embedder.tokenizer.decode(ids), embedder.tokenizer.decode(ids[:2])]
    for response, needle in refusals:
        assert needle in assert_tei_error(response, 422)


def test_embed_all_and_similarity(server, embedder, monkeypatch):
    """TEI's /embed_all and /similarity, and huggingface_hub's InferenceClient on the root route as TEI serves it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # it blocks loopback too; nothing else runs
    hub_client = huggingface_hub.InferenceClient(model=str(server.base_url), token=KEY)
    tokens = server.post("/embed_all", json={"inputs": TEXTS[:2]})
    scores = server.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})
    via_hub = hub_client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    features = hub_client.feature_extraction(TEXTS[0], normalize=False, truncate=True)
    refusals = [
        server.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}}),
        server.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"k": 1}}),
        server.post("/embed_all", json={"inputs": "a", "prompt_name": "nope"}),
    ]
    assert tokens.status_code == 200, tokens.text
    for got, expected in zip(tokens.json(), embedder.encode_all(TEXTS[:2])):
        np.testing.assert_allclose(np.array(got, dtype=np.float32), expected, atol=ATOL)
    vectors = embedder.encode(TEXTS)
    expected = embedder.similarity(vectors[:1], vectors[1:])[0]
    assert scores.json() == pytest.approx(expected.tolist(), abs=ATOL) and via_hub == pytest.approx(expected.tolist(), abs=ATOL)
    np.testing.assert_allclose(features.reshape(-1), embedder.encode(TEXTS[0], normalize=False)[0], atol=ATOL)
    for response in refusals:
        assert_tei_error(response, 422)


def test_head_health(server):
    response = server.head("/health")
    assert response.status_code == 200 and response.content == b""


# ---------------------------------------------------------------------- truncation_direction, prompts
@pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")
def test_truncation_direction_left_keeps_the_end(server, embedder, sparse_embedder, reranker):
    """TEI's truncation_direction on /embed, /embed_sparse and /rerank: the library's truncation side."""
    left = embedder.encode(LONG_TEXTS, truncation_side="left")
    assert not np.allclose(left, embedder.encode(LONG_TEXTS), atol=1e-3)  # the side matters for these texts
    for direction in ("Left", "left"):  # TEI's spelling, and the lower-case one TEI also takes
        got = vectors(server.post("/embed", json={"inputs": LONG_TEXTS, "truncation_direction": direction}))
        np.testing.assert_allclose(got, left, atol=ATOL)
    right = vectors(server.post("/embed", json={"inputs": LONG_TEXTS, "truncation_direction": "Right"}))
    np.testing.assert_allclose(right, embedder.encode(LONG_TEXTS), atol=ATOL)
    query, texts = "chat", ["le chat " * 80 + "der hund", "casa"]
    with live(sparse_embedder, reranker, names=["multi", "rerank"]) as client:
        sparse = client.post("/embed_sparse", json={"inputs": LONG_TEXTS, "truncation_direction": "Left"}).json()
        raw = client.post("/rerank", json={"query": query, "texts": texts, "truncation_direction": "Left", "raw_scores": True})
    expected = sparse_embedder.sparse_tokens(sparse_embedder.tokenize(LONG_TEXTS, truncation_side="left"))
    for row, weights in zip(sparse, expected):
        assert {v["token"]: v["value"] for v in row} == pytest.approx(weights, abs=ATOL)
    assert expected != sparse_embedder.encode_sparse(LONG_TEXTS)
    scores = reranker.score(query, texts, truncation_side="left")
    assert {r["index"]: r["score"] for r in raw.json()} == pytest.approx(dict(enumerate(scores)), abs=ATOL)
    assert abs(scores[0] - reranker.score(query, texts)[0]) > 1e-3


@pytest.fixture(scope="module")
def prompted_dirs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Directories saved by sentence-transformers with prompts and a default prompt name: Dense + Normalize, and a
    Pooling that leaves the prompt out (include_prompt false)."""
    build = fixtures.build_sentence_transformer
    options = {"prompts": PROMPTS, "default_prompt_name": "query"}
    return {
        "dense": build(tmp_path_factory.mktemp("st-dense"), tiny_model_dir, pooling="mean", dense=((16, "Tanh"),),
                       normalize=True, **options),
        "no-prompt-pooling": build(tmp_path_factory.mktemp("st-exclude"), tiny_model_dir, pooling="mean",
                                   include_prompt=False, **options),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["dense", "no-prompt-pooling"])
def test_prompts_give_sentence_transformers_vectors(prompted_dirs, kind):
    """A request without prompt_name gets the checkpoint's default prompt, one with it the prompt it names:
    /embed and /v1/embeddings equal `SentenceTransformer.encode`, as `Embedder.encode` does."""
    path = prompted_dirs[kind]
    reference = SentenceTransformer(str(path), device="cpu")
    expected = {
        "default": reference.encode(TEXTS, normalize_embeddings=True),
        "passage": reference.encode(TEXTS, prompt_name="passage", normalize_embeddings=True),
        "raw": reference.encode(TEXTS, prompt_name="search"),
    }
    assert not np.allclose(expected["default"], reference.encode(TEXTS, prompt="", normalize_embeddings=True), atol=1e-3)
    embedder = Embedder(path)
    with live(embedder, names=["st"]) as client:
        got = {
            "default": vectors(client.post("/embed", json={"inputs": TEXTS})),
            "passage": vectors(client.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage"})),
            "raw": vectors(client.post("/embed", json={"inputs": TEXTS, "prompt_name": "search", "normalize": False})),
        }
        openai_client = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="-", max_retries=0)
        for name, extra in (("default", None), ("passage", {"prompt_name": "passage"})):  # prompt_name: an extension
            result = openai_client.embeddings.create(model="st", input=TEXTS, encoding_format="float", extra_body=extra)
            np.testing.assert_allclose([d.embedding for d in result.data], expected[name], atol=ATOL)
        ids = embedder.tokenize(TEXTS)  # token ids are used as given: no prompt
        as_given = vectors(client.post("/embed", json={"inputs": ids}))
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, err_msg=name)
    np.testing.assert_allclose(as_given, reference.encode(TEXTS, prompt="", normalize_embeddings=True), atol=ATOL)


def test_server_default_prompt(prompted_dirs):
    """--default-prompt-name / --default-prompt replace the checkpoint's default prompt; prompt_name still wins."""
    path = prompted_dirs["dense"]
    reference, embedder = SentenceTransformer(str(path), device="cpu"), Embedder(path)
    for settings, expected in (
        ({"default_prompt_name": "passage"}, reference.encode(TEXTS, prompt_name="passage")),
        ({"default_prompt": "custom: "}, reference.encode(TEXTS, prompt="custom: ")),
        ({"default_prompt": ""}, reference.encode(TEXTS, prompt="")),
    ):
        with live(embedder, names=["st"], **settings) as client:
            np.testing.assert_allclose(vectors(client.post("/embed", json={"inputs": TEXTS})), expected, atol=ATOL)
            named = vectors(client.post("/embed", json={"inputs": TEXTS, "prompt_name": "search"}))
            info = client.get("/info").json()
        assert {name: info[name] for name in settings} == settings
        np.testing.assert_allclose(named, reference.encode(TEXTS, prompt_name="search"), atol=ATOL)
    with pytest.raises(ValueError, match="not both"):
        ServerSettings(default_prompt_name="query", default_prompt="q: ")


def test_serve_refuses_an_unknown_default_prompt_name(prompted_dirs, capsys):
    assert main(["serve", "--model", str(prompted_dirs["dense"]), "--default-prompt-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the default prompt name 'nope' is not one of" in err
    assert "(query, document, passage, search)" in err and "--default-prompt" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--default-prompt-name", "query", "--default-prompt", "q: "])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------------- big requests, several models
def test_big_requests_are_split_inside_the_server(embedder):
    """OpenAI's 2048 inputs per request by default, cut into --max-batch-tokens jobs, each result the Embedder's."""
    texts = [f"{TEXTS[i % 4]} number {i}" for i in range(300)]
    with live(embedder, names=["tiny"], max_batch_tokens=256) as client:
        result = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="-", max_retries=0).embeddings.create(
            model="tiny", input=texts, encoding_format="float"
        )
        stats = metric_values(client)
        too_many = client.post("/embed", json={"inputs": ["a"] * 2049})
    np.testing.assert_allclose([d.embedding for d in result.data], embedder.encode(texts), atol=ATOL)
    tokens = sum(map(len, embedder.tokenize(texts)))
    assert result.usage.prompt_tokens == tokens
    assert stats['gte_batch_size_count{model="tiny"}'] >= tokens / 256  # budget-sized batches
    assert "2048" in assert_tei_error(too_many, 413)


def test_several_models_in_one_server(embedder, sparse_embedder, reranker):
    texts = ["le chat est une maison", "der hund"]
    with live(embedder, sparse_embedder, reranker, names=["en", "multi", "rerank"]) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        info = client.get("/info").json()
        en = vectors(client.post("/embed", json={"inputs": texts, "model": "en"}))
        multi = client.post("/v1/embeddings", json={"input": texts, "model": "multi"}).json()
        unnamed = client.post("/embed", json={"inputs": texts})
        sparse = client.post("/embed_sparse", json={"inputs": texts}).json()  # only "multi" has token weights
        ranked = client.post("/rerank", json={"query": "chat", "texts": texts}).json()  # the one reranker
        wrong = client.post("/v1/embeddings", json={"input": texts, "model": "rerank"})
        stats = metric_values(client)
    assert listed == ["en", "multi", "rerank"] and [m["model_id"] for m in info["models"]] == listed
    assert info["model_id"] == "en" and [m["model_type"] for m in info["models"]] == ["embedding"] * 2 + ["reranker"]
    np.testing.assert_allclose(en, embedder.encode(texts), atol=ATOL)
    assert multi["model"] == "multi"
    np.testing.assert_allclose([d["embedding"] for d in multi["data"]], sparse_embedder.encode(texts), atol=ATOL)
    assert "name one in `model`" in assert_tei_error(unnamed, 400)
    for row, expected in zip(sparse, sparse_embedder.encode_sparse(texts)):
        assert {v["token"]: v["value"] for v in row} == pytest.approx(expected, abs=ATOL)
    assert [r["index"] for r in ranked] == [r["index"] for r in reranker.rank("chat", texts)]
    assert "/rerank" in assert_openai_error(wrong, 400)
    for name, inputs in (("en", 2), ("multi", 4), ("rerank", 2)):  # multi: dense and sparse
        assert stats[f'gte_inputs_total{{model="{name}"}}'] == inputs


def test_serve_checks_its_model_names(tiny_model_dir, capsys):
    model = str(tiny_model_dir)
    assert main(["serve", "--model", model, "--model", model]) == 2
    assert "the same name" in capsys.readouterr().err
    assert main(["serve", "--model", model, "--served-model-name", "a", "--served-model-name", "b"]) == 2
    assert "give one --served-model-name per --model" in capsys.readouterr().err
    assert main(["serve", "--model", model, "--revision", "a", "--revision", "b"]) == 2
    assert "2 --revision for 1 --model: give one --revision per --model" in capsys.readouterr().err


def test_a_broken_checkpoint_is_a_refused_start(tiny_model_dir, tmp_path, capsys):
    """A truncated model.safetensors or a config.json that disagrees with the weights: one line, exit 2, no server."""
    for name, change in (("truncated", "model.safetensors"), ("other-config", "config.json")):
        broken = tmp_path / name
        shutil.copytree(tiny_model_dir, broken)
        file = broken / change
        if change == "model.safetensors":
            file.write_bytes(file.read_bytes()[:-100])
        else:
            file.write_text(json.dumps(json.loads(file.read_text()) | {"num_hidden_layers": 3}))
        assert main(["serve", "--model", str(tiny_model_dir), "--model", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"gte serve: error: {broken}"), err


def test_load_model_picks_the_class_from_the_checkpoint(tiny_model_dir, reranker_model_dir, classifier_model_dir):
    options = dict(device=None, dtype=None, max_length=None)
    assert type(load_model(str(tiny_model_dir), **options)) is Embedder
    assert type(load_model(str(reranker_model_dir), **options)) is Reranker  # one label
    assert type(load_model(str(classifier_model_dir), **options)) is Classifier  # three


def test_load_model_at_a_revision(two_revisions_hub_cache, tiny_model_dir, monkeypatch):
    fixtures.use_hub_cache(two_revisions_hub_cache, monkeypatch)
    model = load_model(fixtures.OFFICIAL_ID, device=None, dtype=None, max_length=None, revision=fixtures.OLD_REVISION)
    assert model.model_name == f"{fixtures.OFFICIAL_ID}@{fixtures.OLD_REVISION}"
    np.testing.assert_allclose(model.encode(["paris"]), Embedder(tiny_model_dir).encode(["paris"]), atol=1e-6)


def test_info_of_an_int8_model(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8Warning)  # the tiny random model may fall under int8's bar
        quantized = Embedder(tiny_model_dir, dtype="int8")
    with live(quantized) as client:
        info = client.get("/info").json()
        got = vectors(client.post("/embed", json={"inputs": TEXTS}))
    assert info["dtype"] == "int8" and info["int8_fidelity"] == pytest.approx(quantized.int8_fidelity.as_dict())
    np.testing.assert_allclose(got, quantized.encode(TEXTS), atol=ATOL)


# ---------------------------------------------------------------------- operations
def test_health_info_metrics(server, embedder):
    assert server.get("/health").json() == {"status": "ok"}
    info = server.get("/info").json()
    assert info["model_id"] == "tiny-gte" and info["model_type"] == "embedding" and info["sparse"] is False
    assert (info["dtype"], info["device"], info["backend"]) == ("float32", "cpu", embedder.backend)
    assert info["int8_fidelity"] is None
    assert (info["max_input_length"], info["max_client_batch_size"], info["hidden_size"]) == (64, 8, 32)
    assert "api_key" not in info and info["auth"] is True
    assert (info["threads"], info["threads_from"]) == (torch.get_num_threads(), threads.choose().source)
    before = metric_values(server)
    server.post("/embed", json={"inputs": TEXTS})
    server.post("/embed", json={"inputs": []})
    after = metric_values(server)
    ok, bad = 'gte_requests_total{endpoint="/embed",status="200"}', 'gte_requests_total{endpoint="/embed",status="422"}'
    assert after[ok] - before.get(ok, 0) == 1 and after[bad] - before.get(bad, 0) == 1
    tokens, inputs = 'gte_tokens_total{model="tiny-gte"}', 'gte_inputs_total{model="tiny-gte"}'
    assert after[tokens] - before[tokens] == sum(map(len, embedder.tokenize(TEXTS)))
    assert after[inputs] - before[inputs] == len(TEXTS)
    count = 'gte_request_duration_seconds_count{endpoint="/embed"}'
    assert after[count] - before.get(count, 0) == 2
    assert after['gte_request_duration_seconds_bucket{endpoint="/embed",le="+Inf"}'] == after[count]
    assert after['gte_queue_depth{model="tiny-gte"}'] == 0 and after['gte_requests_in_flight{model="tiny-gte"}'] == 0
    assert after['gte_batch_size_count{model="tiny-gte"}'] >= 1 and 'gte_batch_tokens_sum{model="tiny-gte"}' in after
    assert after["process_resident_memory_bytes"] > 0 and 'gte_request_size_bytes_count{endpoint="/embed"}' in after


def test_api_key(server):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = server.post("/v1/embeddings", json={"input": "x"}, headers=headers)
        assert assert_openai_error(response, 401) and response.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in assert_tei_error(server.post("/embed", json={"inputs": "x"}, headers=headers), 401)
        assert server.get("/metrics", headers=headers).status_code == 401
    assert server.get("/health", headers={"Authorization": ""}).status_code == 200  # probes need no key
    assert server.post("/embed", json={"inputs": "x"}).status_code == 200


# ---------------------------------------------------------------------- errors: readable, contained
@pytest.mark.parametrize(
    "path, body, status, needle",
    [
        ("/embed", b'{"inputs": ["a",', 422, "not valid JSON"),
        ("/v1/embeddings", b"not json", 422, "not valid JSON"),
        ("/embed", None, 422, "body is missing"),
        ("/embed", {"texts": ["a"]}, 422, "inputs: Field required"),
        ("/embed", {"inputs": []}, 422, "empty list"),
        ("/v1/embeddings", {"input": []}, 422, "empty list"),
        ("/v1/embeddings", {"input": [["a"]]}, 422, "token ids"),
        ("/v1/embeddings", {"input": ["a", 1]}, 422, "strings"),
        ("/v1/embeddings", {"input": [[2, 3], []]}, 422, "item 1"),
        ("/embed", {"inputs": 3.5}, 422, "must be a string"),
        ("/embed", {"inputs": "a", "normalize": "maybe"}, 422, "normalize"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": [[2, 10**6, 3]]}, 422, "outside the vocabulary"),
        ("/embed", {"inputs": [[2, -1, 3]]}, 422, "outside the vocabulary"),
        ("/embed", {"inputs": "a", "dimensions": 33}, 422, "dimensions"),
        ("/embed", {"inputs": "a", "dimensions": 0}, 422, "dimensions"),
        ("/v1/embeddings", {"input": "a", "model": "other"}, 404, "does not exist"),
        ("/embed", {"inputs": ["a"] * 9}, 413, "max-client-batch-size"),
        ("/v1/embeddings", {"input": ["a"] * 9}, 413, "max-client-batch-size"),
        ("/embed", {"inputs": [LONG_TEXT], "truncate": False}, 413, "truncate"),
        ("/v1/embeddings", {"input": LONG_TEXT, "truncate": False}, 413, "truncate"),
        ("/embed", {"inputs": [[5] * 65]}, 413, "never truncated"),
        ("/embed_sparse", {"inputs": "a"}, 400, "token-weight head"),
        ("/embed_hybrid", {"inputs": "a"}, 400, "token-weight head"),
        ("/rerank", {"query": "a", "texts": ["b"]}, 400, "not a reranker"),
        # bodies say exactly what they mean: no field ignored, no type coerced
        ("/embed", {"inputs": "a", "normalise": False}, 422, "unknown field 'normalise' (this route takes: inputs, model, "
         "normalize, truncate, truncation_direction, prompt_name, dimensions)"),
        ("/embed", {"inputs": "a", "dimension": 8}, 422, "unknown field 'dimension'"),
        ("/v1/embeddings", {"input": "a", "dimension": 8}, 422, "unknown field 'dimension'"),
        ("/embed", {"inputs": "a", "normalize": "false"}, 422, 'normalize: Input should be a valid boolean, got "false"'),
        ("/embed", {"inputs": "a", "dimensions": "8"}, 422, 'dimensions: Input should be a valid integer, got "8"'),
        ("/v1/embeddings", {"input": "a", "dimensions": 8.0}, 422, "dimensions: Input should be a valid integer, got 8.0"),
        ("/v1/embeddings", {"input": "a", "truncate": 0}, 422, "truncate: Input should be a valid boolean, got 0"),
        ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "truncation_direction: Input should be 'Right', 'Left'"),
        ("/v1/embeddings", {"input": "a", "truncation_direction": "Left"}, 422, "unknown field 'truncation_direction'"),
        ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, "prompt_name 'nope' is not one of tiny-gte's prompts (query, document)"),
        ("/embed", {"inputs": [[2, 3]], "prompt_name": "query"}, 422, "prompt_name applies to texts"),
        ("/embed_sparse", {"inputs": "a", "prompt_name": "query"}, 422, "'prompt_name' is not supported: prompts do not apply"),
        ("/rerank", {"query": "a", "texts": ["b"], "prompt_name": "query"}, 422, "unknown field 'prompt_name'"),
        ("/rerank", {"query": "a", "texts": ["b"], "top_n": 1}, 422, "'top_n' is not supported"),
        ("/v1/embeddings", {"input": "a", "input_type": "query"}, 422, "'input_type' is not supported: send \"prompt_name\""),
    ],
)
def test_bad_requests_are_answered_and_contained(server, embedder, path, body, status, needle):
    if isinstance(body, bytes):
        response = server.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = server.post(path, json=body)
    if path.startswith("/v1/"):
        message = assert_openai_error(response, status)
        assert response.json()["error"]["code"] == ("model_not_found" if status == 404 else None)
    else:
        message = assert_tei_error(response, status)
    assert needle in message
    np.testing.assert_allclose(
        vectors(server.post("/embed", json={"inputs": TEXTS[:2]})), embedder.encode(TEXTS[:2]), atol=ATOL
    )


def test_concurrent_requests_get_their_own_vectors(embedder):
    """Many clients at once, with different inputs and options: each gets exactly its own vectors."""
    words = ["alpha", "beta", "gamma", "delta", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    jobs = [
        ([" ".join(words[i % 7 : i % 7 + 1 + i % 5]), f"{words[i % 11]} text {i}"], i % 2 == 0, 8 * (1 + i % 4))
        for i in range(24)
    ]

    def call(client: httpx.Client, job):
        texts, normalize, dim = job
        return vectors(client.post("/embed", json={"inputs": texts, "normalize": normalize, "dimensions": dim}))

    with live(embedder, max_wait_ms=20) as client, ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda job: call(client, job), jobs))
    for (texts, normalize, dim), got in zip(jobs, results):
        np.testing.assert_allclose(got, embedder.encode(texts, normalize=normalize, dim=dim), atol=ATOL)


class GatedEmbedder(Embedder):
    """An Embedder whose batches wait for the test to open a gate (to hold requests in flight)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.entered = threading.Event(), threading.Event()

    def encode_tokens(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return super().encode_tokens(*args, **kwargs)


def test_batching_backpressure_and_health_during_a_batch(tiny_model_dir, embedder):
    gated = GatedEmbedder(tiny_model_dir)
    with live(gated, names=["gated"], max_concurrent_requests=3, max_wait_ms=0) as client, ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.post, "/embed", json={"inputs": TEXTS[:1]})
        wait_for(gated.entered.is_set, "the first batch")
        assert client.get("/health").status_code == 200  # the event loop is free while the worker computes
        queued = [pool.submit(client.post, "/embed", json={"inputs": [text]}) for text in TEXTS[1:3]]
        wait_for(lambda: metric_values(client)['gte_queue_depth{model="gated"}'] == 2, "two queued requests")
        assert metric_values(client)['gte_requests_in_flight{model="gated"}'] == 3
        busy = client.post("/embed", json={"inputs": "one too many"})
        assert "max-concurrent-requests" in assert_tei_error(busy, 429) and busy.headers["retry-after"] == "1"
        busy = client.post("/v1/embeddings", json={"input": "one too many"})
        assert assert_openai_error(busy, 429) and busy.headers["retry-after"] == "1"
        gated.gate.set()
        results = [vectors(f.result()) for f in [first, *queued]]
        after = vectors(client.post("/embed", json={"inputs": TEXTS[3]}))
        stats = metric_values(client)
    np.testing.assert_allclose(np.concatenate([*results, after]), embedder.encode(TEXTS), atol=ATOL)
    # batches: [first], [the two queued requests merged], [after]
    assert (stats['gte_batch_requests_count{model="gated"}'], stats['gte_batch_requests_sum{model="gated"}']) == (3, 4)
    assert stats['gte_requests_total{endpoint="/embed",status="429"}'] == 1


# ---------------------------------------------------------------------- the real CLI, SIGTERM
def test_cli_serves_and_shuts_down_gracefully_on_sigterm(tiny_model_dir, embedder):
    """`gte serve` in a subprocess: at SIGTERM it stops accepting connections, completes the request
    in flight, and exits 0."""
    command = [sys.executable, "-m", "gte_cli", "serve", "--model", str(tiny_model_dir), "--port", "0",
               "--max-wait-ms", "5000", "--served-model-name", "tiny"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        url = _wait_for_url(process)
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(1) as pool:
            assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
            in_flight = pool.submit(client.post, "/embed", json={"inputs": TEXTS})  # waits 5 s for company
            wait_for(lambda: metric_values(client)['gte_queue_depth{model="tiny"}'] == 1, "the request to queue")
            process.send_signal(signal.SIGTERM)
            wait_for(lambda: _refused(url), "the server to stop accepting connections")
            assert not in_flight.done()
            np.testing.assert_allclose(vectors(in_flight.result()), embedder.encode(TEXTS), atol=ATOL)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:  # accepted just before the listener closed, then dropped
        pass
    return False


def _wait_for_url(process: subprocess.Popen) -> str:
    """Read the server's log until uvicorn says where it listens; keep draining it afterwards."""
    for line in process.stderr:
        if match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return match.group(1)
    raise AssertionError(f"the server exited with {process.wait()} before listening")


# ---------------------------------------------------------------------- units
def run_batcher(run, jobs, **options) -> list:
    """Submit every (key, items) request at once (a token per item) to a fresh Batcher; return the results (or exceptions)."""

    async def main():
        batcher = Batcher(run, metrics=Metrics().for_model("m"), **({"max_batch_tokens": 100, "max_wait_ms": 0} | options))
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(k, items, [1] * len(items)) for k, items in jobs), return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_batcher_merges_same_key_jobs_within_the_budget():
    calls = []

    def run(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    jobs = [("a", [1, 2]), ("b", [3]), ("a", [4, 5]), ("a", [6, 7]), ("b", [8])]
    results = run_batcher(run, jobs, max_batch_tokens=4)
    assert results == [[f"{k}:{i}" for i in items] for k, items in jobs]
    assert calls == [("a", [1, 2, 4, 5]), ("b", [3, 8]), ("a", [6, 7])]
    calls.clear()
    run_batcher(run, jobs, batching=False)
    assert calls == [(k, items) for k, items in jobs]


def test_batcher_waits_for_company_until_the_budget_is_full():
    calls = []

    async def main():
        batcher = Batcher(
            lambda key, items: calls.append(items) or items, max_batch_tokens=4, max_wait_ms=60_000, metrics=Metrics().for_model("m")
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("k", [1, 2], [1, 1]))
        await asyncio.sleep(0.05)
        assert not first.done()  # waiting for company
        results = await asyncio.wait_for(asyncio.gather(first, batcher.submit("k", [3, 4], [1, 1])), 30)
        await batcher.stop()
        return results

    assert asyncio.run(main()) == [[1, 2], [3, 4]] and calls == [[1, 2, 3, 4]]


def test_batcher_isolates_a_failing_job():
    def run(key, items):
        if "bad" in items:
            raise RuntimeError("bad item")
        return items

    results = run_batcher(run, [("k", ["a"]), ("k", ["bad"]), ("k", ["c", "d"])])
    assert results[0] == ["a"] and results[2] == ["c", "d"]
    assert isinstance(results[1], RuntimeError)


def test_batcher_drops_jobs_whose_client_left():
    gate, calls = threading.Event(), []

    def run(key, items):
        calls.append(list(items))
        gate.wait(30)
        return items

    async def main():
        batcher = Batcher(run, max_batch_tokens=100, max_wait_ms=0, metrics=Metrics().for_model("m"))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("k", ["first"], [1]))
        while not calls:
            await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("k", ["gone"], [1]))
        kept = asyncio.ensure_future(batcher.submit("k", ["kept"], [1]))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        results = await asyncio.gather(first, kept)
        await batcher.stop()
        return results

    assert asyncio.run(main()) == [["first"], ["kept"]]
    assert calls == [["first"], ["kept"]]


def run_behind(first, later, *, leaves: bool = False, **options) -> tuple[list, list]:
    """Submit the (key, items) request `first`, then, while its first batch runs, the requests `later` (a token per
    item; `leaves`: first's client goes away meanwhile). Return the batches run, as (key, items), and the results of
    the requests that stayed."""
    gate, calls = threading.Event(), []

    def run(key, items):
        calls.append((key, list(items)))
        assert gate.wait(30), "the test never opened the gate"
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = Batcher(run, metrics=Metrics().for_model("m"), **({"max_batch_tokens": 4, "max_wait_ms": 0} | options))
        batcher.start()
        big = asyncio.ensure_future(batcher.submit(*first, [1] * len(first[1])))
        while not calls:
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(batcher.submit(key, items, [1] * len(items))) for key, items in later]
        await asyncio.sleep(0)  # all of them queued
        if leaves:
            big.cancel()
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*([] if leaves else [big]), *rest), 30)
        await batcher.stop()
        return results

    return calls, asyncio.run(main())


def labelled(key, items) -> list[str]:
    return [f"{key}:{item}" for item in items]


BIG = ("k", list(range(12)))  # three full batches alone


def test_a_small_request_runs_in_a_batch_of_its_own_size_after_the_one_running():
    for batching in (True, False):  # without batching too, every batch one request's, in turns
        calls, results = run_behind(BIG, [("k", ["s"])], batching=batching)
        assert calls == [("k", [0, 1, 2, 3]), ("k", ["s"]), ("k", [4, 5, 6, 7]), ("k", [8, 9, 10, 11])]
        assert results == [labelled(*BIG), ["k:s"]]


def test_small_requests_merge_by_key_and_take_turns_with_a_big_one():
    later = [("k", ["s1"]), ("k", ["s2"]), ("other", ["o"]), ("k", ["s3"])]
    calls, results = run_behind(BIG, later)
    assert calls == [
        ("k", [0, 1, 2, 3]), ("k", ["s1", "s2", "s3"]), ("other", ["o"]), ("k", [4, 5, 6, 7]), ("k", [8, 9, 10, 11])
    ]  # fmt: skip
    assert results == [labelled(*BIG), *(labelled(*request) for request in later)]


def test_requests_behind_the_front_join_only_whole():
    """The front request fills the budget; a request behind it joins only if all of its items fit what is left."""
    later = [("k", ["m1", "m2"]), ("k", ["x1", "x2", "x3"]), ("k", ["s"])]
    calls, results = run_behind(("k", list(range(6))), later)
    assert calls == [
        ("k", [0, 1, 2, 3]), ("k", ["m1", "m2", "s"]), ("k", ["x1", "x2", "x3"]), ("k", [4, 5])
    ]  # fmt: skip
    assert results == [labelled("k", range(6)), *(labelled(*request) for request in later)]


def test_big_requests_alternate_and_a_small_one_waits_one_batch_of_each():
    other = ("k", [f"b{i}" for i in range(8)])
    calls, results = run_behind(("k", list(range(8))), [other, ("k", ["s"])])
    assert calls == [
        ("k", [0, 1, 2, 3]), ("k", ["b0", "b1", "b2", "b3"]), ("k", ["s"]), ("k", [4, 5, 6, 7]),
        ("k", ["b4", "b5", "b6", "b7"]),
    ]  # fmt: skip
    assert results == [labelled("k", range(8)), labelled(*other), ["k:s"]]


def test_a_big_request_whose_client_left_runs_no_more_batches():
    calls, results = run_behind(BIG, [("k", ["s"])], leaves=True)
    assert calls == [("k", [0, 1, 2, 3]), ("k", ["s"])] and results == [["k:s"]]


def test_a_big_request_alone_runs_in_budget_full_batches():
    calls = []

    def run(key, items):
        calls.append(list(items))
        return np.array(items, dtype=np.float32)[:, None]  # [n, 1]

    async def main():
        batcher = Batcher(run, max_batch_tokens=10, max_wait_ms=0, metrics=Metrics().for_model("m"))
        batcher.start()
        result = await batcher.submit("k", list(range(8)), [5, 1, 9, 3, 3, 20, 2, 4])
        await batcher.stop()
        return result

    result = asyncio.run(main())
    assert calls == [[0, 1], [2], [3, 4], [5], [6, 7]]  # batching.budget_groups, as the library cuts
    np.testing.assert_array_equal(result, np.arange(8, dtype=np.float32)[:, None])


@pytest.mark.parametrize(
    "value, expected",
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_parse_inputs(value, expected):
    assert parse_inputs(value) == expected


@pytest.mark.parametrize("value", [[], [True, 2], [1.0], [[1], "a"], [[1], []], {"a": 1}, None])
def test_parse_inputs_rejects(value):
    with pytest.raises(Exception, match="must be|empty|token ids"):
        parse_inputs(value)


def test_metrics_follow_prometheus_conventions():
    metrics = Metrics()
    metrics.requests.labels(endpoint='/e"x', status="200").inc()
    metrics.for_model("m").tokens.inc(7)
    metrics.latency.labels(endpoint="/embed").observe(0.02)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["gte_requests"].type == "counter" and families["gte_request_duration_seconds"].type == "histogram"
    assert families["gte_request_size_bytes"].type == "histogram" and "process_cpu_seconds" in families
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples["gte_requests_total", (("endpoint", '/e"x'), ("status", "200"))] == 1
    assert samples["gte_tokens_total", (("model", "m"),)] == 7
    assert samples["gte_inputs_total", (("model", "m"),)] == 0  # a model's series exist from its start
    assert samples["gte_request_duration_seconds_bucket", (("endpoint", "/embed"), ("le", "0.025"))] == 1


def gomp_spin_count(code: str, policy: str | None = None) -> str | None:
    """How long libgomp (torch's OpenMP runtime on Linux) lets a waiting thread spin, as it reports itself
    (OMP_DISPLAY_ENV) when `code` loads torch in a fresh interpreter, with OMP_WAIT_POLICY=`policy` or unset;
    None when no libgomp report comes (another OpenMP runtime)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "VERBOSE"}
    env |= {"OMP_WAIT_POLICY": policy} if policy else {}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr)
    return found and found.group(1)


def test_openmp_threads_sleep_unless_told_otherwise():
    """`import gte` makes the OpenMP runtime torch loads put waiting threads to sleep at once (spinning ones starve
    the server's event loop), where by default they spin; a policy set in the environment wins."""
    default = gomp_spin_count("import torch")
    if default is None:
        pytest.skip("torch's OpenMP runtime is not libgomp: it reports no spin count")
    assert default != "0"  # libgomp's default spins a while (300000 turns)
    assert gomp_spin_count("import gte") == "0"  # OMP_WAIT_POLICY=PASSIVE, as the runtime saw it
    assert gomp_spin_count("import gte", "ACTIVE") == gomp_spin_count("import torch", "ACTIVE") != "0"
