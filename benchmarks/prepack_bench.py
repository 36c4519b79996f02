"""Packed projections (src/gte/prepack.py) against nn.Linear, on CPU, float32 or bfloat16: latency, throughput,
memory.

    python benchmarks/prepack_bench.py                      # the gte-base shape and the embedded default model
    python benchmarks/prepack_bench.py --dtype bfloat16     # the same, both contenders in bfloat16
    python benchmarks/prepack_bench.py --tiny               # a smoke run

Both contenders are the `Embedder` on the same checkpoint, one loaded as gte loads it (packed), one with
packing turned off; they alternate, best of --repeats. Workloads: one 24-token query (batch-1 latency),
256 short texts (16..48 tokens) and 256 mixed ones (log-uniform 8..512 tokens), as token ids. Memory is
the resident set (anonymous + file-backed) of a fresh process per contender after it loads and embeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import numpy as np
import torch

import gte.hub
from gte.embed import Embedder

CONTENDERS = ("nn.Linear", "packed")


@contextlib.contextmanager
def packing(on: bool) -> Iterator[None]:
    """Load with packing on (gte's default) or off."""
    original = gte.hub.prepack
    gte.hub.prepack = original if on else (lambda model: 0)
    try:
        yield
    finally:
        gte.hub.prepack = original


def load(model: str | None, packed: bool, dtype: str = "float32") -> Embedder:
    with packing(packed):
        return Embedder(model, device="cpu", dtype=dtype) if model else Embedder(device="cpu", dtype=dtype)


def workloads(vocab: int, max_length: int, tiny: bool) -> dict[str, list[list[int]]]:
    """Token ids (random, [CLS]/[SEP]-like ends), lengths capped at the model's max length."""
    rng = random.Random(0)
    n = 16 if tiny else 256

    def doc(length: int) -> list[int]:
        return [1] + [rng.randrange(5, vocab) for _ in range(min(length, max_length) - 2)] + [2]

    return {
        "one 24-token query": [doc(24)],
        f"{n} short texts (16..48 tokens)": [doc(rng.randint(16, 48)) for _ in range(n)],
        f"{n} mixed texts (8..512 tokens)": [doc(int(math.exp(rng.uniform(math.log(8), math.log(512))))) for _ in range(n)],
    }


def best_of(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(label: str, model: str | None, repeats: int, tiny: bool, dtype: str) -> str:
    embedders = {name: load(model, name == "packed", dtype) for name in CONTENDERS}
    first = embedders["packed"]
    lines = [f"### {label}", ""]
    lines += ["| workload | tokens | nn.Linear ms | packed ms | speed-up | max abs diff |", "|---|---:|---:|---:|---:|---:|"]
    for name, docs in workloads(first.vocab_size, first.max_length, tiny).items():
        single = len(docs) == 1
        calls = 10 if single else 1
        outputs = {c: e.encode_tokens(docs) for c, e in embedders.items()}  # warm-up, and the numbers compared
        times = {c: math.inf for c in CONTENDERS}
        for _ in range(repeats):  # alternate: both see the same background load
            for c, e in embedders.items():
                times[c] = min(times[c], best_of(lambda: e.encode_tokens(docs), calls))
        diff = float(np.abs(outputs["packed"] - outputs["nn.Linear"]).max())
        tokens = sum(map(len, docs))
        lines.append(f"| {name} | {tokens:,} | {times['nn.Linear'] * 1000:.1f} | {times['packed'] * 1000:.1f} | "
                     f"{times['nn.Linear'] / times['packed']:.2f}x | {diff:.1e} |")  # fmt: skip
    return "\n".join(lines)


def resident(model: str | None, packed: bool, dtype: str) -> dict[str, float]:
    """MiB resident in a fresh process after loading and embedding (anonymous, file-backed)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from prepack_bench import load
embedder = load({model!r}, {packed}, {dtype!r})  # kept alive while the resident set is read
embedder.encode(["a few words"] * 8)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
print(json.dumps({{k: int(v.split()[0]) / 1024 for k, v in status.items()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def memory_table(models: dict[str, str | None], dtype: str) -> str:
    lines = ["| model | contender | RSS MiB | anonymous MiB | file-backed MiB |", "|---|---|---:|---:|---:|"]
    for label, model in models.items():
        for name in CONTENDERS:
            rss = resident(model, name == "packed", dtype)
            total = rss["RssAnon"] + rss["RssFile"] + rss["RssShmem"]
            lines.append(f"| {label} | {name} | {total:.0f} | {rss['RssAnon']:.0f} | {rss['RssFile']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small workloads: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating passes, best kept (default: 3)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both contenders' (default: %(default)s)")
    args = parser.parse_args(argv)
    if not gte.prepack.supported(getattr(torch, args.dtype)):
        print(f"packed {args.dtype} projections are not supported on this machine / torch build: nothing to compare",
              file=sys.stderr)  # fmt: skip
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import build_base_model

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gte-prepack-") as tmp:
        if args.tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            import fixtures

            models: dict[str, str | None] = {"tiny": str(fixtures.build_tiny_model(Path(tmp) / "tiny"))}
        else:
            models = {"gte-base shape": str(build_base_model(Path(tmp) / "gte-base-shaped")),
                      "all-MiniLM-L6-v2 (embedded default)": None}  # fmt: skip
        tables = [compare(f"{label}, {args.dtype}", model, args.repeats, args.tiny, args.dtype) for label, model in models.items()]
        memory = memory_table(models, args.dtype)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {load_before:.2f} before the run and {os.getloadavg()[0]:.2f} after; best of {args.repeats}\n")  # fmt: skip
    print("\n\n".join(tables) + "\n\n### memory after loading and embedding (fresh process each)\n\n" + memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
