"""The benchmark suite on CPU: one command, markdown tables on stdout (progress on stderr).

    python benchmarks/bench.py                  # gte-base shape, every workload (about 35 minutes on 2 cores)
    python benchmarks/bench.py --shapes large   # gte-large shape (about 3.5x longer)
    python benchmarks/bench.py --tiny           # a tiny model and small workloads, in seconds (the smoke test)

Contenders share one model's random weights: gte padded eager (padded batches of 32 in input order,
eager attention, float32), sentence-transformers-style (transformers' native GteModel, SDPA,
length-sorted padded batches of 32), ours (gte.Embedder: unpadded, length-sorted token-budget batches),
ours in bfloat16 and in int8 (`dtype="int8"`: the projections dynamically quantized), and the GEMM ceiling
(the workload's FLOPs at the
matmul FLOP/s measured in the same run on the same shapes). Batches of all contenders are interleaved
and each batch's time is its best over the repeats. Long documents run in a subprocess per contender
so that the process's peak RSS is that contender's alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profile_ops  # noqa: E402
import suite  # noqa: E402

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Plan:
    """What one run measures: the shape's workloads and their sizes."""

    mixed: tuple[int, int, int]  # documents, shortest, longest
    short: tuple[int, int, int]
    long: tuple[int, ...]
    batch_tokens: int
    repeats: int
    original_sample: int  # time every n-th gte padded eager batch on mixed (its batches are alike)
    profile_sample: int  # profile ours on every n-th of its mixed batches


FULL = Plan((512, 8, 512), (1024, 16, 48), (2048, 8192), batch_tokens=2048, repeats=3, original_sample=4, profile_sample=4)
TINY = Plan((48, 4, 64), (64, 4, 12), (256,), batch_tokens=256, repeats=1, original_sample=2, profile_sample=2)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
        bf16 = "avx512_bf16" in lscpu
    except (OSError, subprocess.CalledProcessError, AttributeError):
        bf16 = False
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"AVX512-BF16: {'yes' if bf16 else 'no'}, oneDNN: {'yes' if torch.backends.mkldnn.is_available() else 'no'}, "
        f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY') or 'unset (libgomp default)'}"
    )


# ------------------------------------------------------------------------------------ throughput
def low_precision_contenders(model: suite.NewModel, batch_tokens: int) -> list[suite.Contender]:
    """Ours with dtype="bfloat16" and dtype="int8" (copies of `model`)."""
    return [
        suite.ours(copy.deepcopy(model), batch_tokens, "ours bf16", dtype=torch.bfloat16),
        suite.ours(copy.deepcopy(model), batch_tokens, "ours int8", dtype="int8"),
    ]


# ------------------------------------------------------------------------------------ long documents
def long_child(shape_name: str, contender: str, length: int, batch_tokens: int) -> dict:
    """In a fresh process: embed one document, report seconds and the process's peak RSS during the call."""
    shape = suite.SHAPES[shape_name]
    model = suite.build_model(shape)
    if contender == suite.ORIGINAL:
        runner = suite.original_style(model)
    else:  # each holds its own copy of the weights
        runner = suite.st_style(suite.build_native(model, CPU, torch.float32)) if contender == suite.ST else suite.ours(model, batch_tokens)
        del model
    doc = suite.long(length, shape.vocab).docs
    runner.embed([doc[0][:64]])  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    start = time.perf_counter()
    runner.embed(doc)
    seconds = time.perf_counter() - start
    peak_kib = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    return {"seconds": seconds, "peak_rss_bytes": peak_kib * 1024}


def run_long(shape: suite.Shape, plan: Plan, gemm_rate: float) -> str:
    names = [suite.ORIGINAL, suite.ST, "ours"]
    lines = [
        "| contender | tokens | time s | peak RSS MiB | GEMM ceiling s | time / ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for length in plan.long:
        ceiling = shape.flops([length]) / gemm_rate
        for name in names:
            suite.log(f"{shape.name} long-{length}: {name} (subprocess)")
            command = [sys.executable, __file__, "--long-child", shape.name, name, str(length), str(plan.batch_tokens)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                lines.append(f"| {name} | {length} | failed: {why} | | | |")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {name} | {length} | {result['seconds']:.1f} | {result['peak_rss_bytes'] / 2**20:,.0f} | "
                f"{ceiling:.1f} | {result['seconds'] / ceiling:.2f}x |"
            )
    return f"### {shape.name}, long documents (one per run, fresh process each)\n\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def run_shape(shape: suite.Shape, plan: Plan, workloads: list[str], profile: bool) -> Iterator[str]:
    """The shape's report sections, one by one as they are measured."""
    suite.log(f"building {shape.name} (hidden {shape.hidden}, {shape.layers} layers)")
    model = suite.build_model(shape)
    native = suite.build_native(model, CPU, torch.float32)
    no_sync = lambda: None  # noqa: E731  (CPU work is synchronous)
    rates = {
        "float32": suite.GemmRate(shape, plan.batch_tokens, CPU, torch.float32, no_sync),
        "bfloat16": suite.GemmRate(shape, plan.batch_tokens, CPU, torch.bfloat16, no_sync),
    }
    ours = suite.ours(model, plan.batch_tokens)
    if "mixed" in workloads:
        workload = suite.mixed(*plan.mixed, shape.vocab)
        contenders = [
            suite.original_style(model, sample=plan.original_sample),
            suite.st_style(native),
            ours,
            *low_precision_contenders(model, plan.batch_tokens),
        ]
        yield suite.throughput_section(shape, workload, contenders, plan.repeats, rates)
        if profile:
            yield profile_section(shape, ours, workload, plan.profile_sample)
    fp32 = {"float32": rates["float32"]}
    if "short" in workloads:
        workload = suite.short(*plan.short, shape.vocab)
        yield suite.throughput_section(shape, workload, [suite.original_style(model), suite.st_style(native), ours], plan.repeats, fp32)
    if "long" in workloads:
        yield run_long(shape, plan, rates["float32"].best)
    yield (
        f"GEMM rates (best seen in the run, at {plan.batch_tokens} tokens): "
        + ", ".join(f"{label} {rate.best / 1e9:.0f} GFLOP/s" for label, rate in rates.items())
    )


def profile_section(shape: suite.Shape, ours: suite.Contender, workload: suite.Workload, every: int) -> str:
    """Ours on one in `every` of its batches of the workload, timed op by op."""
    suite.log(f"{shape.name} {workload.name}: profile of ours")
    batches = ours.plan(workload.lengths)[::every]
    totals = profile_ops.profile(ours.model, lambda: [ours.embed([workload.docs[i] for i in b]) for b in batches])
    tokens = sum(workload.lengths[i] for b in batches for i in b)
    return (
        f"### {shape.name}, {workload.name}: where ours spends its time (one in {every} of its batches, {tokens:,} tokens)\n\n"
        + profile_ops.profile_table(totals)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and workloads: a smoke run in seconds")
    parser.add_argument("--shapes", default="base", help="comma-separated: base, large (default: base)")
    parser.add_argument("--workloads", default="mixed,short,long", help="comma-separated: mixed, short, long")
    parser.add_argument("--repeats", type=int, help="passes per batch, best kept (default: 3; --tiny: 1)")
    parser.add_argument("--batch-tokens", type=int, help="ours: token budget per batch (default: 2048)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-op profile of ours")
    parser.add_argument("--long-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.long_child:
        shape, contender, length, budget = args.long_child
        print(json.dumps(long_child(shape, contender, int(length), int(budget))))
        return
    plan = TINY if args.tiny else FULL
    overrides = {"repeats": args.repeats, "batch_tokens": args.batch_tokens}
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    workloads = args.workloads.split(",")
    for name in shapes + workloads:
        if name not in suite.SHAPES and name not in ("mixed", "short", "long"):
            parser.error(f"unknown shape or workload {name!r}")
    start = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    for name in shapes:
        print(f"\n## {name}", flush=True)
        for section in run_shape(suite.SHAPES[name], plan, workloads, not args.no_profile):
            print(f"\n{section}", flush=True)
    print(f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
