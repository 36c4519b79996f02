"""`gte serve` against hostile and broken input (issue #12): one test per finding of the probe, and a
fuzz-style table of hostile requests sent over raw sockets to a live server, after which a valid
request must still be answered correctly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from test_server import (
    ATOL,
    TEXTS,
    LiveServer,
    _wait_for_url,
    assert_openai_error,
    assert_tei_error,
    live,
    metric_values,
    vectors,
)

from gte.embed import MAX_CHARS_PER_TOKEN, Embedder
from gte.server import ServerSettings, create_app
from gte_cli import main

pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")
SURROGATE = b'"\\ud800"'  # a lone UTF-16 surrogate, escaped as JSON allows but no UTF-8 text can hold


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> Embedder:
    return Embedder(tiny_model_dir)


# ---------------------------------------------------------------------- raw HTTP
def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def request_bytes(
    path: str, body: bytes, *, content_type: str = "application/json", length: int | str | None = None
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    return head.encode() + body


def answer(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the response on `sock` (read until the server closes or the body is complete)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 1 << 62


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------- finding 1: lone surrogates
@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/embeddings", b'{"input": ' + SURROGATE + b"}"),
        ("/v1/embeddings", b'{"input": "a", "model": ' + SURROGATE + b"}"),
        ("/embed", b'{"inputs": [' + SURROGATE + b"]}"),
        ("/rerank", b'{"query": ' + SURROGATE + b', "texts": ["a"]}'),
        ("/rerank", b'{"query": "a", "texts": ["b", ' + SURROGATE + b"]}"),
    ],
)
def test_lone_surrogates_are_a_counted_422(server_with_key, path, body):
    before = metric_values(server_with_key)
    response = server_with_key.post(path, content=body, headers={"content-type": "application/json"})
    check = assert_openai_error if path.startswith("/v1/") else assert_tei_error
    assert "surrogate" in check(response, 422)
    key = f'gte_requests_total{{endpoint="{path}",status="422"}}'
    assert metric_values(server_with_key)[key] - before.get(key, 0) == 1


@pytest.fixture(scope="module")
def server_with_key(embedder):
    with live(embedder, names=["tiny-gte"], api_key="k", max_client_batch_size=8) as client:
        client.headers.update({"Authorization": "Bearer k"})
        yield client


# ---------------------------------------------------------------------- finding 2: stalled bodies
def test_stalled_bodies_hold_no_inference_slot_and_time_out(embedder):
    app = create_app({"tiny": embedder}, ServerSettings(max_concurrent_requests=2, body_timeout_s=600))
    with LiveServer(app) as url:
        stalled = [connect(url) for _ in range(8)]  # 4x the concurrency limit
        for sock in stalled:
            sock.sendall(request_bytes("/embed", b'{"inputs": ["half a bo', length=1000))
        with httpx.Client(base_url=url, timeout=60) as client:
            np.testing.assert_allclose(vectors(client.post("/embed", json={"inputs": TEXTS})), embedder.encode(TEXTS), atol=ATOL)
            assert metric_values(client)['gte_requests_in_flight{model="tiny"}'] == 0
        for sock in stalled:
            sock.close()
    app = create_app({"tiny": embedder}, ServerSettings(body_timeout_s=0.2))
    with LiveServer(app) as url, connect(url) as sock:
        sock.sendall(request_bytes("/v1/embeddings", b'{"input": "ha', length=1000))
        status, body = answer(sock)
        assert status == 408 and "--body-timeout" in body["error"]["message"]


# ---------------------------------------------------------------------- finding 3: SIGTERM with a stalled client
def test_sigterm_finishes_while_a_client_stalls(tiny_model_dir):
    command = [sys.executable, "-m", "gte_cli", "serve", "--model", str(tiny_model_dir), "--port", "0",
               "--body-timeout", "600", "--graceful-shutdown-timeout", "1"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        url = _wait_for_url(process)
        with connect(url) as stalled_body, connect(url) as stalled_headers:
            stalled_body.sendall(request_bytes("/embed", b'{"inputs": "st', length=1000))
            stalled_headers.sendall(b"POST /embed HTTP/1.1\r\nHost: te")
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
            status, body = answer(stalled_body)  # cut off at the timeout: told so, in the API's shape
        log = process.stderr.read()
        assert status == 503 and "shut down before this request was answered" in body["error"], body
        assert body["error_type"] == "Unhealthy"
        assert "Exception in ASGI application" not in log and "CancelledError" not in log, log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


# ---------------------------------------------------------------------- finding 4: one huge text
def test_a_huge_text_costs_what_a_long_one_does(embedder):
    huge = " ".join(["enormous"] * 2_300_000)  # 20.7 MB
    cap = embedder.max_length * MAX_CHARS_PER_TOKEN
    assert embedder.tokenize([huge]) == embedder.tokenize([huge[:cap]])
    with live(embedder, payload_limit=32_000_000) as client:
        client.post("/embed", json={"inputs": "warm up"})
        before = rss_mib()
        body = json.dumps({"inputs": [huge]}).encode()
        cut = vectors(client.post("/embed", content=body, headers={"content-type": "application/json"}))
        body = json.dumps({"input": huge, "truncate": False}).encode()
        refused = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
        del body
        assert rss_mib() - before < 500
    np.testing.assert_allclose(cut, embedder.encode([huge]), atol=ATOL)
    assert "characters" in assert_openai_error(refused, 413)


def test_payload_limit_answers_before_the_body_is_read(embedder):
    with live(embedder, payload_limit=1000) as client, connect(str(client.base_url)) as sock:
        sock.sendall(request_bytes("/v1/embeddings", b"", length=50_000_000))  # declares 50 MB, sends nothing
        status, body = answer(sock)
        assert status == 413 and "--payload-limit" in body["error"]["message"]
        streamed = client.post("/embed", content=iter([b'{"inputs": "', b"x" * 2000, b'"}']),
                               headers={"content-type": "application/json"})  # fmt: skip  (chunked: no length)
        assert "--payload-limit" in assert_tei_error(streamed, 413)
        np.testing.assert_allclose(vectors(client.post("/embed", json={"inputs": TEXTS[:1]})), embedder.encode(TEXTS[:1]), atol=ATOL)


# ---------------------------------------------------------------------- finding 5: strict UTF-8, one error shape
@pytest.mark.parametrize(
    "method, path, body, content_type, status, needle",
    [
        ("POST", "/v1/embeddings", b'{"input": "caf\xe9"}', "application/json", 422, "not UTF-8"),
        ("POST", "/embed", b'{"inputs": "caf\xe9"}', "application/json", 422, "not UTF-8"),
        ("POST", "/v1/embeddings", b"[" * 100_000, "application/json", 422, "recursion limit"),
        ("POST", "/embed", b'{"inputs": ' + b"[" * 100_000, "application/json", 422, "recursion limit"),
        ("POST", "/v1/embeddings", b'{"input": "a"}', "text/plain", 415, "Content-Type"),
        ("POST", "/embed", b"inputs=a", "application/x-www-form-urlencoded", 415, "Content-Type"),
        ("POST", "/v1/nothing", b"{}", "application/json", 404, "no route"),
        ("GET", "/v1/embeddings", b"", "application/json", 405, "POST"),
        ("GET", "/nothing", b"", "application/json", 404, "no route"),
        ("GET", "/embed", b"", "application/json", 405, "POST"),
    ],
)
def test_errors_come_in_one_shape(server_with_key, method, path, body, content_type, status, needle):
    response = server_with_key.request(method, path, content=body, headers={"content-type": content_type})
    check = assert_openai_error if path.startswith("/v1/") else assert_tei_error
    assert needle in check(response, status)


# ---------------------------------------------------------------------- finding 6: empty API keys
def test_empty_api_keys_are_refused_at_start(tiny_model_dir, capsys, monkeypatch):
    with pytest.raises(ValueError, match="API key is empty"):
        ServerSettings(api_key="")
    assert main(["serve", "--model", str(tiny_model_dir), "--api-key", ""]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    monkeypatch.setenv("GTE_API_KEY", " ")
    assert main(["serve", "--model", str(tiny_model_dir)]) == 2
    assert "API key is empty" in capsys.readouterr().err


def test_bad_port_is_one_line_and_exit_2(capsys):
    assert main(["serve", "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port 99999" in err


def test_a_busy_port_fails_before_the_model_loads(capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--model", "no/such-model-anywhere", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_bad_ranges_fail_before_the_model_loads(capsys, tmp_path):
    np.save(tmp_path / "r.npy", np.zeros((3, 4)))
    assert main(["serve", "--model", "no/such-model-anywhere", "--ranges", str(tmp_path / "r.npy"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not float [2, dim]" in err
    assert main(["serve", "--model", "a/b", "--model", "c/d", "--ranges", str(tmp_path / "r.npy"), "--port", "0"]) == 2
    assert "1 --ranges for 2 --model" in capsys.readouterr().err


# ---------------------------------------------------------------------- finding 7: the served name
def test_the_served_name_is_the_directory_name(tiny_model_dir, embedder):
    with live(embedder) as client:
        models = client.get("/v1/models").json()
        info = client.get("/info").json()
        missing = client.post("/v1/embeddings", json={"input": "a", "model": "other"})
    assert [m["id"] for m in models["data"]] == [Path(tiny_model_dir).name] == [info["model_id"]]
    exposed = json.dumps([models, info, missing.json()])
    assert str(Path(tiny_model_dir).parent) not in exposed


# ---------------------------------------------------------------------- fuzz: a table of hostile requests
HOSTILE = [
    # (what, bytes sent, then: "answer" -> expected status, "hold" -> keep the socket open, "close" -> hang up)
    ("lone surrogate", request_bytes("/embed", b'{"inputs": ' + SURROGATE + b"}"), 422),
    ("surrogate in model", request_bytes("/v1/embeddings", b'{"input": "a", "model": ' + SURROGATE + b"}"), 422),
    ("latin-1 body", request_bytes("/embed", b'{"inputs": "\xe9t\xe9"}'), 422),
    ("UTF-16 body", request_bytes("/embed", '{"inputs": "a"}'.encode("utf-16")), 422),
    ("deep nesting", request_bytes("/v1/embeddings", b"[" * 60_000), 422),
    ("deep object", request_bytes("/embed", b'{"a":' * 10_000), 422),
    ("huge declared body", request_bytes("/embed", b"", length=10**12), 413),
    ("body over the limit", request_bytes("/embed", b'{"inputs": "' + b"x" * 70_000 + b'"}'), 413),
    ("empty body", request_bytes("/embed", b""), 422),
    ("not JSON", request_bytes("/v1/embeddings", b"\x00\x01\x02"), 422),
    ("wrong types", request_bytes("/embed", b'{"inputs": {"a": 1}}'), 422),
    ("huge token id", request_bytes("/embed", b'{"inputs": [[1, 99999999999999999999999]]}'), 422),
    ("negative dimensions", request_bytes("/embed", b'{"inputs": "a", "dimensions": -5}'), 422),
    ("NaN", request_bytes("/embed", b'{"inputs": "a", "dimensions": NaN}'), 422),
    ("form body", request_bytes("/embed", b"inputs=a", content_type="application/x-www-form-urlencoded"), 415),
    ("unknown route", request_bytes("/v1/chat/completions", b"{}"), 404),
    ("too many inputs", request_bytes("/embed", json.dumps({"inputs": ["a"] * 9}).encode()), 413),
    ("Content-Length not a number", request_bytes("/embed", b'{"inputs": "a"}', length="abc"), 400),
    ("two Content-Lengths", request_bytes("/embed", b'{"inputs": "a"}', length="15, 16"), 400),
    ("negative Content-Length", request_bytes("/v1/embeddings", b'{"input": "a"}', length=-1), 400),
    ("header without a colon", b"POST /embed HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n", 400),
    ("stalled body", request_bytes("/embed", b'{"inputs": "a', length=100), "hold"),
    ("stalled headers", b"POST /embed HTTP/1.1\r\nContent-Le", "hold"),
    ("slow drip", b"P", "hold"),
    ("gone mid-body", request_bytes("/embed", b'{"inputs": "a', length=100), "close"),
    ("gone after the request", request_bytes("/embed", b'{"inputs": "' + b"word " * 50 + b'"}'), "close"),
    ("gone mid-headers", b"POST /embed HTTP/1.1\r\nHo", "close"),
    ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100, "close"),
]


def test_fuzz_hostile_requests_then_a_valid_one(embedder):
    settings = ServerSettings(payload_limit=65_536, body_timeout_s=600, max_concurrent_requests=4, max_client_batch_size=8)
    with LiveServer(create_app({"tiny": embedder}, settings)) as url:
        held = []
        for what, data, then in HOSTILE:
            sock = connect(url)
            sock.sendall(data)
            if then == "hold":
                held.append(sock)
                continue
            if then == "close":
                sock.close()
                continue
            with sock:
                status, body = answer(sock)
            assert status == then, (what, status, body)
            assert set(body) in ({"error", "error_type"}, {"error"}), (what, body)
            assert isinstance(body["error"], dict) == data.split(b" ")[1].startswith(b"/v1/"), (what, body)  # OpenAI's
        with httpx.Client(base_url=url, timeout=60) as client:
            expected = embedder.encode(TEXTS)
            got = client.post("/v1/embeddings", json={"input": TEXTS}).json()["data"]
            np.testing.assert_allclose([d["embedding"] for d in got], expected, atol=ATOL)
            np.testing.assert_allclose(vectors(client.post("/embed", json={"inputs": TEXTS})), expected, atol=ATOL)
            stats = metric_values(client)
        assert stats['gte_requests_in_flight{model="tiny"}'] == 0 and stats['gte_queue_depth{model="tiny"}'] == 0
        assert not any(key.endswith('status="500"}') for key in stats), stats
        for sock in held:
            sock.close()
