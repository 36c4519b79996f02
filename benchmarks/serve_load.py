"""Bounded load test of `gte serve` on loopback: dynamic batching against one-request batches.

    python benchmarks/serve_load.py                      # base-shaped random model, 1 / 8 / 32 clients
    python benchmarks/serve_load.py --requests 8 32 64 --time-cap 60

Builds a model shaped like gte-base-en-v1.5 (hidden 768, 12 layers, 12 heads, intermediate 3072,
vocab 30528) with random weights and a WordPiece tokenizer trained on generated text, in a temporary
directory. It starts the real `gte serve` CLI twice, in subprocesses: with dynamic batching and
without (every request its own batch). For each client count, one mode after the other, that many
concurrent clients send a fixed number of single-text requests of mixed lengths to POST
/v1/embeddings (base64, as the `openai` client asks), starting none after the time cap. Every
returned vector is checked against the offline `Embedder` for the same text (cosine >= 0.99999);
both servers are stopped with SIGTERM and must exit 0. Prints a markdown table: throughput,
p50 / p99 latency, errors, mismatches, requests merged per batch.

It loads every CPU core for a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fixtures  # noqa: E402  (tiny-checkpoint builders, reused here at base shape)

from gte import NewConfig, NewModel  # noqa: E402
from gte.embed import Embedder  # noqa: E402

MIN_COSINE = 0.99999
MODEL_NAME = "gte-base-shaped"
MODES = {"batching": True, "no batching": False}  # mode -> dynamic batching on
# (share of requests, words per text): mostly short queries, some passages, a few long documents
LENGTH_MIX = ((0.5, (4, 24)), (0.35, (24, 96)), (0.15, (96, 250)))


# ---------------------------------------------------------------------- model and texts
def build_base_model(out: Path) -> Path:
    """gte-base-en-v1.5's shape, random weights, a WordPiece tokenizer trained on generated text."""
    tokenizer = fixtures.train_wordpiece(fixtures.generate_corpus(fixtures.ENGLISH_WORDS, seed=1))
    config = NewConfig(
        vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=8192, type_vocab_size=0, rope_theta=500000.0, rope_scaling={"type": "ntk", "factor": 2.0},
        architectures=["NewModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    fixtures.save_model(NewModel(config), out)
    fixtures.save_tokenizer(tokenizer, out, multilingual=False, max_length=8192)
    fixtures.save_sentence_transformers_files(out, max_seq_length=8192, hidden_size=768, normalize=True)
    return out


def make_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct texts whose lengths follow LENGTH_MIX."""
    rng = random.Random(seed)
    shares, ranges = zip(*LENGTH_MIX)
    texts = []
    for _ in range(n):
        low, high = rng.choices(ranges, weights=shares)[0]
        words = [rng.choice(fixtures.ENGLISH_WORDS) for _ in range(rng.randint(low, high))]
        texts.append(" ".join(words))
    return texts


# ---------------------------------------------------------------------- the server
class Server:
    """`gte serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, *, batching: bool, max_batch_tokens: int, max_wait_ms: float) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        command = [
            sys.executable, "-m", "gte.cli", "serve", "--model", str(model), "--port", self.url.rsplit(":", 1)[1],
            "--served-model-name", MODEL_NAME, "--device", "cpu", "--log-level", "warning",
            "--max-batch-tokens", str(max_batch_tokens), "--max-wait-ms", str(max_wait_ms),
            "--max-concurrent-requests", "1024",
        ] + ([] if batching else ["--no-batching"])  # fmt: skip
        self.process = subprocess.Popen(command, env=os.environ | {"HF_HUB_OFFLINE": "1"})

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gte serve exited with {self.process.returncode} before it was ready")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError("gte serve did not become ready")

    def batch_stats(self) -> tuple[float, float]:
        """(batches run, requests merged into them) from /metrics."""
        values = {}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(("gte_batch_requests_count", "gte_batch_requests_sum")):
                name, value = line.split()
                values[name] = float(value)
        return values.get("gte_batch_requests_count", 0.0), values.get("gte_batch_requests_sum", 0.0)

    def stop(self) -> int:
        """SIGTERM, then the exit status (graceful shutdown must give 0)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the load
@dataclass
class Run:
    mode: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    tokens: int = 0
    errors: int = 0
    mismatches: int = 0
    min_cosine: float = 1.0
    elapsed: float = 0.0
    batches: float = 0.0
    merged: float = 0.0

    def row(self) -> list[str]:
        lat = np.array(self.latencies) * 1000
        p50, p99 = (f"{np.percentile(lat, q):.0f}" for q in (50, 99)) if len(lat) else ("-", "-")
        per_batch = f"{self.merged / self.batches:.1f}" if self.batches else "-"
        return [
            self.mode, str(self.clients), str(len(self.latencies) + self.errors), f"{self.elapsed:.1f}",
            f"{len(self.latencies) / self.elapsed:.2f}", f"{self.tokens / self.elapsed:.0f}", p50, p99,
            str(self.errors), str(self.mismatches), f"{self.min_cosine:.7f}", per_batch,
        ]  # fmt: skip


async def load(url: str, run: Run, texts: list[str], expected: np.ndarray, n_requests: int, time_cap: float) -> None:
    """`run.clients` concurrent clients send `n_requests` requests in all, none started after `time_cap` s."""
    order = random.Random(run.clients).choices(range(len(texts)), k=n_requests)
    limits = httpx.Limits(max_connections=run.clients, max_keepalive_connections=run.clients)
    start = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        while order and time.perf_counter() - start < time_cap:
            i = order.pop()
            sent = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/embeddings", json={"input": texts[i], "model": MODEL_NAME, "encoding_format": "base64"}
                )
                response.raise_for_status()
            except httpx.HTTPError:
                run.errors += 1
                continue
            run.latencies.append(time.perf_counter() - sent)
            body = response.json()
            run.tokens += body["usage"]["prompt_tokens"]
            vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
            cosine = float(vector @ expected[i] / (np.linalg.norm(vector) * np.linalg.norm(expected[i])))
            run.min_cosine = min(run.min_cosine, cosine)
            run.mismatches += cosine < MIN_COSINE

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(run.clients)))
    run.elapsed = time.perf_counter() - start


def measure(server: Server, mode: str, clients: int, n_requests: int, time_cap: float, texts, expected) -> Run:
    run = Run(mode, clients)
    batches, merged = server.batch_stats()
    asyncio.run(load(server.url, run, texts, expected, n_requests, time_cap))
    after = server.batch_stats()
    run.batches, run.merged = after[0] - batches, after[1] - merged
    print(
        f"  {mode:>11} {clients:>2} clients: {len(run.latencies)} ok, {run.errors} errors in {run.elapsed:.1f} s",
        flush=True,
    )
    return run


# ---------------------------------------------------------------------- main
HEADER = ["mode", "clients", "requests", "time s", "req/s", "tokens/s", "p50 ms", "p99 ms", "errors",
          "mismatches", "min cosine", "requests/batch"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[12, 48, 128], help="requests per client count")
    parser.add_argument("--time-cap", type=float, default=75.0, help="seconds per (mode, clients) run")
    parser.add_argument("--texts", type=int, default=96, help="distinct texts the requests draw from")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--model", type=Path, help="a checkpoint directory (default: build the base-shaped one)")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests count per --clients count")

    load_before = os.getloadavg()[0]  # other work on the machine skews every number: say how much there was
    with tempfile.TemporaryDirectory(prefix="gte-serve-load-") as tmp:
        model = args.model or build_base_model(Path(tmp) / "gte-base-shaped")
        texts = make_texts(args.texts)
        started = time.perf_counter()
        expected = Embedder(model, device="cpu").encode(texts)  # the offline reference, before any load
        print(f"offline reference: {len(texts)} texts in {time.perf_counter() - started:.1f} s", flush=True)
        options = dict(max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms)
        servers = {mode: Server(model, batching=batching, **options) for mode, batching in MODES.items()}
        runs = []
        try:
            for mode, server in servers.items():
                server.wait_ready()
                asyncio.run(load(server.url, Run(mode, 2), texts, expected, 4, args.time_cap))  # warm-up
            for clients, n in zip(args.clients, args.requests):
                for mode, server in servers.items():  # modes interleaved: both see the same background load
                    runs.append(measure(server, mode, clients, n, args.time_cap, texts, expected))
        finally:
            exits = {mode: server.stop() for mode, server in servers.items()}
    report(runs, exits, args, load_before)
    ok = all(r.errors == 0 and r.mismatches == 0 for r in runs) and set(exits.values()) == {0}
    return 0 if ok else 1


def report(runs: list[Run], exits: dict[str, int], args: argparse.Namespace, load_before: float) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, 1-min load average before the run {load_before:.1f}"
    flags = f"--max-batch-tokens {args.max_batch_tokens} --max-wait-ms {args.max_wait_ms}"
    print(f"\nmachine: {machine}; torch {torch.__version__}; {flags}\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for run in runs:
        print("| " + " | ".join(run.row()) + " |")
    by_mode = {(r.mode, r.clients): len(r.latencies) / r.elapsed for r in runs}
    print()
    for clients in args.clients:
        on, off = by_mode.get(("batching", clients)), by_mode.get(("no batching", clients))
        if on and off:
            print(f"{clients} clients: dynamic batching gives {on / off:.2f}x the throughput of one-request batches")
    print(f"server exit status after SIGTERM: {exits}")


if __name__ == "__main__":
    sys.exit(main())
