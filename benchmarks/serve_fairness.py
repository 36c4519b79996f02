"""Fair turns in `gte serve` (issue #18): a one-text request's latency beside a large request, on loopback.

    python benchmarks/serve_fairness.py                          # base-shaped random model, 2048 inputs x ~256 tokens
    python benchmarks/serve_fairness.py --inputs 512 --words 126 -- --max-batch-tokens 4096
    python benchmarks/serve_fairness.py --tiny                   # smoke run: the tests' tiny model, small sizes

Starts the real `gte serve` CLI (serve_load.Server, dynamic batching on) on serve_load's base-shaped random
model, then measures, one after the other:

    idle                    one-text requests (short queries), one at a time, nothing else in flight
    big request alone       one request of --inputs texts of --words words (each word about one token): its time
    big + one-text, back    the same big request again and, from its first batch until it is answered, one-text
      to back               requests one at a time, each sent when the last is answered (so each arrives just as a
                            batch starts: the worst case)
    big + one-text, random  the same, with one-text requests sent at random times, --gap seconds apart on average
                            (exponential gaps, independent of the answers: a search box's users)

The target (issue #18): beside the big request, a one-text request's p50 latency is at most its idle p50 plus the
duration of one batch (the big request's time alone over its batches), and the big request takes about as long
as alone (its batches as full). Every one-text vector is checked
against the offline `Embedder` (cosine >= 0.99999), every big answer for its row count, and the server must
exit 0 on SIGTERM. Prints a markdown table: one-text latency (p50, p99, max), the big request's time, tokens
per second and tokens per batch (from /metrics).

It loads every CPU core for several minutes at the default sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import serve_load  # first: it imports gte before torch (the OpenMP wait policy), and puts tests/ on the path
import httpx
import numpy as np
import torch

from gte.embed import Embedder

QUERIES = ((1.0, (4, 24)),)  # serve_load.make_texts mix of the one-text requests: short queries
BATCH_SAMPLES = ("gte_batch_tokens_sum", "gte_batch_tokens_count")
HEADERS = {"content-type": "application/json"}


@dataclass
class Row:
    scenario: str
    small: serve_load.Run = field(default_factory=lambda: serve_load.Run("one text", 1))  # one-text requests
    big_seconds: float | None = None
    big_tokens: int = 0
    big_errors: int = 0
    batches: float = 0.0  # batches run meanwhile, and their tokens
    batch_tokens: float = 0.0

    def cells(self) -> list[str]:
        latencies = np.array(self.small.latencies) * 1000
        p50, p99, most = (f"{np.percentile(latencies, q):.0f}" for q in (50, 99, 100)) if len(latencies) else ("-",) * 3
        big = ["-", "-"] if self.big_seconds is None else [f"{self.big_seconds:.1f}", f"{self.big_tokens / self.big_seconds:.0f}"]
        per_batch = f"{self.batch_tokens / self.batches:.0f}" if self.batches else "-"
        errors = self.small.errors + self.big_errors
        return [self.scenario, str(self.small.completed), p50, p99, most, *big, per_batch, str(errors), str(self.small.mismatches)]


HEADER = ["scenario", "one-text requests", "p50 ms", "p99 ms", "max ms", "big request s", "big tokens/s",
          "tokens/batch", "errors", "mismatches"]  # fmt: skip


async def one_text(http: httpx.AsyncClient, text: str, expected: np.ndarray, row: Row) -> None:
    body = {"input": text, "model": serve_load.MODEL_NAME, "encoding_format": "base64"}
    sent = time.perf_counter()
    try:
        response = await http.post("/v1/embeddings", json=body)
    except httpx.HTTPError:
        row.small.errors += 1
        return
    serve_load.check(row.small, response, expected, time.perf_counter() - sent)


async def big_request(http: httpx.AsyncClient, body: bytes, n: int, row: Row) -> None:
    sent = time.perf_counter()
    response = await http.post("/v1/embeddings", content=body, headers=HEADERS)
    row.big_seconds = time.perf_counter() - sent
    if response.status_code != 200 or len(response.json()["data"]) != n:
        row.big_errors += 1
        return
    row.big_tokens = response.json()["usage"]["prompt_tokens"]


async def first_batch_ran(server: serve_load.Server, inputs_before: float, big: asyncio.Task) -> None:
    """Until the server has run inputs beyond `inputs_before` (the big request's first batch), or `big` is answered."""
    while not big.done():
        if (await asyncio.to_thread(server.metrics, "gte_inputs_total"))["gte_inputs_total"] > inputs_before:
            return
        await asyncio.sleep(0.02)


async def measure(
    server: serve_load.Server, queries: list[str], expected: np.ndarray, big_texts: list[str], gap: float
) -> list[Row]:
    body = json.dumps({"input": big_texts, "model": serve_load.MODEL_NAME, "encoding_format": "base64"}).encode()
    rows = [Row("idle"), Row("big request alone"), Row("big + one-text, back to back"),
            Row(f"big + one-text, random, {gap:g} s apart")]  # fmt: skip
    async with httpx.AsyncClient(base_url=server.url, timeout=3600) as http:
        await one_text(http, queries[0], expected[0], Row("warm-up"))
        for text, vector in zip(queries, expected):
            await one_text(http, text, vector, rows[0])
        await counted(server, rows[1], big_request(http, body, len(big_texts), rows[1]))

        async def beside(row: Row, stream) -> None:
            inputs = server.metrics("gte_inputs_total")["gte_inputs_total"]
            big = asyncio.create_task(big_request(http, body, len(big_texts), row))
            await first_batch_ran(server, inputs, big)
            await stream(big, row)
            await big

        async def back_to_back(big: asyncio.Task, row: Row) -> None:
            for text, vector in itertools.cycle(zip(queries, expected)):
                if big.done():
                    return
                await one_text(http, text, vector, row)

        async def at_random(big: asyncio.Task, row: Row) -> None:
            gaps, sent = np.random.default_rng(0), []
            for text, vector in itertools.cycle(zip(queries, expected)):
                if big.done():
                    break
                sent.append(asyncio.create_task(one_text(http, text, vector, row)))
                await asyncio.wait([big], timeout=gaps.exponential(gap))
            await asyncio.gather(*sent)

        await counted(server, rows[2], beside(rows[2], back_to_back))
        await counted(server, rows[3], beside(rows[3], at_random))
    return rows


async def counted(server: serve_load.Server, row: Row, work) -> None:
    """Await `work`, counting the batches the server ran meanwhile into `row`."""
    before = server.metrics(*BATCH_SAMPLES)
    await work
    after = server.metrics(*BATCH_SAMPLES)
    row.batch_tokens, row.batches = (after[name] - before[name] for name in BATCH_SAMPLES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2048, help="texts in the big request (at most the server's "
                        "--max-client-batch-size, default 2048)")  # fmt: skip
    parser.add_argument("--words", type=int, default=254, help="words per text of the big request (about as many tokens, "
                        "plus two special ones)")  # fmt: skip
    parser.add_argument("--small", type=int, default=20, help="one-text requests measured idle (distinct texts)")
    parser.add_argument("--gap", type=float, default=1.0, help="mean seconds between one-text requests sent at "
                        "random times")  # fmt: skip
    parser.add_argument("--model", type=Path, help="a checkpoint directory (default: build the base-shaped one)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: the tests' tiny model, 96 inputs of 40 words, "
                        "3 one-text requests, --max-batch-tokens 512")  # fmt: skip
    parser.add_argument("serve_options", nargs=argparse.REMAINDER, help="after --: options for `gte serve`")
    args = parser.parse_args(argv)
    options = [o for o in args.serve_options if o != "--"]
    if args.tiny:
        args.inputs, args.words, args.small, args.gap = 96, 40, 3, 0.05
        options = ["--max-batch-tokens", "512", *options]

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gte-serve-fairness-") as tmp:
        model = args.model or build_model(Path(tmp), args.tiny)
        queries = serve_load.make_texts(args.small, mix=QUERIES)
        big_texts = serve_load.make_texts(args.inputs, seed=1, mix=((1.0, (args.words, args.words)),))
        expected = Embedder(model, device="cpu").encode(queries)
        payload = 2 * len(json.dumps(big_texts)) + 4096  # the big body, whatever the default --payload-limit
        server = serve_load.Server(model, batching=True, options=["--payload-limit", str(payload), *options])
        try:
            server.wait_ready()
            rows = asyncio.run(measure(server, queries, expected, big_texts, args.gap))
        finally:
            code = server.stop()
    report(rows, args, options, load_before, code)
    ok = all(row.small.errors == row.small.mismatches == row.big_errors == 0 for row in rows)
    return 0 if ok and code == 0 else 1


def build_model(tmp: Path, tiny: bool) -> Path:
    if tiny:
        return serve_load.fixtures.build_tiny_model(tmp / "tiny")
    return serve_load.build_base_model(tmp / "gte-base-shaped")


def report(rows: list[Row], args: argparse.Namespace, options: list[str], load_before: float, code: int) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, 1-min load average before the run {load_before:.1f}"
    print(f"\nmachine: {machine}; torch {torch.__version__} ({torch.get_num_threads()} threads); gte serve "
          f"{' '.join(options) or '(defaults)'}; big request: {args.inputs} inputs of {args.words} words\n")  # fmt: skip
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    idle, alone, *besides = rows
    batch = alone.big_seconds / alone.batches if alone.big_seconds and alone.batches else None
    if batch:
        print(f"\none batch of the big request alone: {batch:.1f} s ({alone.batches:.0f} batches)")
    for beside in besides:
        if idle.small.latencies and beside.small.latencies and batch:
            bound = idle.small.p50_ms() + batch * 1000
            met = "met" if beside.small.p50_ms() <= bound else "NOT met"
            print(f"{beside.scenario}: one-text p50 {beside.small.p50_ms():.0f} ms, target at most idle p50 + one "
                  f"batch = {bound:.0f} ms: {met}")  # fmt: skip
        if alone.big_seconds and beside.big_seconds:
            print(f"{beside.scenario}: big request {beside.big_seconds / alone.big_seconds:.2f}x its time alone, "
                  f"beside {beside.small.completed} one-text requests")  # fmt: skip
    print(f"server exit status after SIGTERM: {code}")


if __name__ == "__main__":
    sys.exit(main())
