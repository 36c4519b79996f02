"""ONNX Runtime and OpenVINO (float32 and int8) on our export against gte.Embedder (float32 and int8), on CPU:
markdown on stdout.

    python benchmarks/onnx_bench.py             # gte-base shape, random weights (about 25 minutes on 2 cores)
    python benchmarks/onnx_bench.py --tiny      # a tiny model, in seconds (the smoke test)

The model is saved as a checkpoint and exported with `gte.export_onnx(..., quantize="int8")`. Contenders
share its weights: ours (`Embedder.encode_tokens`: unpadded token-budget batches) in float32 and with
`dtype="int8"`; ONNX Runtime on onnx/model.onnx (float32) and onnx/model_quantized.onnx (int8: weights per
channel, activations quantized on each call), CPUExecutionProvider with as many threads as torch; OpenVINO's
CPU plugin on the same two graphs (float32 inference precision, the latency hint, as many threads), when the
`openvino` package is installed (skipped with a note otherwise). The runtimes run padded, length-sorted
batches of 32 (the best case for a padded runtime). Workloads: bench.py's mixed and short corpora (batches
interleaved, each batch's best time over the repeats, suite.run_workload), and batch-1 latency of one
24-token query (the contenders alternating, best of the repeats).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from bench import FULL, TINY, machine  # noqa: E402
from latency import export  # noqa: E402
from runtimes import openvino_session, ort_session  # noqa: E402


BATCH_SIZE = 32
BLOCK_PAUSE_S = 0.2  # before each latency block: longer than ONNX Runtime's threads spin after a call
QUERY_TOKENS = 24


def runtime_contender(session: Callable[[dict], dict], name: str) -> suite.Contender:
    """A runtime's `session` (runtimes.ort_session, runtimes.openvino_session) on padded, length-sorted batches;
    first-token hidden states [B, H]."""

    def embed(docs: suite.Docs) -> torch.Tensor:
        ids, mask = suite.padded_batch(docs, torch.device("cpu"))
        hidden = session({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})["last_hidden_state"]
        return torch.from_numpy(hidden[:, 0].copy())  # OpenVINO's buffer is reused by the next call

    return suite.Contender(name, suite.sorted_by_length(BATCH_SIZE), embed, padded=True)


def runtime_contenders(report: gte.export.ExportReport, threads: int) -> tuple[list[suite.Contender], str | None]:
    """ONNX Runtime's and (when installed) OpenVINO's contenders on the export, and a note on what was skipped.
    OpenVINO at float32 inference precision (on CPUs with bfloat16 units its default is bfloat16)."""
    contenders = [
        runtime_contender(ort_session(report.model_file, threads), "ONNX Runtime fp32"),
        runtime_contender(ort_session(report.quantized_file, threads), "ONNX Runtime int8"),
    ]
    if importlib.util.find_spec("openvino") is None:
        return contenders, "OpenVINO: not installed (`pip install openvino`), its contenders skipped."
    contenders += [
        runtime_contender(openvino_session(report.model_file, threads, "f32"), "OpenVINO fp32"),
        runtime_contender(openvino_session(report.quantized_file, threads, "f32"), "OpenVINO int8"),
    ]
    return contenders, None


def throughput_table(results: list[suite.Result], workload: suite.Workload) -> str:
    ours = results[0]
    lines = [
        f"### {workload.name}: {workload.description} ({workload.tokens:,} real tokens)",
        "",
        "| contender | time s | real tokens/s | vs ours | min cosine vs ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        cosine = "" if r is ours else f"{suite.min_cosine(r.embeddings, ours.embeddings):.6f}"
        lines.append(f"| {r.contender} | {r.seconds:.3g} | {workload.tokens / r.seconds:,.0f} | "
                     f"{ours.seconds / r.seconds:.2f}x | {cosine} |")  # fmt: skip
    return "\n".join(lines)


def latency_table(contenders: list[suite.Contender], vocab: int, repeats: int) -> str:
    """One 24-token query at a time: each contender makes a block of calls, the contenders alternating
    block by block, best of `repeats` calls each. A pause before each block lets the previous runtime's
    threads stop spinning (ONNX Runtime's spin after a call), so no contender runs beside another's."""
    query = suite.random_docs([QUERY_TOKENS], vocab, torch.Generator().manual_seed(3))
    best = {c.name: np.inf for c in contenders}
    for c in contenders:
        c.embed(query)  # warm-up
    rounds = min(3, repeats)
    for round_ in range(rounds):
        for c in contenders:
            time.sleep(BLOCK_PAUSE_S)
            for _ in range(repeats // rounds + (round_ < repeats % rounds)):
                start = time.perf_counter()
                c.embed(query)
                best[c.name] = min(best[c.name], time.perf_counter() - start)
    ours = best[contenders[0].name]
    lines = [f"### batch 1: one {QUERY_TOKENS}-token query, best of {repeats}", "",
             "| contender | latency ms | vs ours |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {name} | {seconds * 1000:.1f} | {ours / seconds:.2f}x |" for name, seconds in best.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small workloads: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="passes over each corpus, best kept (default: 3)")
    parser.add_argument("--latency-repeats", type=int, default=30, help="batch-1 calls per contender (default: 30)")
    args = parser.parse_args(argv)
    plan, shape = (TINY, suite.SHAPES["tiny"]) if args.tiny else (FULL, suite.SHAPES["base"])
    threads = torch.get_num_threads()
    model = suite.build_model(shape)
    print(f"Machine: {machine()}\n\n## {shape.name} shape: ONNX Runtime and OpenVINO vs ours\n")
    with tempfile.TemporaryDirectory() as tmp:
        suite.log(f"{shape.name}: exporting to ONNX (float32 + int8)")
        report = export(model, Path(tmp))
        print(f"Export: opset {report.opset}, ONNX Runtime vs PyTorch max abs diff {report.max_abs_diff:.1e}, "
              f"int8 lowest cosine to float32 {report.int8_cosine:.4f} (random token ids)\n")  # fmt: skip
        ours_int8 = suite.ours(copy.deepcopy(model), plan.batch_tokens, "ours int8", dtype="int8")
        runtimes, note = runtime_contenders(report, threads)
        if note:
            print(note + "\n")
        contenders = [suite.ours(model, plan.batch_tokens), ours_int8, *runtimes]
        for workload in (suite.mixed(*plan.mixed, shape.vocab), suite.short(*plan.short, shape.vocab)):
            suite.log(f"{shape.name} {workload.name}: {', '.join(c.name for c in contenders)}")
            print(throughput_table(suite.run_workload(contenders, workload, args.repeats), workload) + "\n")
        suite.log(f"{shape.name}: batch-1 latency")
        print(latency_table(contenders, shape.vocab, args.latency_repeats))


if __name__ == "__main__":
    main()
