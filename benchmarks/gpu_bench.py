"""The benchmark suite on a CUDA GPU: the CPU suite's tables in float16 and bfloat16, with ours run on
every attention backend available (SDPA on the padded grid, torch varlen, xformers, flash-attn), against
the padded eager baseline. Peak memory is torch.cuda.max_memory_allocated. Under 5 minutes on one H100.

    python benchmarks/gpu_bench.py                   # base and large shapes, float16 and bfloat16
    python benchmarks/gpu_bench.py --shapes base --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
MIXED, SHORT, LONG = (512, 8, 512), (1024, 16, 48), (2048, 8192)
BATCH_TOKENS = 16384
REPEATS = 3


def no_cuda_message() -> str | None:
    if torch.cuda.is_available():
        return None
    return (
        "gpu_bench.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
        f"(torch {torch.__version__}); run benchmarks/bench.py for the CPU suite"
    )


def contenders(
    model: suite.NewModel, native: torch.nn.Module, batch_tokens: int, backends: list[str]
) -> list[suite.Contender]:
    """Original-style (padded eager), sentence-transformers-style, then ours on each backend."""
    ours = [suite.ours(model, batch_tokens, f"ours ({name})", backend=name) for name in backends]
    return [suite.original_style(model), suite.st_style(native), *ours]


def long_table(
    shape: suite.Shape,
    runners: list[suite.Contender],
    lengths: tuple[int, ...],
    gemm_rate: float,
    device: torch.device,
    repeats: int,
    sync,
) -> str:
    """One document per run: best time and peak allocated memory (weights included; CUDA only)."""
    cuda = device.type == "cuda"
    lines = [
        "| contender | tokens | time ms | peak allocated MiB | GEMM ceiling ms | time / ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for length in lengths:
        doc = suite.long(length, shape.vocab).docs
        ceiling = shape.flops([length]) / gemm_rate
        for runner in runners:
            runner.embed([doc[0][:64]])  # warm-up
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            best = float("inf")
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                runner.embed(doc)
                sync()
                best = min(best, time.perf_counter() - start)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f}" if cuda else ""
            lines.append(f"| {runner.name} | {length} | {best * 1e3:.1f} | {peak} | {ceiling * 1e3:.1f} | {best / ceiling:.2f}x |")
    return f"### {shape.name}, long documents\n\n" + "\n".join(lines)


def run_shape(
    shape: suite.Shape,
    master: suite.NewModel,
    device: torch.device,
    dtype: torch.dtype,
    sync,
    mixed=MIXED,
    short=SHORT,
    lengths=LONG,
    batch_tokens: int = BATCH_TOKENS,
    repeats: int = REPEATS,
) -> list[str]:
    """Every table for one shape and dtype; `master` (float32, CPU) holds the weights and stays as it is."""
    suite.log(f"{shape.name} {dtype}")
    model = copy.deepcopy(master).to(device, dtype)
    native = suite.build_native(model, device, dtype)
    backends = [b for b in gte.available_backends(device, dtype) if b != "eager"]
    runners = contenders(model, native, batch_tokens, backends)
    label = str(dtype).removeprefix("torch.")
    rate = suite.GemmRate(shape, batch_tokens, device, dtype, sync)
    sections = [f"## {shape.name}, {label}", f"Attention backends of ours: {', '.join(backends)}."]
    for workload in (suite.mixed(*mixed, shape.vocab), suite.short(*short, shape.vocab)):
        sections.append(suite.throughput_section(shape, workload, runners, repeats, {label: rate}, sync))
    sections.append(long_table(shape, runners, lengths, rate.best, device, repeats, sync))
    sections.append(f"GEMM rate (best seen, at {batch_tokens} tokens): {rate.best / 1e12:.0f} TFLOP/s")
    del model, native, runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="base,large", help="comma-separated: base, large")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated: float16, bfloat16")
    args = parser.parse_args(argv)
    for name in args.shapes.split(","):
        if name not in ("base", "large"):
            parser.error(f"unknown shape {name!r}: choose base, large")
    for name in args.dtypes.split(","):
        if name not in DTYPES:
            parser.error(f"unknown dtype {name!r}: choose {', '.join(DTYPES)}")
    message = no_cuda_message()
    if message:
        sys.exit(message)
    device = torch.device("cuda")
    print(f"Device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    start = time.perf_counter()
    for name in args.shapes.split(","):
        master = suite.build_model(suite.SHAPES[name])
        for dtype in args.dtypes.split(","):
            for section in run_shape(suite.SHAPES[name], master, device, DTYPES[dtype], torch.cuda.synchronize):
                print(f"\n{section}", flush=True)
    print(f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
