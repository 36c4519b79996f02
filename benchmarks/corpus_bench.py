"""Corpus jobs on CPU: does `gte embed --input ... --output ...` stream in bounded memory, and what does
streaming cost against embedding the same texts in memory?

    python benchmarks/corpus_bench.py           # default model: 100k and 1M rows of 3-12 words; gte-base shape: 20k rows
    python benchmarks/corpus_bench.py --tiny    # small corpora, in seconds (the smoke test)

Every run is its own process, so its peak RSS (ru_maxrss from wait4) is its own. The baseline is
`Embedder.encode` on the whole corpus in memory (texts read with pyarrow, vectors in one array); the job is
`gte embed -i corpus.parquet -o vectors.parquet --id-field id` (streaming, resumable parts). At each size the
two alternate, and each gets its best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WORDS = ("the of and to in is for on that with as by this from at be are or an it was which search model vector "
         "index query document embedding retrieval language network neural deep learning data system paris london "
         "berlin capital city river mountain history science music art game sport water energy").split()  # fmt: skip

BASELINE = """
import sys, time, json
import pyarrow.parquet as pq
import gte
embedder = gte.Embedder(sys.argv[2] if len(sys.argv) > 2 else gte.hub.DEFAULT_MODEL, show_progress=False)
texts = pq.read_table(sys.argv[1], columns=["text"])["text"].to_pylist()
start = time.perf_counter()
ids = embedder.tokenize(texts)
vectors = embedder.encode_tokens(ids)
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": sum(map(len, ids)), "rows": len(vectors)}))
"""


def write_corpus(path: Path, rows: int, words: tuple[int, int] = (3, 12), seed: int = 0) -> None:
    """`rows` texts of words[0] to words[1] words with string ids, as parquet in row groups of 64k rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocabulary = np.array(WORDS)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as writer:
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            lengths = rng.integers(words[0], words[1] + 1, size=n)
            picks = rng.integers(0, len(vocabulary), size=int(lengths.sum()))
            texts = [" ".join(chunk) for chunk in np.split(vocabulary[picks], np.cumsum(lengths)[:-1])]
            writer.write_table(pa.table({"id": [f"doc-{i}" for i in range(start, start + n)], "text": texts}))


def run_child(argv: list[str]) -> tuple[float, int, str, str]:
    """Run argv under a Python parent that reports the child's own peak RSS (ru_maxrss of its only child)."""
    wrapper = ("import json, resource, subprocess, sys, time; s = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, 'seconds': time.perf_counter() - s, "
               "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)  # fmt: skip
    report = json.loads(result.stdout)
    if report["rc"]:
        raise SystemExit(f"{argv} failed:\n{report['err']}")
    return report["seconds"], report["rss"], report["out"], report["err"]


def job(corpus: Path, output: Path, model: str | None) -> dict:
    gte = str(Path(sys.executable).with_name("gte"))
    argv = [gte, "embed", "-i", str(corpus), "-o", str(output), "--id-field", "id", "--overwrite", "--no-progress"]
    seconds, rss, _, err = run_child(argv + (["-m", model] if model else []))
    summary = err.strip().splitlines()[-1]  # "... N rows, T tokens in S s (...)"
    rows, tokens = (int(summary.split(" rows, ")[0].rsplit(" ", 1)[1]), int(summary.split(" tokens in ")[0].rsplit(" ", 1)[1]))
    return {"seconds": seconds, "rss": rss, "rows": rows, "tokens": tokens}


def baseline(corpus: Path, model: str | None) -> dict:
    seconds, rss, out, _ = run_child([sys.executable, "-c", BASELINE, str(corpus), *([model] if model else [])])
    report = json.loads(out)
    return {"seconds": seconds, "rss": rss, "rows": report["rows"], "tokens": report["tokens"]}


def base_shape_model(directory: Path) -> str:
    """A gte-base-en-v1.5-shaped checkpoint (random weights) with the default model's WordPiece tokenizer."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import suite

    from gte.models import embedded_path

    model = suite.build_model(suite.SHAPES["base"])
    model.save_pretrained(directory)
    source = embedded_path(__import__("gte").hub.DEFAULT_MODEL)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, directory / name)
    return str(directory)


def row(label: str, size: int, result: dict, ratio: str) -> str:
    rate = result["rows"] / result["seconds"]
    tokens = result["tokens"] / result["seconds"]
    return (f"| {label} | {size:,} | {result['seconds']:.1f} | {rate:,.0f} | {tokens:,.0f} | "
            f"{result['rss'] / 2**20:,.0f} | {ratio} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small corpora: a smoke test")
    parser.add_argument("--sizes", type=int, nargs="+", help="corpus sizes for the default model (default: 100000 1000000)")
    parser.add_argument("--base-rows", type=int, help="rows for the gte-base shape (default: 20000; 0 to skip)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats at the smallest size (default: 2)")
    parser.add_argument("--words", type=int, nargs=2, default=(3, 12), metavar=("LOW", "HIGH"), help="words per text (default: 3 12)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="the streaming job only")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([100, 500] if args.tiny else [100_000, 1_000_000])
    base_rows = args.base_rows if args.base_rows is not None else (0 if args.tiny else 20_000)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average before: {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| run | rows | seconds | rows/s | tokens/s | peak RSS (MiB) | vs in-memory |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model, label, rows_list in ((None, "default model", sizes), ("base", "gte-base shape", [base_rows] if base_rows else [])):
            path = base_shape_model(work / "base") if model == "base" and rows_list else model
            for i, size in enumerate(rows_list):
                corpus = work / f"corpus-{size}.parquet"
                write_corpus(corpus, size, tuple(args.words))
                repeats = args.repeats if i == 0 else 1
                best_job, best_base = None, None
                for _ in range(repeats):
                    result = job(corpus, work / "out.parquet", path)
                    best_job = result if best_job is None or result["seconds"] < best_job["seconds"] else best_job
                    if i == 0 and args.baseline:
                        result = baseline(corpus, path)
                        best_base = result if best_base is None or result["seconds"] < best_base["seconds"] else best_base
                if best_base:
                    print(row(f"{label}, in memory (Embedder.encode)", size, best_base, "1.00x"), flush=True)
                ratio = f"{best_base['seconds'] / best_job['seconds']:.2f}x" if best_base else "-"
                print(row(f"{label}, streaming job", size, best_job, ratio), flush=True)
                corpus.unlink()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
