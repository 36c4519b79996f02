"""The benchmark suite cannot rot: it runs end to end on a tiny model and produces its tables. And the
CPU fast path it measures stays exact.

Nothing here times anything; the checks are that every table row is there, that the contenders, which
share one model's weights, agree on the embeddings, and that the golden cases pass with the per-token
work split into small chunks (the golden batches are too small to be split otherwise).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gte.layers
from model_helpers import golden_diffs, golden_manifest, load_golden_model, run_golden

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
import bert_bench  # noqa: E402
import modernbert_bench  # noqa: E402
import corpus_bench  # noqa: E402
import gpu_bench  # noqa: E402
import profile_ops  # noqa: E402
import suite  # noqa: E402

CONTENDERS = ["gte padded eager", "sentence-transformers-style", "ours"]
# The tables' min cosine has 6 decimals. float32 contenders on the same weights agree within 1e-5 per element (1e-4
# for ONNX Runtime), which at these widths keeps 1 - cosine under 1e-6: the last printed digit.
FP32_MIN_COSINE = 0.999999


def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """The rows of the markdown table under the heading that contains `title`, keyed by first cell."""
    section = text.split(title, 1)[1].split("\n### ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.fixture(scope="module")
def tiny_report() -> str:
    """stdout of `bench.py --tiny`, run once for the module."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--tiny"])
    return out.getvalue()


def test_tiny_suite_produces_every_table(tiny_report):
    mixed = table_rows(tiny_report, "tiny, mixed: 48 docs")
    assert set(mixed) == {*CONTENDERS, "ours bf16", "ours int8", "GEMM ceiling (float32)", "GEMM ceiling (bfloat16)"}
    short = table_rows(tiny_report, "tiny, short:")
    assert set(short) == {*CONTENDERS, "GEMM ceiling (float32)"}
    long = table_rows(tiny_report, "tiny, long documents")
    assert set(long) == set(CONTENDERS)
    for cells in long.values():
        assert cells[0] == "256" and float(cells[2].replace(",", "")) > 0  # tokens, peak RSS
    profile = table_rows(tiny_report, "where ours spends its time")
    assert {profile_ops.GEMM, profile_ops.ATTENTION, profile_ops.NORMS, profile_ops.ROPE, "total"} <= set(profile)


def test_contenders_agree_on_the_embeddings(tiny_report):
    for title in ("tiny, mixed: 48 docs", "tiny, short:"):
        rows = table_rows(tiny_report, title)
        for name in ("sentence-transformers-style", "ours"):
            assert float(rows[name][-1]) >= FP32_MIN_COSINE, (title, name, rows[name])
        assert rows["ours"][2] == "0%"  # no padding computed
    mixed = table_rows(tiny_report, "tiny, mixed: 48 docs")
    assert float(mixed["ours bf16"][-1]) >= 0.999  # the cosine BENCHMARKS.md claims for bf16
    assert float(mixed["ours int8"][-1]) >= 0.99  # the tiny random shape; real models: the Embedder's own probe


def test_bert_bench_runs_and_its_contenders_agree():
    """bert_bench.py --tiny: the embedded model against sentence-transformers, and a tiny BERT converted as it loads."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bert_bench.main(["--tiny"])
    default = table_rows(out.getvalue(), "all-MiniLM-L6-v2 (embedded)")
    assert set(default) == {"sentence-transformers", "ours"} and float(default["ours"][-1]) >= FP32_MIN_COSINE
    tiny = table_rows(out.getvalue(), "tiny shape")
    assert set(tiny) == {"sentence-transformers-style", "ours"} and float(tiny["ours"][-1]) >= FP32_MIN_COSINE
    assert tiny["ours"][2] == "0%"  # no padding computed


def test_modernbert_bench_runs_and_its_contenders_agree():
    """modernbert_bench.py --tiny: a tiny ModernBertModel against ours converted as it loads, and a long document."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        modernbert_bench.main(["--tiny"])
    tiny = table_rows(out.getvalue(), "tiny shape")
    assert set(tiny) == {"sentence-transformers-style", "ours"} and float(tiny["ours"][-1]) >= FP32_MIN_COSINE
    assert tiny["ours"][2] == "0%"  # no padding computed
    assert set(table_rows(out.getvalue(), "One document")) == {"ours, local layers", "ours, every layer global",
                                                                "transformers ModernBertModel (SDPA)"}  # fmt: skip


def test_corpus_bench_runs():
    """corpus_bench.py --tiny: the streaming job and the in-memory baseline, each in its own process, on the
    embedded model; every row of the table is there and the job wrote every row."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        corpus_bench.main(["--tiny", "--repeats", "1"])
    rows = [line.split(" | ") for line in out.getvalue().splitlines() if line.startswith("| default model")]
    assert [(r[0], r[1]) for r in rows] == [("| default model, in memory (Embedder.encode)", "100"),
                                            ("| default model, streaming job", "100"), ("| default model, streaming job", "500")]
    assert all(float(r[5].replace(",", "")) > 0 for r in rows)  # peak RSS measured


def test_eval_bench_runs(capsys):
    """eval_bench.py on a small corpus: both runs (embedding, then cached vectors) measured, the report printed."""
    import eval_bench

    eval_bench.main(["--docs", "300", "--queries", "20"])
    out = capsys.readouterr().out
    runs = [line.split(" | ") for line in out.splitlines() if line.startswith(("| first", "| second"))]
    assert len(runs) == 2 and all(float(r[2].replace(",", "")) > 0 for r in runs)
    assert "| full | " in out


def test_chunk_bench_runs(capsys):
    import chunk_bench

    chunk_bench.main(["--docs", "20", "--repeats", "1"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith(("| whole", "| naive", "| late"))]
    assert len(rows) == 3 and rows[0][2] == "1.00x"


def test_late_chunking_bench_runs(capsys):
    import late_chunking

    late_chunking.main(["--tiny"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| naive", "| late"))]
    assert len(rows) == 3


def test_interleave_keeps_every_batch_once_in_pace():
    lengths = [5, 1, 3, 8, 2, 2]
    plans = [[[0, 1], [2, 3], [4, 5]], [[3, 0, 2, 4, 5, 1]]]
    steps = suite.interleave(plans, lengths)
    assert sorted((s.contender, tuple(s.batch)) for s in steps) == sorted(
        (c, tuple(b)) for c, plan in enumerate(plans) for b in plan
    )
    assert [s.progress for s in steps] == sorted(s.progress for s in steps)


def test_sampled_contender_is_scaled_to_the_whole_workload():
    workload = suite.Workload("w", [[1] * n for n in (4, 4, 4, 4)], "")
    contender = suite.Contender(
        "c", suite.in_order(1), lambda docs: torch.ones(len(docs), 2), padded=True, sample=2
    )
    (result,) = suite.run_workload([contender], workload, repeats=1)
    assert result.computed_tokens == 16
    assert result.embeddings.isnan().any(-1).tolist() == [False, True, False, True]


def test_flops_count_projections_and_attention():
    shape = suite.SHAPES["base"]
    assert shape.linear_flops_per_token() == 2 * 12 * 768 * (3 * 768 + 768 + 2 * 3072) + 2 * 12 * 3072 * 768
    assert shape.flops([10, 20]) == 30 * shape.linear_flops_per_token() + 4 * 12 * 768 * (100 + 400)


def test_profile_accounts_for_the_whole_run():
    shape = suite.SHAPES["tiny"]
    model = suite.build_model(shape)
    ours = suite.ours(model, 64)
    docs = suite.mixed(16, 4, 32, shape.vocab).docs
    totals = profile_ops.profile(ours.model, lambda: ours.embed(docs))
    assert totals[profile_ops.GEMM] > 0 and totals[profile_ops.ATTENTION] > 0
    assert all(seconds >= 0 for seconds in totals.values())
    assert "apply_rotary" in repr(profile_ops.gte.layers.apply_rotary)  # wrappers removed afterwards


def test_gpu_bench_logic_runs_on_cpu():
    shape = suite.SHAPES["tiny"]
    sections = gpu_bench.run_shape(
        shape, suite.build_model(shape), torch.device("cpu"), torch.float32, lambda: None,
        mixed=(16, 4, 32), short=(16, 4, 8), lengths=(64,), batch_tokens=64, repeats=1,
    )  # fmt: skip
    report = "\n\n".join(sections)
    rows = table_rows(report, "tiny, mixed:")
    assert {"gte padded eager", "sentence-transformers-style", "ours (sdpa)", "GEMM ceiling (float32)"} <= set(rows)
    assert float(rows["ours (sdpa)"][-1]) >= FP32_MIN_COSINE
    assert set(table_rows(report, "tiny, long documents")) >= {"gte padded eager", "ours (sdpa)"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_bench_without_cuda_says_so():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_bench.py")], capture_output=True, text=True, env={**os.environ}
    )
    assert done.returncode == 1
    assert re.search(r"needs a CUDA GPU.*bench\.py", done.stderr)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_golden_cases_pass_with_the_per_token_work_in_small_chunks(unpad, monkeypatch):
    monkeypatch.setattr(gte.layers, "CPU_CHUNK_TOKENS", 7)
    for case in golden_manifest()["cases"]:
        diffs = golden_diffs(case, run_golden(load_golden_model(case), case, unpad_inputs=unpad))
        assert max(diffs.values()) <= golden_manifest()["tolerance"]["atol"], (case["name"], diffs)


def test_cli_startup_benchmark_runs(monkeypatch, tiny_model_dir):
    """Every case has its row, `gte embed` and `gte serve` (until /health answers) on the tiny model, and a row
    with a target says whether it was met."""
    import cli_startup

    cases = {"gte --help": [*cli_startup.GTE, "--help"], cli_startup.BASELINE: ["-c", "pass"], "import gte": ["-c", "pass"]}
    monkeypatch.setattr(cli_startup, "CASES", cases)
    rows = table_rows("### start-up\n" + cli_startup.table(cli_startup.measure(1, str(tiny_model_dir))), "start-up")
    assert list(rows) == [*cases, cli_startup.EMBED, cli_startup.SERVE]
    assert rows["gte --help"][1:] == ["", ""]
    assert all(rows[case][2] in ("yes", "no") for case in ("import gte", cli_startup.EMBED, cli_startup.SERVE))


def test_onnx_bench_tiny_produces_every_table(capsys):
    """benchmarks/onnx_bench.py end to end on the tiny shape: every table (OpenVINO's rows where it is installed, a
    note where not), the float32 runtimes give our vectors, and ours int8 stays near them."""
    import onnx_bench

    onnx_bench.main(["--tiny", "--repeats", "1", "--latency-repeats", "2"])
    out = capsys.readouterr().out
    contenders = {"ours", "ours int8", "ONNX Runtime fp32", "ONNX Runtime int8"}
    if importlib.util.find_spec("openvino") is not None:
        contenders |= {"OpenVINO fp32", "OpenVINO int8"}
    else:
        assert "OpenVINO: not installed" in out
    for title in ("mixed: 48 docs", "short: 64 docs", "batch 1: one 24-token query"):
        assert set(table_rows(out, title)) == contenders, title
    for title in ("mixed: 48 docs", "short: 64 docs"):
        rows = table_rows(out, title)
        for name in contenders & {"ONNX Runtime fp32", "OpenVINO fp32"}:
            assert float(rows[name][-1]) >= FP32_MIN_COSINE, (title, name)
        assert float(rows["ours int8"][-1]) >= 0.99, title


def test_serve_load_runs_on_the_tiny_model(tiny_model_dir, capsys):
    """serve_load.py end to end: both servers answer every request with the offline vectors and exit 0 on SIGTERM."""
    import serve_load

    code = serve_load.main(["--model", str(tiny_model_dir), "--clients", "1", "2", "--requests", "3", "4", "--texts", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert {(r[0].strip("| "), r[1]) for r in rows} == {(m, c) for m in ("offline", "batching", "no batching") for c in "12"}
    assert "median of the per-text differences" in out


def test_serve_fairness_tiny_measures_every_scenario(capsys):
    """serve_fairness.py --tiny end to end: the one-text vectors are the offline ones, the big answers whole, exit 0."""
    import serve_fairness

    code = serve_fairness.main(["--tiny"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = table_rows(out, "machine:")
    assert set(rows) == {"idle", "big request alone", "big + one-text, back to back", "big + one-text, random, 0.05 s apart"}
    assert rows["idle"][0] == "3" and rows["big request alone"][4] != "-"  # 3 idle requests; the big one's time
    assert "one batch of the big request alone:" in out
    assert "server exit status after SIGTERM: 0" in out


def test_omp_wait_runs_a_policy_in_its_own_process(tiny_model_dir, monkeypatch, capsys):
    import omp_wait

    monkeypatch.setattr(omp_wait, "POLICIES", {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}})
    assert omp_wait.main(["--model", str(tiny_model_dir), "--repeats", "1"]) == 0
    assert re.search(r"\| PASSIVE \| \d+ \| [\d.]+ \|", capsys.readouterr().out)


def test_latency_tiny_produces_its_table():
    """benchmarks/latency.py end to end on the tiny shape: every contender (OpenVINO's where it is installed), p50 no
    more than p99, the float32 runtimes on our vectors. In its own process: the runtimes' thread pools outlive the
    call, and with them alive in pytest's process a later test's os.kill(SIGTERM) crashed it (a segfault)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "latency.py"), "--tiny", "--calls", "4", "--block", "2"],
                          capture_output=True, text=True, timeout=600, env=os.environ | {"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    contenders = {"ours fp32", "ours bf16", "ours int8", "ONNX Runtime fp32", "ONNX Runtime int8"}
    if importlib.util.find_spec("openvino") is not None:
        contenders |= {"OpenVINO fp32", "OpenVINO bf16", "OpenVINO int8"}
    rows = table_rows(out, "one 24-token query")
    assert set(rows) == contenders
    assert all(float(cells[0]) <= float(cells[1]) for cells in rows.values())  # p50 <= p99
    for name in contenders & {"ONNX Runtime fp32", "OpenVINO fp32"}:
        assert float(rows[name][-1]) >= FP32_MIN_COSINE, name


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="gte.export_onnx needs onnxruntime")
def test_contention_tiny_produces_its_table():
    """benchmarks/contention.py --tiny end to end: every contender (OpenVINO's where it is installed) quiet and beside
    a busy process, each in its own process; the slowdown is busy / quiet and the runtimes give our vectors. In its own
    process, as latency.py's test (the export's ONNX Runtime session outlives the call)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "contention.py"), "--tiny"], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    contenders = {"ours fp32", "ONNX Runtime fp32"}
    if importlib.util.find_spec("openvino") is not None:
        contenders |= {"OpenVINO fp32"}
    else:
        assert "OpenVINO: not installed" in done.stdout
    assert "fair share beside the busy processes" in done.stdout and "Load average" in done.stdout
    rows = table_rows(done.stdout, "16 texts")
    assert set(rows) == contenders
    for name, (quiet, busy, slowdown, *_) in rows.items():
        assert float(quiet) > 0 and float(busy) > 0
        assert float(slowdown.rstrip("x")) == pytest.approx(float(busy) / float(quiet), rel=0.02), name
    for name in contenders - {"ours fp32"}:
        assert float(rows[name][-1]) >= FP32_MIN_COSINE, name


def test_benchmarks_load_gte_before_torch():
    """Each benchmark imports gte before torch, so torch's OpenMP runtime starts with gte's wait policy: the one its
    users get (`import gte` sets it only if torch has not loaded yet)."""
    import ast

    gte_first = ("suite", "bench", "serve_load")  # benchmark modules whose own first import is gte
    for script in sorted(BENCHMARKS.glob("*.py")):
        first: dict[str, int] = {}
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                root = name.split(".")[0]
                if root in ("gte", "torch", "transformers", *gte_first):
                    first.setdefault("gte" if root in gte_first else root, node.lineno)
        loads_torch = [first[m] for m in ("torch", "transformers") if m in first]
        if loads_torch:
            assert first.get("gte", 10**9) < min(loads_torch), script.name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepack_bench_tiny_produces_every_table(capsys, dtype):
    import prepack_bench

    if not gte.prepack.supported(getattr(torch, dtype)):
        pytest.skip(f"no packed {dtype} kernel on this machine / torch build")
    assert prepack_bench.main(["--tiny", "--repeats", "1", "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert len(table_rows(out, f"### tiny, {dtype}")) == 3
    memory = out.split("### memory", 1)[1]
    assert [line.split(" | ")[1] for line in memory.splitlines() if line.startswith("| tiny |")] == ["nn.Linear", "packed"]
