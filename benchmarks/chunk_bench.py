"""Chunked corpus jobs against whole-document jobs over the same tokens (issue #21's target: a late-chunking job at
most 1.1x a whole-document job).

    python benchmarks/chunk_bench.py                # 2,000 documents of 120-160 words, the default model
    python benchmarks/chunk_bench.py --docs 50      # a smoke run

Each run is `gte embed -i corpus.parquet -o out.parquet` in its own process (start-up included, the same for all),
the documents short enough for the model's max length, so every contender embeds every token: whole documents,
--chunk-tokens 64 (naive: each chunk its own sequence) and --chunk-tokens 64 --late-chunking (one pass per
document). The contenders alternate; each gets its best of --repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_bench import run_child, write_corpus  # noqa: E402

CONTENDERS = {"whole documents": [], "naive chunks of 64 tokens": ["--chunk-tokens", "64"],
              "late chunks of 64 tokens": ["--chunk-tokens", "64", "--late-chunking"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="documents (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs, best kept (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    gte = str(Path(sys.executable).with_name("gte"))
    best: dict[str, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.parquet"
        write_corpus(corpus, args.docs, words=(120, 160))
        for _ in range(args.repeats):
            for name, extra in CONTENDERS.items():
                command = [gte, "embed", "-i", str(corpus), "-o", str(Path(tmp) / "out.parquet"), "--overwrite",
                           "--no-progress", *extra]  # fmt: skip
                seconds, rss, _, _ = run_child(command)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, rss)
    whole = best["whole documents"][0]
    print(f"| {args.docs:,} documents of 120-160 words | seconds | vs whole documents | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, (seconds, rss) in best.items():
        print(f"| {name} | {seconds:.1f} | {seconds / whole:.2f}x | {rss / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
