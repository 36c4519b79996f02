"""Bounded load test of `gte serve` on loopback: the offline `Embedder`, dynamic batching and
one-request batches, on the same texts, in one run.

    python benchmarks/serve_load.py                      # base-shaped random model, 1 / 8 / 32 clients
    python benchmarks/serve_load.py --requests 8 32 64 --time-cap 60

Builds a model shaped like gte-base-en-v1.5 (hidden 768, 12 layers, 12 heads, intermediate 3072,
vocab 30528) with random weights and a WordPiece tokenizer trained on generated text, in a temporary
directory. It starts the real `gte serve` CLI twice, in subprocesses: with dynamic batching and
without (every request its own batch). For each client count, one mode after the other, that many
concurrent clients send a fixed number of single-text requests of mixed lengths to POST
/v1/embeddings (base64, as the `openai` client asks), starting none after the time cap. Every
returned vector is checked against the offline `Embedder` for the same text (cosine >= 0.99999);
both servers are stopped with SIGTERM and must exit 0. The "offline" rows are the `Embedder` in
this process on the same requests' texts while the servers idle. For 1 client they measure latency,
text by text: the offline call and one request to each server back to back, so all three see the same
background load (every repeat's samples are pooled, and the per-text differences give the server's
own cost). For more clients they measure throughput: one offline call for all the texts (the ceiling
a server can reach), then the concurrent clients (the best of the repeats is kept). Prints a
markdown table: throughput, p50 / p99 latency, errors, mismatches, requests merged per batch, and
each mode's throughput against offline.

It loads every CPU core for a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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

import gte  # noqa: F401  (first: it sets the OpenMP wait policy that torch reads as it loads, as in the servers)
import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from gte.embed import Embedder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fixtures  # noqa: E402  (tiny-checkpoint builders, reused here at base shape)

sys.path.insert(0, str(ROOT / "benchmarks"))
import suite  # noqa: E402  (the benchmark shapes and their random weights)

MIN_COSINE = 0.99999
MODEL_NAME = "gte-base-shaped"
MODES = {"batching": True, "no batching": False}  # server mode -> dynamic batching on
# (share of requests, words per text): mostly short queries, some passages, a few long documents
LENGTH_MIX = ((0.5, (4, 24)), (0.35, (24, 96)), (0.15, (96, 250)))


# ---------------------------------------------------------------------- model and texts
def build_base_model(out: Path) -> Path:
    """gte-base-en-v1.5's shape (suite.SHAPES["base"], the weights of suite.build_model), a WordPiece tokenizer
    trained on generated text and sentence-transformers files."""
    tokenizer = fixtures.train_wordpiece(fixtures.generate_corpus(fixtures.ENGLISH_WORDS, seed=1))
    model = suite.build_model(suite.SHAPES["base"])
    fixtures.save_model(model, out)
    fixtures.save_tokenizer(tokenizer, out, multilingual=False, max_length=model.config.max_position_embeddings)
    fixtures.save_sentence_transformers_files(out, max_seq_length=8192, hidden_size=model.config.hidden_size, normalize=True)
    return out


def make_texts(n: int, seed: int = 0, mix: tuple = LENGTH_MIX) -> list[str]:
    """`n` distinct texts whose lengths follow `mix`: (share of texts, (fewest, most words)) pairs."""
    rng = random.Random(seed)
    shares, ranges = zip(*mix)
    texts = []
    for _ in range(n):
        low, high = rng.choices(ranges, weights=shares)[0]
        words = [rng.choice(fixtures.ENGLISH_WORDS) for _ in range(rng.randint(low, high))]
        texts.append(" ".join(words))
    return texts


# ---------------------------------------------------------------------- the server
class Server:
    """`gte serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, *, batching: bool, options: list[str]) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        command = [
            sys.executable, "-m", "gte_cli", "serve", "--model", str(model), "--port", self.url.rsplit(":", 1)[1],
            "--served-model-name", MODEL_NAME, "--device", "cpu", "--log-level", "warning",
            "--max-concurrent-requests", "1024", *options,
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

    def metrics(self, *names: str) -> dict[str, float]:
        """The named samples from /metrics, each summed over its labels."""
        values = dict.fromkeys(names, 0.0)
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for sample in family.samples:
                if sample.name in values:
                    values[sample.name] += sample.value
        return values

    def batch_stats(self) -> tuple[float, float]:
        """(batches run, requests merged into them) from /metrics."""
        values = self.metrics("gte_batch_requests_count", "gte_batch_requests_sum")
        return values["gte_batch_requests_count"], values["gte_batch_requests_sum"]

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
    completed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds per request, where a request has one
    tokens: int = 0
    errors: int = 0
    mismatches: int = 0
    min_cosine: float = 1.0
    elapsed: float = 0.0
    batches: float = 0.0
    merged: float = 0.0

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed

    def merge(self, other: Run) -> None:
        """Add another repeat's requests to this run."""
        self.completed += other.completed
        self.latencies += other.latencies
        self.tokens += other.tokens
        self.errors += other.errors
        self.mismatches += other.mismatches
        self.min_cosine = min(self.min_cosine, other.min_cosine)
        self.elapsed += other.elapsed
        self.batches += other.batches
        self.merged += other.merged

    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50)) * 1000

    def row(self, offline: Run | None) -> list[str]:
        lat = np.array(self.latencies) * 1000
        p50, p99 = (f"{np.percentile(lat, q):.0f}" for q in (50, 99)) if len(lat) else ("-", "-")
        per_batch = f"{self.merged / self.batches:.1f}" if self.batches else "-"
        of_offline = f"{self.throughput / offline.throughput:.0%}" if offline else "-"
        return [
            self.mode, str(self.clients), str(self.completed + self.errors), f"{self.elapsed:.1f}",
            f"{self.throughput:.2f}", f"{self.tokens / self.elapsed:.0f}", p50, p99, str(self.errors),
            str(self.mismatches), f"{self.min_cosine:.7f}", per_batch, of_offline,
        ]  # fmt: skip


def request_order(clients: int, n_requests: int, n_texts: int) -> list[int]:
    """The texts the requests of one client count send (the same for every mode)."""
    return random.Random(clients).choices(range(n_texts), k=n_requests)


async def load(url: str, run: Run, texts: list[str], expected: np.ndarray, n_requests: int, time_cap: float) -> None:
    """`run.clients` concurrent clients send `n_requests` requests in all, none started after `time_cap` s."""
    order = request_order(run.clients, n_requests, len(texts))
    bodies = [json.dumps({"input": t, "model": MODEL_NAME, "encoding_format": "base64"}).encode() for t in texts]
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=run.clients, max_keepalive_connections=run.clients)
    start = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        while order and time.perf_counter() - start < time_cap:
            i = order.pop()
            sent = time.perf_counter()
            try:
                response = await http.post("/v1/embeddings", content=bodies[i], headers=headers)
            except httpx.HTTPError:
                run.errors += 1
                continue
            check(run, response, expected[i], time.perf_counter() - sent)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(run.clients)))
    run.elapsed = time.perf_counter() - start


def check(run: Run, response: httpx.Response, expected: np.ndarray, latency: float) -> None:
    """Count one response: its latency and tokens, or an error; its vector against the offline one."""
    if response.status_code != 200:
        run.errors += 1
        return
    run.latencies.append(latency)
    run.completed += 1
    body = response.json()
    run.tokens += body["usage"]["prompt_tokens"]
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    cosine = float(vector @ expected / (np.linalg.norm(vector) * np.linalg.norm(expected)))
    run.min_cosine = min(run.min_cosine, cosine)
    run.mismatches += cosine < MIN_COSINE


def measure(server: Server, mode: str, clients: int, n_requests: int, time_cap: float, texts, expected) -> Run:
    run = Run(mode, clients)
    batches, merged = server.batch_stats()
    asyncio.run(load(server.url, run, texts, expected, n_requests, time_cap))
    after = server.batch_stats()
    run.batches, run.merged = after[0] - batches, after[1] - merged
    print(f"  {mode:>11} {clients:>2} clients: {run.completed} ok, {run.errors} errors in {run.elapsed:.1f} s", flush=True)
    return run


def measure_offline(embedder: Embedder, clients: int, n_requests: int, texts: list[str]) -> Run:
    """The Embedder on the same texts in one call: the throughput ceiling a server can reach."""
    run = Run("offline", clients, completed=n_requests)
    chosen = [texts[i] for i in request_order(clients, n_requests, len(texts))]
    run.tokens = sum(map(len, embedder.tokenize(chosen)))
    start = time.perf_counter()
    embedder.encode(chosen)
    run.elapsed = time.perf_counter() - start
    print(f"  {'offline':>11} {clients:>2} clients: {n_requests} texts in {run.elapsed:.1f} s", flush=True)
    return run


def measure_latency(embedder: Embedder, servers: dict[str, Server], n_requests: int, texts, expected) -> list[Run]:
    """One client, request by request: each text offline, then to every server, back to back.

    Interleaving per text puts the offline call and the served ones under the same background load, so
    their difference for the same text is the server's own cost (HTTP, JSON, base64, the event loop).
    """
    order = request_order(1, n_requests, len(texts))
    runs = {mode: Run(mode, 1) for mode in ("offline", *servers)}
    runs["offline"].tokens = sum(map(len, embedder.tokenize([texts[i] for i in order])))
    clients = {mode: httpx.Client(base_url=server.url, timeout=600) for mode, server in servers.items()}
    try:
        for i in order:
            sent = time.perf_counter()
            embedder.encode([texts[i]])
            runs["offline"].latencies.append(time.perf_counter() - sent)
            runs["offline"].completed += 1
            for mode, http in clients.items():
                sent = time.perf_counter()
                try:
                    response = http.post("/v1/embeddings", json={"input": texts[i], "model": MODEL_NAME, "encoding_format": "base64"})
                except httpx.HTTPError:
                    runs[mode].errors += 1
                    continue
                check(runs[mode], response, expected[i], time.perf_counter() - sent)
    finally:
        for http in clients.values():
            http.close()
    for run in runs.values():
        run.elapsed = sum(run.latencies)  # busy time: one request at a time
        print(f"  {run.mode:>11}  1 clients: {run.completed} ok, {run.errors} errors in {run.elapsed:.1f} s", flush=True)
    return list(runs.values())


# ---------------------------------------------------------------------- main
HEADER = ["mode", "clients", "requests", "time s", "req/s", "tokens/s", "p50 ms", "p99 ms", "errors",
          "mismatches", "min cosine", "requests/batch", "of offline"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[12, 48, 128], help="requests per client count")
    parser.add_argument("--time-cap", type=float, default=75.0, help="seconds per (mode, clients) run")
    parser.add_argument("--texts", type=int, default=96, help="distinct texts the requests draw from")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every (mode, clients); the best is kept")
    parser.add_argument("--model", type=Path, help="a checkpoint directory (default: build the base-shaped one)")
    parser.add_argument("serve_options", nargs=argparse.REMAINDER, help="after --: options for both `gte serve`")
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests count per --clients count")
    options = [o for o in args.serve_options if o != "--"]

    load_before = os.getloadavg()[0]  # other work on the machine skews every number: say how much there was
    with tempfile.TemporaryDirectory(prefix="gte-serve-load-") as tmp:
        model = args.model or build_base_model(Path(tmp) / "gte-base-shaped")
        texts = make_texts(args.texts)
        embedder = Embedder(model, device="cpu")
        started = time.perf_counter()
        expected = embedder.encode(texts)  # the offline reference, before any load
        print(f"offline reference: {len(texts)} texts in {time.perf_counter() - started:.1f} s", flush=True)
        servers = {mode: Server(model, batching=batching, options=options) for mode, batching in MODES.items()}
        best: dict[tuple[str, int], Run] = {}
        try:
            for mode, server in servers.items():
                server.wait_ready()
                asyncio.run(load(server.url, Run(mode, 2), texts, expected, 4, args.time_cap))  # warm-up
            for _ in range(args.repeats):
                for clients, n in zip(args.clients, args.requests):  # modes interleaved: all see the same background load
                    if clients == 1:
                        runs = measure_latency(embedder, servers, n, texts, expected)
                    else:
                        runs = [measure_offline(embedder, clients, n, texts)]
                        runs += [measure(server, mode, clients, n, args.time_cap, texts, expected) for mode, server in servers.items()]
                    for run in runs:
                        key = (run.mode, clients)
                        if clients == 1 and key in best:  # latency: every repeat's samples count, pairs stay aligned
                            best[key].merge(run)
                        elif key not in best or run.throughput > best[key].throughput:
                            best[key] = run
        finally:
            exits = {mode: server.stop() for mode, server in servers.items()}
    report(list(best.values()), exits, args, options, load_before)
    ok = all(r.errors == 0 and r.mismatches == 0 for r in best.values()) and set(exits.values()) == {0}
    return 0 if ok else 1


def report(runs: list[Run], exits: dict[str, int], args: argparse.Namespace, options: list[str], load_before: float) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, 1-min load average before the run {load_before:.1f}"
    print(f"\nmachine: {machine}; torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}); "
          f"gte serve {' '.join(options) or '(defaults)'}; best of {args.repeats}\n")  # fmt: skip
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    by_mode = {(r.mode, r.clients): r for r in runs}
    for run in runs:
        offline = by_mode.get(("offline", run.clients))
        print("| " + " | ".join(run.row(None if run.mode == "offline" else offline)) + " |")
    print()
    for clients in args.clients:
        on, off = by_mode.get(("batching", clients)), by_mode.get(("no batching", clients))
        if on and off:
            print(f"{clients} clients: dynamic batching gives {on.throughput / off.throughput:.2f}x the throughput of "
                  "one-request batches")  # fmt: skip
    if (alone := by_mode.get(("offline", 1))) and (served := by_mode.get(("batching", 1))):
        line = f"1 client: p50 {served.p50_ms():.1f} ms served, {alone.p50_ms():.1f} ms offline ({served.p50_ms() - alone.p50_ms():+.1f} ms)"
        if not served.errors:  # every text has both latencies, in the same order
            line += f"; median of the per-text differences {np.median(np.subtract(served.latencies, alone.latencies)) * 1000:+.1f} ms"
        print(line)
    print(f"server exit status after SIGTERM: {exits}")


if __name__ == "__main__":
    sys.exit(main())
