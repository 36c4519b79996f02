"""One query at a time on CPU (issue #24): ours in float32, bfloat16 and int8 against ONNX Runtime (float32, int8)
and OpenVINO (float32, bfloat16, int8) running our own ONNX export; p50 and p99 latency. Start-up times are
benchmarks/cli_startup.py's.

    python benchmarks/latency.py                # both workloads (a few minutes on 2 cores)
    python benchmarks/latency.py --tiny         # the gte-base workload on a tiny model: the smoke test

Workloads:
- the default model (the embedded all-MiniLM-L6-v2), one real query from its text to its normalised vector:
  ours is `Embedder.encode(text)` (also with gte's thread sizing off: "every thread"); a runtime's call is what its user writes: the checkpoint's `tokenizers`
  tokenizer, the session, the graph's own sentence_embedding output (pooling and normalisation in the graph);
- the gte-base shape (random weights), one 24-token query from token ids to the first token's hidden state:
  ours is `Embedder.encode_tokens`; a runtime's call feeds the ids and reads last_hidden_state.
Every contender gets as many threads as torch. The contenders take turns in blocks of calls, a pause before
each block so that no runtime's spinning threads overlap another's calls; p50 and p99 are over every call.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import gte.threads
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from bench import machine  # noqa: E402
from runtimes import openvino_session, ort_session  # noqa: E402

from gte.embed import PoolingNotice  # noqa: E402
from gte.int8 import Int8Warning  # noqa: E402
from gte_defaults import DEFAULT_MODEL  # noqa: E402

QUERY = "what is the capital of China?"
QUERY_TOKENS = 24
BLOCK_PAUSE_S = 0.2  # longer than ONNX Runtime's threads spin after a call
Call = Callable[[], object]


# ------------------------------------------------------------------------------------ runtimes
def export(model: suite.NewModel, out: Path) -> gte.export.ExportReport:
    """`model` saved as a checkpoint under `out`, exported to ONNX with its int8 copy."""
    model.save_pretrained(out / "checkpoint")
    return gte.export_onnx(out / "checkpoint", out / "onnx-export", quantize="int8")


def runtime_sessions(report: gte.export.ExportReport, threads: int) -> dict[str, Callable[[dict], dict]]:
    """Every runtime contender's session on the export (OpenVINO's only when the package is installed)."""
    sessions = {
        "ONNX Runtime fp32": ort_session(report.model_file, threads),
        "ONNX Runtime int8": ort_session(report.quantized_file, threads),
    }
    if importlib.util.find_spec("openvino") is not None:
        sessions |= {
            "OpenVINO fp32": openvino_session(report.model_file, threads, "f32"),
            "OpenVINO bf16": openvino_session(report.model_file, threads, "bf16"),
            "OpenVINO int8": openvino_session(report.quantized_file, threads, "f32"),
        }
    return sessions


# ------------------------------------------------------------------------------------ workloads
def default_model_calls(out: Path, threads: int) -> tuple[dict[str, Call], dict[str, np.ndarray]]:
    """{contender: one call on QUERY}, and each contender's vector for QUERY (to check they agree)."""
    from tokenizers import Tokenizer

    report = gte.export_onnx(DEFAULT_MODEL, out, quantize="int8")
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokenizer.no_padding()  # all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens: the runtimes' best case

    def runtime_call(session: Callable[[dict], dict]) -> Call:
        def call() -> np.ndarray:
            encoding = tokenizer.encode(QUERY)
            feeds = {"input_ids": [encoding.ids], "attention_mask": [encoding.attention_mask],
                     "token_type_ids": [encoding.type_ids]}  # fmt: skip
            feeds = {name: np.array(value, dtype=np.int64) for name, value in feeds.items() if name in report.inputs}
            return session(feeds)["sentence_embedding"][0].copy()

        return call

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8Warning)  # its fidelity is a column of the table
        ours = {f"ours {name}": gte.Embedder(DEFAULT_MODEL, dtype=dtype) for name, dtype in
                (("fp32", None), ("bf16", "bfloat16"), ("int8", "int8"))}  # fmt: skip
    calls = {name: (lambda e=embedder: e.encode(QUERY)[0]) for name, embedder in ours.items()}
    calls["ours fp32, every thread"] = every_thread(calls["ours fp32"])
    calls |= {name: runtime_call(session) for name, session in runtime_sessions(report, threads).items()}
    return calls, {name: np.asarray(call(), dtype=np.float32) for name, call in calls.items()}


def every_thread(call: Call) -> Call:
    """`call` with gte's thread sizing off (gte.threads.sized_to): the query on all of torch's threads, to show
    what the sizing buys."""

    def unsized() -> object:
        saved, gte.threads.WORK_PER_THREAD = gte.threads.WORK_PER_THREAD, 1e-9
        try:
            return call()
        finally:
            gte.threads.WORK_PER_THREAD = saved

    return unsized


def base_shape_calls(shape: suite.Shape, out: Path, threads: int) -> tuple[dict[str, Call], dict[str, np.ndarray]]:
    """{contender: one call on a QUERY_TOKENS-token query}, and each contender's first-token hidden state."""
    model = suite.build_model(shape)
    report = export(model, out)
    (query,) = suite.random_docs([QUERY_TOKENS], shape.vocab, torch.Generator().manual_seed(3))
    ids = np.array([query], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8Warning)
        ours = {f"ours {name}": suite.ours(copy.deepcopy(model), 4096, dtype=dtype) for name, dtype in
                (("fp32", None), ("bf16", torch.bfloat16), ("int8", "int8"))}  # fmt: skip
    calls = {name: (lambda c=contender: c.embed([query])[0]) for name, contender in ours.items()}
    calls |= {
        name: (lambda s=session: s(feeds)["last_hidden_state"][0, 0].copy())
        for name, session in runtime_sessions(report, threads).items()
    }
    return calls, {name: np.asarray(call(), dtype=np.float32) for name, call in calls.items()}


# ------------------------------------------------------------------------------------ timing
def time_calls(calls: dict[str, Call], n: int, block: int) -> dict[str, np.ndarray]:
    """`n` timed calls of each contender (after a warm-up), in blocks of `block`, the contenders taking turns."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    while any(len(t) < n for t in times.values()):
        for name, call in calls.items():
            time.sleep(BLOCK_PAUSE_S)
            for _ in range(min(block, n - len(times[name]))):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def table(title: str, times: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> str:
    reference = vectors["ours fp32"]
    lines = [f"### {title}", "", "| contender | p50 ms | p99 ms | best ms | p50 vs ours fp32 | cosine to ours fp32 |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    ours_p50 = np.percentile(times["ours fp32"], 50)
    for name, t in times.items():
        p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
        v = vectors[name]
        cosine = float(v @ reference / (np.linalg.norm(v) * np.linalg.norm(reference)))
        lines.append(f"| {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {t.min() * 1e3:.2f} | {ours_p50 / p50:.2f}x | "
                     f"{cosine:.6f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="only the gte-base workload, on a tiny model: a smoke run")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per contender (default: %(default)s)")
    parser.add_argument("--block", type=int, default=30, help="calls per turn (default: %(default)s)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", PoolingNotice)  # the random-weight checkpoint pools its first token, as meant
    threads = torch.get_num_threads()
    print(f"Machine: {machine()}\n")
    if importlib.util.find_spec("openvino") is None:
        print("OpenVINO: not installed (`pip install openvino`), its contenders skipped.\n")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.tiny:
            suite.log("default model: exporting, loading")
            calls, vectors = default_model_calls(Path(tmp) / "default", threads)
            suite.log(f"default model: {len(calls)} contenders x {args.calls} calls")
            times = time_calls(calls, args.calls, args.block)
            print(table(f"{DEFAULT_MODEL} (embedded): one query, text to vector ({QUERY!r})", times, vectors) + "\n")
        shape = suite.SHAPES["tiny" if args.tiny else "base"]
        suite.log(f"{shape.name} shape: exporting, loading")
        calls, vectors = base_shape_calls(shape, Path(tmp) / shape.name, threads)
        suite.log(f"{shape.name} shape: {len(calls)} contenders x {args.calls} calls")
        times = time_calls(calls, args.calls, args.block)
        print(table(f"{shape.name} shape (random weights): one {QUERY_TOKENS}-token query, ids to hidden state", times,
                    vectors))  # fmt: skip


if __name__ == "__main__":
    main()
