"""The first law: every golden case passes in float32 within the fixtures' tolerance, for every attention
backend available on the CPU, with unpad_inputs on and off, loaded through the transformers Auto classes
(../shared/tools/gte_golden_loader.py) and checked with ../shared/tools/check_golden.py's own functions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import gte
import gte.attention
from model_helpers import GOLDEN, REPO, TOOLS, check_golden, golden_manifest, import_file

CASES = golden_manifest()["cases"]
ATOL = golden_manifest()["tolerance"]["atol"]
BACKENDS = gte.available_backends("cpu", torch.float32)


@pytest.fixture(scope="module")
def loader():
    return check_golden().resolve_loader(f"{TOOLS / 'gte_golden_loader.py'}:load")


@pytest.fixture
def backends_used(monkeypatch) -> list[str]:
    """Names of the attention backends the model actually ran."""
    used, select = [], gte.attention.select

    def recording_select(*args, **kwargs):
        backend = select(*args, **kwargs)
        used.append(backend.name)
        return backend

    monkeypatch.setattr(gte.attention, "select", recording_select)
    return used


def test_cpu_backends():
    assert {"eager", "sdpa"} <= set(BACKENDS)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case, backend, unpad, loader, backends_used, monkeypatch):
    monkeypatch.setenv("GTE_ATTN", backend)
    checker = check_golden()
    case_dir = GOLDEN / case["name"]
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    model = checker.load_model(loader, case_dir, case)
    got = checker.run_case(model, inputs, case, {"unpad_inputs": unpad})

    report = checker.compare(expected, got, case, inputs["attention_mask"], ATOL)
    assert report["pass"], report
    assert set(backends_used) == {backend}
    if unpad:  # padding never enters the encoder, and comes back as exact zeros
        valid = checker._padding_mask(inputs["attention_mask"])
        for key, meta in case["outputs"].items():
            if meta.get("mask_axes") and key in got:
                assert torch.equal(checker._zero_padded(got[key], valid, meta["mask_axes"]), got[key]), key


def test_gpu_check_logic_on_cpu(capsys):
    """benchmarks/gpu_check.py's whole table for one case, on the CPU: fp32 within tolerance, halves close."""
    gpu_check = import_file(REPO / "benchmarks" / "gpu_check.py")
    case = CASES[0]["name"]
    assert gpu_check.main(["--device", "cpu", "--fixtures", str(GOLDEN), "--case", case]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(case)]
    expected_rows = {(d, b, m) for d in ("fp32", "fp16", "bf16") for b in BACKENDS for m in ("unpad", "padded")}
    assert {tuple(r[1:4]) for r in rows} == expected_rows
    assert all(r[-1] == "PASS" for r in rows)
    assert all(float(r[4]) <= ATOL for r in rows if r[1] == "fp32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_check_without_cuda_exits_cleanly(capsys):
    gpu_check = import_file(REPO / "benchmarks" / "gpu_check.py")
    assert gpu_check.main(["--fixtures", str(GOLDEN)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
