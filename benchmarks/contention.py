"""Throughput with part of the CPU taken (issue #24, contention): ours against ONNX Runtime and OpenVINO, on a
quiet machine and beside busy-looping processes, in one run; markdown on stdout (progress on stderr).

    python benchmarks/contention.py                 # 400 texts, 1 busy process, best of 3 (about 6 minutes on 2 cores)
    python benchmarks/contention.py --busy 2 --texts 800
    python benchmarks/contention.py --tiny          # 16 texts, one repeat: the smoke test (under a minute)

The workload is the default model (the embedded all-MiniLM-L6-v2) on serve_load.py's texts of mixed lengths,
text to vector. Contenders, all float32, each measured in a fresh process of its own, started with the
environment its user has:
- ours: `gte.Embedder().encode(texts)` (`import gte` sets the OpenMP wait policy as torch loads, gte's default);
- ONNX Runtime and OpenVINO (when installed; skipped with a note otherwise) on gte's own export of the model
  (`gte.export_onnx`), sessions as latency.py builds them (runtimes.py: as many threads as torch has, OpenVINO
  at float32 precision with the latency hint), in a process that loads neither torch nor gte: the checkpoint's
  `tokenizers` tokenizer (no padding, cut at the checkpoint's max_seq_length as ours cuts), length-sorted
  padded batches of 32 (as onnx_bench.py runs them), the graph's own sentence_embedding output.
A process embeds every text once untimed (a warm-up: the runtimes prepare each new batch shape once), then once
timed. The conditions: quiet, and beside --busy processes that loop in pure Python, started before the
process and killed after it. Within each repeat every contender runs quiet and busy, the contenders taking
turns; each keeps its best time per condition over the repeats. The fair share: the busy processes take
whole cores, leaving cores - busy, so a contender that keeps its share runs cores / (cores - busy) times
slower (2x for one busy process on two cores); "vs fair share" is the slowdown over that, under 1.00x better.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Nothing above loads torch or gte: a runtime's process (this script, --child) runs without them, as its user's does.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtimes import openvino_session, ort_session  # noqa: E402

OURS, ORT, OPENVINO = "ours fp32", "ONNX Runtime fp32", "OpenVINO fp32"
BATCH_SIZE = 32  # the runtimes' padded batches, as onnx_bench.py runs them
DEFAULT_TEXTS, TINY_TEXTS = 400, 16
USER_ENVIRONMENT = dict(os.environ)  # the children's: as it was before this process imports gte (which sets the policy)
Encode = Callable[[list[str]], np.ndarray]  # texts -> [n, dim] float32 vectors


# ------------------------------------------------------------------------------------ in a contender's process
def ours_encoder(job: dict) -> Encode:
    import gte  # before torch, as in the user's process

    return gte.Embedder().encode  # the default model


def runtime_encoder(job: dict, runtime: str) -> Encode:
    """A runtime on the export, as its user runs it: tokenize, length-sorted padded batches, sentence_embedding."""
    model_file, threads = Path(job["model_file"]), job["threads"]
    session = ort_session(model_file, threads) if runtime == ORT else openvino_session(model_file, threads, "f32")
    tokenizer = load_tokenizer(Path(job["export_dir"]))

    def encode(texts: list[str]) -> np.ndarray:
        docs = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
        order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
        parts = []
        for start in range(0, len(order), BATCH_SIZE):
            feeds = padded([docs[i] for i in order[start : start + BATCH_SIZE]])
            parts.append(session({k: v for k, v in feeds.items() if k in job["inputs"]})["sentence_embedding"].copy())
        vectors = np.empty((len(docs), parts[0].shape[-1]), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return vectors

    return encode


def padded(docs: list[list[int]]) -> dict[str, np.ndarray]:
    """The runtimes' feeds: right-padded input_ids (pad id 0), attention_mask and token_type_ids (one segment)."""
    ids = np.zeros((len(docs), max(map(len, docs))), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def load_tokenizer(export_dir: Path):  # -> tokenizers.Tokenizer (imported here, where it is used)
    """The checkpoint's tokenizer, cut at its max_seq_length as ours cuts (all-MiniLM-L6-v2's tokenizer.json pads and
    cuts every text at 128 tokens; its sentence-transformers max_seq_length is 256)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(json.loads((export_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
    return tokenizer


def child(contender: str, job_file: Path, vectors_file: Path) -> dict[str, float]:
    """In a fresh process: embed every text once (warm-up), then once timed; the vectors go to `vectors_file`."""
    job = json.loads(job_file.read_text())
    encode = ours_encoder(job) if contender == OURS else runtime_encoder(job, contender)
    encode(job["texts"])
    start = time.perf_counter()
    vectors = encode(job["texts"])
    seconds = time.perf_counter() - start
    np.save(vectors_file, np.asarray(vectors, dtype=np.float32))
    return {"seconds": seconds}


# ------------------------------------------------------------------------------------ the run
def prepare(out: Path, n: int) -> tuple[Path, int]:
    """The export and the job every contender's process reads; returns the job file and the texts' tokens."""
    import gte
    import torch
    from gte_defaults import DEFAULT_MODEL
    from serve_load import make_texts

    report = gte.export_onnx(DEFAULT_MODEL, out / "export")
    texts = make_texts(n)
    job = {"texts": texts, "export_dir": str(report.out_dir), "model_file": str(report.model_file),
           "inputs": list(report.inputs), "threads": torch.get_num_threads()}  # fmt: skip
    (out / "job.json").write_text(json.dumps(job))
    return out / "job.json", sum(len(e.ids) for e in load_tokenizer(report.out_dir).encode_batch(texts))


def measure(contender: str, job_file: Path, vectors_file: Path, busy: int) -> float:
    """One fresh process of `contender`'s, beside `busy` busy-looping processes started before it, killed after it."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        done = subprocess.run([sys.executable, __file__, "--child", contender, str(job_file), str(vectors_file)],
                              capture_output=True, text=True, env=USER_ENVIRONMENT)  # fmt: skip
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    if done.returncode != 0:
        raise RuntimeError(f"{contender} failed (exit status {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def run(
    contenders: list[str], job_file: Path, vectors: dict[str, Path], busy: int, repeats: int
) -> dict[str, dict[str, float]]:
    """{contender: {"quiet": best s, "busy": best s}}: every repeat runs each condition, the contenders taking turns."""
    from suite import log

    best = {name: {"quiet": np.inf, "busy": np.inf} for name in contenders}
    for repeat in range(repeats):
        for condition, loops in (("quiet", 0), ("busy", busy)):
            for name in contenders:
                seconds = measure(name, job_file, vectors[name], loops)
                log(f"repeat {repeat + 1}/{repeats}, {condition}: {name} {seconds:.2f} s")
                best[name][condition] = min(best[name][condition], seconds)
    return best


def fair_share(cores: int, busy: int) -> float | None:
    """How many times slower a contender that keeps its fair share runs: the busy processes take whole cores."""
    return cores / (cores - busy) if busy < cores else None


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def table(best: dict[str, dict[str, float]], cosines: dict[str, float], fair: float | None) -> str:
    lines = ["| contender | quiet s | busy s | slowdown (busy / quiet) | vs fair share | min cosine vs ours |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, times in best.items():
        slowdown = times["busy"] / times["quiet"]
        versus = "" if fair is None else f"{slowdown / fair:.2f}x"
        cosine = "" if name == OURS else f"{cosines[name]:.6f}"
        lines.append(f"| {name} | {times['quiet']:.3f} | {times['busy']:.3f} | {slowdown:.2f}x | {versus} | {cosine} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, help=f"texts to embed (default: {DEFAULT_TEXTS}; --tiny: {TINY_TEXTS})")
    parser.add_argument("--busy", type=int, default=1, help="busy-looping processes beside the busy runs (default: 1)")
    parser.add_argument("--repeats", type=int, help="runs per contender and condition, best kept (3; --tiny: 1)")
    parser.add_argument("--tiny", action="store_true", help="a few texts, one repeat: a smoke run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # contender, job file, vectors file
    args = parser.parse_args(argv)
    if args.child:
        contender, job_file, vectors_file = args.child
        print(json.dumps(child(contender, Path(job_file), Path(vectors_file))))
        return 0
    from bench import machine  # loads gte, then torch
    from gte_defaults import DEFAULT_MODEL
    from suite import log

    n = args.texts or (TINY_TEXTS if args.tiny else DEFAULT_TEXTS)
    repeats = args.repeats or (1 if args.tiny else 3)
    cores = len(os.sched_getaffinity(0))
    contenders = [OURS, ORT] + ([OPENVINO] if importlib.util.find_spec("openvino") is not None else [])
    print(f"Machine: {machine()}\n", flush=True)
    if OPENVINO not in contenders:
        print("OpenVINO: not installed (`pip install openvino`), its contender skipped.\n")
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gte-contention-") as tmp:
        log(f"{DEFAULT_MODEL}: exporting to ONNX; {n} texts, {len(contenders)} contenders, quiet and {args.busy} busy")
        job_file, tokens = prepare(Path(tmp), n)
        vectors = {name: Path(tmp) / f"vectors-{i}.npy" for i, name in enumerate(contenders)}
        best = run(contenders, job_file, vectors, args.busy, repeats)
        ours = np.load(vectors[OURS])
        cosines = {name: min_cosine(np.load(vectors[name]), ours) for name in contenders}
    fair = fair_share(cores, args.busy)
    fair_text = f"{cores} / ({cores} - {args.busy}) = {fair:.2f}x" if fair else "none (as many busy processes as cores)"
    print(f"### {DEFAULT_MODEL} (embedded): {n} texts ({tokens:,} tokens), quiet and beside {args.busy} busy "
          f"process(es), best of {repeats}\n")  # fmt: skip
    print(f"Load average (1 min) before the run {load_before:.2f}, after {os.getloadavg()[0]:.2f}; {cores} cores; fair "
          f"share beside the busy processes: {fair_text}; run time {time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print(table(best, cosines, fair))
    return 0


if __name__ == "__main__":
    sys.exit(main())
