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
reaches --min-cosine. Then the user's path on the device with its defaults (dtype auto: float16 on CUDA):
Embedder (dense and sparse), Reranker and a BERT checkpoint, built as the tests build them (tests/fixtures.py),
against the same objects on the CPU in float32; a row passes when its lowest cosine reaches --min-cosine.
Exits 1 if any row fails; exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import gte.attention
import numpy as np
import torch
import transformers
from gte.embed import TruncationWarning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fixtures  # noqa: E402
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


TEXTS = ["the quick brown fox", "a lazy dog sleeps in the sun", "fox", "", "the " * 40 + "end"]


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows of a and b [n, d]; two all-zero rows agree."""
    a, b = (np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in (a, b))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(1) & ~b.any(1)
    return float(np.min(np.where(both_zero, 1.0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0))))


def sparse_matrix(weights: list[dict[str, float]], vocab: list[str]) -> np.ndarray:
    return np.array([[w.get(token, 0.0) for token in vocab] for w in weights])


def pipeline_runs(tmp: Path) -> dict[str, tuple[Path, Callable]]:
    """name: (checkpoint directory, run(device) -> [n, d] numbers to compare)."""

    def dense(path: Path, cls=gte.Embedder) -> Callable:
        return lambda device: (m := cls(path, device=device), m.encode(TEXTS), m.dtype)

    def sparse(device):
        m = gte.Embedder(tmp / "sparse", device=device)
        return m, m.encode_sparse(TEXTS), m.dtype

    def rerank(device):
        m = gte.Reranker(tmp / "reranker", device=device)
        return m, np.array([m.score(TEXTS[0], TEXTS)]), m.dtype

    fixtures.build_tiny_model(tmp / "tiny")
    fixtures.build_sparse_model(tmp / "sparse")
    fixtures.build_reranker_model(tmp / "reranker")
    fixtures.build_bert_family_model(tmp / "bert", "BertModel", pooling="mean")
    return {"Embedder.encode": dense(tmp / "tiny"), "Embedder.encode_sparse": sparse,
            "Reranker.score": rerank, "Embedder.encode (BERT)": dense(tmp / "bert")}  # fmt: skip


def check_pipeline(device: torch.device, min_cosine: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # TEXTS holds one long text on purpose
        for name, run in pipeline_runs(Path(tmp)).items():
            row = dict(case=name, backend="auto", mode="unpad", worst=None, errors=[])
            try:
                _, expected, _ = run(torch.device("cpu"))
                model, got, dtype = run(device)
                if isinstance(got, list):  # sparse {token: weight} per text
                    vocab = sorted({t for w in expected + got for t in w})
                    expected, got = sparse_matrix(expected, vocab), sparse_matrix(got, vocab)
                row |= dict(dtype=next(k for k, v in DTYPES.items() if v == dtype),
                            backend=model.backend, diff=float(np.abs(got - expected).max()),
                            cosine=lowest_cosine(got, expected))  # fmt: skip
            except Exception as exc:  # report it and go on
                row |= dict(dtype="?", diff=math.inf, cosine=math.nan, errors=[f"{type(exc).__name__}: {exc}"])
            rows.append(row | dict(ok=not row["errors"] and row["cosine"] >= min_cosine))
    return rows


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
    print(f"\nthe user's path, defaults on {device} against the CPU in float32:")
    for row in check_pipeline(device, args.min_cosine):
        print_row(row, width)
        failed += not row["ok"]
        total += 1
    print(f"{total - failed}/{total} rows passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
