#!/usr/bin/env python
"""The golden cases on a GPU: every available attention backend, in float32, float16 and bfloat16.

    python benchmarks/gpu_check.py                       # all cases, all backends, all dtypes, on CUDA
    python benchmarks/gpu_check.py --case p01_model_rope_ln_packed_tt0_gelu --dtype bf16
    python benchmarks/gpu_check.py --device cpu          # the same table on the CPU (a smoke test)

One row per case x dtype x backend x mode ("unpad": padding removed before the encoder; "padded":
the padded batch, for the backends that can take one): the max abs diff and the cosine similarity
against the fixtures' float64 expected outputs, on valid positions only (the fixtures' README; the project's
copy is tests/golden/, read with tests/model_helpers.py).
A float32 row passes within the fixtures' tolerance; a half-precision row passes when its cosine
reaches --min-cosine. Exits 1 if any row fails; exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import transformers

import gte
import gte.attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_helpers import GOLDEN, golden_diffs, golden_manifest, golden_tensors, load_golden_model, run_golden, zero_padding  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_COSINE = 0.999


def cosine(case: dict, got: dict[str, torch.Tensor]) -> float:
    """The lowest cosine similarity over the compared outputs (each flattened, padded positions zeroed)."""
    expected = golden_tensors(case, "expected")
    values = [
        float(torch.nn.functional.cosine_similarity(zero_padding(case, key, value).flatten(), expected[key].flatten(), dim=0))
        for key, value in got.items()
    ]
    return math.nan if any(map(math.isnan, values)) else min(values, default=math.nan)


def modes(backend: str) -> list[bool]:
    """unpad_inputs values to run: packed-only kernels would silently fall back to another backend when padded."""
    return [True, False] if gte.attention.BACKENDS[backend].padded else [True]


def check_case(case: dict, device: torch.device, dtypes: list[str], atol: float, min_cosine: float) -> list[dict]:
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        model = load_golden_model(case, dtype=dtype).to(device)
        for backend in gte.available_backends(device, dtype):
            model.set_attn_implementation(backend)
            for unpad in modes(backend):
                row = dict(case=case["name"], dtype=dtype_name, backend=backend, mode="unpad" if unpad else "padded")
                try:
                    row |= compare(model, case, unpad, str(device))
                except Exception as exc:  # report it and go on: one broken kernel must not hide the other rows
                    row |= dict(diff=math.inf, worst=None, cosine=math.nan, errors=[f"{type(exc).__name__}: {exc}"])
                bound_ok = row["diff"] <= atol if dtype == torch.float32 else row["cosine"] >= min_cosine
                rows.append(row | dict(ok=not row["errors"] and bound_ok))
    return rows


def compare(model: torch.nn.Module, case: dict, unpad: bool, device: str) -> dict:
    """Run one case once: max abs diff, worst output, cosine."""
    got = run_golden(model, case, device, unpad_inputs=unpad)
    diffs = golden_diffs(case, got)
    worst = max(diffs, key=diffs.get)
    return dict(diff=diffs[worst], worst=worst, cosine=cosine(case, got), errors=[])


def print_row(row: dict, width: int) -> None:
    notes = f"  ({'; '.join(map(str, row['errors']))})" if row["errors"] else ""
    print(
        f"{row['case']:{width}s} {row['dtype']:5s} {row['backend']:10s} {row['mode']:6s} {row['diff']:12.3e} "
        f"{row['cosine']:10.7f}  {str(row['worst']):17s} {'PASS' if row['ok'] else 'FAIL'}{notes}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=GOLDEN, help="golden fixtures directory (holds manifest.json; default: tests/golden)")
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
    manifest = golden_manifest(args.fixtures.resolve())
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
        for row in check_case(case, device, args.dtype or list(DTYPES), atol, args.min_cosine):
            print_row(row, width)
            failed += not row["ok"]
            total += 1
    print(f"{total - failed}/{total} rows passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
