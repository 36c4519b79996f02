"""The first law: every golden case passes in float32 within the fixtures' tolerance, for every attention
backend available on the CPU, with unpad_inputs on and off, loaded through the transformers Auto classes.
The fixtures are the project's copy in tests/golden/ (read by model_helpers); it stays equal to ../shared/golden."""

from __future__ import annotations

import pytest
import torch

import gte
import gte.attention
from gte import engine
from gte.prepack import prepack
from model_helpers import (
    GOLDEN, REPO, golden_diffs, golden_manifest, golden_tensors, import_file, load_golden_model, run_golden, zero_padding,
)  # fmt: skip

CASES = golden_manifest()["cases"]
ATOL = golden_manifest()["tolerance"]["atol"]
BACKENDS = gte.available_backends("cpu", torch.float32)
SHARED_GOLDEN = REPO.parent / "shared" / "golden"


def test_backends_the_cpu_cannot_run_fall_back_to_one_it_can(backends_used, caplog):
    """The matrix below runs both CPU kernels and none of the CUDA-only ones; choosing a CUDA-only one on the CPU
    runs the best CPU kernel instead, says so, and gives the golden numbers."""
    assert BACKENDS == ["sdpa", "eager"]
    case = CASES[0]
    for name in [name for name in gte.attention.BACKENDS if name not in BACKENDS]:
        backends_used.clear()
        gte.attention._warned.clear()
        with caplog.at_level("WARNING", logger="gte"):
            got = run_golden(load_golden_model(case, attn_implementation=name), case, unpad_inputs=True)
        assert set(backends_used) == {"sdpa"}, name
        assert f"attention backend {name!r} is not available for torch.float32 on cpu; using 'sdpa'" in caplog.text
        assert max(golden_diffs(case, got).values()) <= ATOL, name


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case, backend, unpad, backends_used):
    model = load_golden_model(case, attn_implementation=backend)
    got = run_golden(model, case, unpad_inputs=unpad)

    diffs = golden_diffs(case, got)
    assert max(diffs.values()) <= ATOL, diffs
    assert set(backends_used) == {backend}
    if unpad:  # padding never enters the encoder, and comes back as exact zeros
        for key, value in got.items():
            assert torch.equal(zero_padding(case, key, value), value), key


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "linear"])
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_through_the_engine(case, unpad, packed):
    """What Embedder, Reranker and Classifier run: gte.engine.load's modules, built straight from the checkpoint
    (the base model of the heads it does not build), with their projections packed as those load them or not, give
    the golden encoder outputs, and the sequence and token classifiers' pooled outputs and logits."""
    architecture = case["class"] if case["class"] in engine.ARCHITECTURES else "NewModel"
    model = engine.load(case["dir"], architecture, dtype=torch.float32)
    if packed:
        prepack(model)
    inputs = {k: v.flatten(0, -2) for k, v in golden_tensors(case, "inputs").items()}  # multiple choice: [B * C, L]
    with torch.no_grad():
        out = getattr(model, "new", model)(**inputs, **case["call_kwargs"], unpad_inputs=unpad)
        got = {"last_hidden_state": out.last_hidden_state, "hidden_states": torch.stack(out.hidden_states)}
        if architecture == "NewForSequenceClassification":
            got |= {"pooler_output": out.pooler_output, "logits": model.classifier(out.pooler_output)}
        elif architecture == "NewForTokenClassification":
            head = getattr(model, "head", None)
            got["logits"] = model.classifier(out.last_hidden_state if head is None else head.transform(out.last_hidden_state))
    compared = {key: spec for key, spec in case["outputs"].items() if key in got}
    diffs = golden_diffs(case | {"outputs": compared}, {key: got[key].double() for key in compared})
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.skipif(not SHARED_GOLDEN.is_dir(), reason="no ../shared/golden beside the project")
def test_the_copy_equals_the_shared_fixtures():
    """tests/golden/ is a byte-for-byte copy of ../shared/golden: it cannot go stale silently."""
    names = sorted(p.relative_to(SHARED_GOLDEN) for p in SHARED_GOLDEN.rglob("*") if p.is_file())
    assert sorted(p.relative_to(GOLDEN) for p in GOLDEN.rglob("*") if p.is_file()) == names
    for name in names:
        assert (GOLDEN / name).read_bytes() == (SHARED_GOLDEN / name).read_bytes(), name


def test_gpu_check_logic_on_cpu(capsys):
    """benchmarks/gpu_check.py's whole table for one case, on the CPU: fp32 within tolerance, halves close;
    then the user's path (Embedder, Reranker) against itself."""
    gpu_check = import_file(REPO / "benchmarks" / "gpu_check.py")
    case = CASES[0]["name"]
    assert gpu_check.main(["--device", "cpu", "--case", case]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(case)]
    expected_rows = {(d, b, m) for d in ("fp32", "fp16", "bf16") for b in BACKENDS for m in ("unpad", "padded")}
    assert {tuple(r[1:4]) for r in rows} == expected_rows
    assert all(r[-1] == "PASS" for r in rows)
    assert all(float(r[4]) <= ATOL for r in rows if r[1] == "fp32")
    user_path = [line for line in out.splitlines() if line.startswith(("Embedder.", "Reranker."))]
    assert len(user_path) == 4 and all(line.endswith("PASS") for line in user_path)  # dense, sparse, rerank, BERT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_check_without_cuda_exits_cleanly(capsys):
    gpu_check = import_file(REPO / "benchmarks" / "gpu_check.py")
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
