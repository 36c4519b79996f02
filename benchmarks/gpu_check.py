#!/usr/bin/env python
"""The golden cases on a GPU: every available attention backend, in float32, float16 and bfloat16.

    python benchmarks/gpu_check.py                       # all cases, all backends, all dtypes, on CUDA
    python benchmarks/gpu_check.py --case p01_model_rope_ln_packed_tt0_gelu --dtype bf16
    python benchmarks/gpu_check.py --device cpu          # the same table on the CPU (a smoke test)

One row per case x dtype x backend x mode ("unpad": padding removed before the encoder; "padded":
the padded batch, for the backends that can take one): the max abs diff and the cosine similarity
against the fixtures' float64 expected outputs, on valid positions only (check_golden.py's rules).
A float32 row passes within the fixtures' tolerance; a half-precision row passes when its cosine
reaches --min-cosine. Exits 1 if any row fails; exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import transformers
from safetensors.torch import load_file

import gte
import gte.attention

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "golden"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_COSINE = 0.999


def import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def cosine(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], case: dict, valid: torch.Tensor, checker: ModuleType) -> float:
    """The lowest cosine similarity over the compared outputs (each flattened, padded positions zeroed)."""
    values = []
    for key, value in got.items():
        axes = case["outputs"][key].get("mask_axes")
        value = checker._zero_padded(value.reshape(expected[key].shape), valid, axes) if axes else value
        values.append(float(torch.nn.functional.cosine_similarity(value.flatten(), expected[key].flatten(), dim=0)))
    return math.nan if any(map(math.isnan, values)) else min(values, default=math.nan)


def modes(backend: str) -> list[bool]:
    """unpad_inputs values to run: packed-only kernels would silently fall back to another backend when padded."""
    return [True, False] if gte.attention.BACKENDS[backend].padded else [True]


def check_case(case: dict, fixtures: Path, device: torch.device, dtypes: list[str], atol: float, min_cosine: float, checker: ModuleType) -> list[dict]:
    case_dir = fixtures / case["name"]
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        model = getattr(gte, case["class"]).from_pretrained(str(case_dir), dtype=dtype, **case.get("init_kwargs", {}))
        model = model.to(device).eval()
        for backend in gte.available_backends(device, dtype):
            model.set_attn_implementation(backend)
            for unpad in modes(backend):
                row = dict(case=case["name"], dtype=dtype_name, backend=backend, mode="unpad" if unpad else "padded")
                try:
                    row |= compare(model, inputs, expected, case, unpad, str(device), checker)
                except Exception as exc:  # report it and go on: one broken kernel must not hide the other rows
                    row |= dict(diff=math.inf, worst=None, cosine=math.nan, errors=[f"{type(exc).__name__}: {exc}"])
                bound_ok = row["diff"] <= atol if dtype == torch.float32 else row["cosine"] >= min_cosine
                rows.append(row | dict(ok=not row["errors"] and bound_ok))
    return rows


def compare(model: torch.nn.Module, inputs: dict, expected: dict, case: dict, unpad: bool, device: str, checker: ModuleType) -> dict:
    """Run one case once: max abs diff, worst output, cosine, and what was missing."""
    got = checker.run_case(model, inputs, case, {"unpad_inputs": unpad}, device)
    report = checker.compare(expected, got, case, inputs["attention_mask"], math.inf)
    valid = checker._padding_mask(inputs["attention_mask"])
    return dict(
        diff=report["max_abs_diff"],
        worst=report["worst_key"],
        cosine=cosine(expected, got, case, valid, checker),
        errors=report["errors"] + [f"missing {key}" for key in report["missing"]],
    )


def print_row(row: dict, width: int) -> None:
    notes = f"  ({'; '.join(map(str, row['errors']))})" if row["errors"] else ""
    print(
        f"{row['case']:{width}s} {row['dtype']:5s} {row['backend']:10s} {row['mode']:6s} {row['diff']:12.3e} "
        f"{row['cosine']:10.7f}  {str(row['worst']):17s} {'PASS' if row['ok'] else 'FAIL'}{notes}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="golden fixtures directory (holds manifest.json)")
    p.add_argument("--checker", type=Path, default=None, help="check_golden.py (default: <fixtures>/../tools/check_golden.py)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", action="append", choices=list(DTYPES), help="repeatable; default: all three")
    p.add_argument("--case", action="append", default=[], help="only these cases (repeatable)")
    p.add_argument("--min-cosine", type=float, default=MIN_COSINE, help="pass mark for float16 / bfloat16 rows")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a GPU machine, or pass --device cpu)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 rows are held to the float32 tolerance
    torch.backends.cudnn.allow_tf32 = False
    transformers.utils.logging.disable_progress_bar()
    checker = import_file(args.checker or args.fixtures.parent / "tools" / "check_golden.py")
    manifest = checker.load_manifest(args.fixtures)
    cases = [c for c in manifest["cases"] if not args.case or c["name"] in args.case]
    if len(cases) != len(set(args.case)) and args.case:
        raise SystemExit(f"unknown case in {args.case}")
    atol = manifest["tolerance"]["atol"]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}  fp32 atol {atol:.1e}  half-precision min cosine {args.min_cosine}")
    width = max(len(c["name"]) for c in cases)
    print(f"{'case':{width}s} {'dtype':5s} {'backend':10s} {'mode':6s} {'max_abs_diff':>12s} {'cosine':>10s}  {'worst output':17s} result")
    start, failed, total = time.perf_counter(), 0, 0
    for case in cases:
        for row in check_case(case, args.fixtures, device, args.dtype or list(DTYPES), atol, args.min_cosine, checker):
            print_row(row, width)
            failed += not row["ok"]
            total += 1
    print(f"{total - failed}/{total} rows passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
