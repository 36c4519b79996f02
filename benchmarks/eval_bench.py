"""`gte eval retrieval` on a large generated corpus: peak memory against the vectors' size plus the model, and the
time of a second run that finds the corpus vectors in its cache (issue #19).

    python benchmarks/eval_bench.py                 # 100k documents of 3-12 words, 1,000 queries, the default model
    python benchmarks/eval_bench.py --docs 2000     # a smoke run

Each run is its own process (`gte eval retrieval ...`), its peak RSS (ru_maxrss) its own. The model's share is
measured the same way: a process that loads the default model and embeds the queries. A query is a document's
words shuffled, judged relevant to that document.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_bench import run_child, write_corpus  # noqa: E402

MODEL_ONLY = """
import sys, pyarrow.parquet as pq, gte
queries = pq.read_table(sys.argv[1])["text"].to_pylist()
gte.Embedder(show_progress=False).encode(queries, prompt_name="query")
"""


def write_queries(corpus: Path, directory: Path, count: int, seed: int = 1) -> tuple[Path, Path]:
    """`count` queries (a document's words, shuffled) and their qrels, each naming its document."""
    import pyarrow as pa

    table = pq.read_table(corpus)
    rng = np.random.default_rng(seed)
    picks = rng.choice(table.num_rows, size=count, replace=False)
    ids, texts = table["id"].to_pylist(), table["text"].to_pylist()
    queries = [" ".join(rng.permutation(texts[i].split())) for i in picks]
    query_file, qrels = directory / "queries.parquet", directory / "qrels.tsv"
    pq.write_table(pa.table({"id": [f"q-{n}" for n in range(count)], "text": queries}), query_file)
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q-{n}\t{ids[i]}\t1\n" for n, i in enumerate(picks)))
    return query_file, qrels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="documents (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=1000, help="queries (default: %(default)s)")
    args = parser.parse_args(argv)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average before: {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    gte = str(Path(sys.executable).with_name("gte"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus.parquet"
        write_corpus(corpus, args.docs)
        queries, qrels = write_queries(corpus, work, args.queries)
        command = [gte, "eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels),
                   "--id-field", "id", "--k", "1,10,100", "--cache", str(work / "cache"), "--no-progress"]  # fmt: skip
        _, model_rss, _, _ = run_child([sys.executable, "-c", MODEL_ONLY, str(queries)])
        runs = [run_child(command) for _ in range(2)]
        dimension = np.load(next((work / "cache").glob("*/corpus.npy")), mmap_mode="r").shape[1]
    vectors = args.docs * dimension * 4
    print("| run | seconds | peak RSS MiB | vectors MiB | model process MiB | RSS / (vectors + model) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (seconds, rss, _, _) in zip(("first (embeds the corpus)", "second (cached vectors)"), runs):
        print(f"| {label} | {seconds:.1f} | {rss / 2**20:,.0f} | {vectors / 2**20:,.0f} | {model_rss / 2**20:,.0f} | "
              f"{rss / (vectors + model_rss):.2f} |")  # fmt: skip
    print(f"\n{args.docs:,} documents, {args.queries:,} queries; the first run's output:\n\n{runs[0][2]}")


if __name__ == "__main__":
    main()
