"""Fine-tuning speed: `gte train embed` against sentence-transformers' SentenceTransformerTrainer (issue #20).

    python benchmarks/train_bench.py                     # the default model (all-MiniLM-L6-v2), 20 steps of 32 rows
    python benchmarks/train_bench.py --steps 3 --rows 96 # a smoke run
    python benchmarks/train_bench.py --device cuda --batch 128 --steps 50   # the GPU entry, when a device is lent

Same model, data, batch size, loss (MultipleNegativesRankingLoss, scale 20, cosine), learning rate, no warm-up,
gradient clipping at 1 (both trainers' defaults). The data has mixed lengths, as real pairs do: a short anchor
(4-16 words) and a positive of 10-200 words (long-tailed), cut at the model's 256 tokens by both. Each contender
runs in its own process, interleaved, best of `--repeats`; a process's peak RSS is its own. Rows/s counts the
training loop (gte: `Result.seconds`; sentence-transformers: `train_runtime`); "total" is the process from start
to trained model saved. The two draw their batches in different orders, so their losses are compared as curves
(mean of the first and of the last five steps), not step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_bench import run_child  # noqa: E402

WORDS = ("model system data river light stone music garden city paper window market energy signal forest ocean "
         "engine theory battery planet language memory network protein camera winter harbor mountain").split()  # fmt: skip

GTE = """
import json, sys, time, gte
data, out, steps, batch, dtype, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[7]
r = gte.train(data, out, steps=steps, batch_size=batch, warmup=0, dtype=dtype, device=device, show_progress=False)
print(json.dumps({"loop": r.seconds, "losses": r.losses}))
"""

SENTENCE_TRANSFORMERS = """
import json, sys, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
data, out, steps, batch, dtype, model_path, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
rows = [json.loads(line) for line in open(data)]
model = SentenceTransformer(model_path, device=device)
dataset = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
args = SentenceTransformerTrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
    learning_rate=5e-5, warmup_ratio=0.0, report_to=[], use_cpu=device == "cpu", save_strategy="no", logging_steps=1,
    dataloader_drop_last=True, seed=0, bf16=dtype == "bf16", disable_tqdm=True)
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model))
metrics = trainer.train().metrics
model.save(out)
print(json.dumps({"loop": metrics["train_runtime"], "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}))
"""


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        anchor = " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))
        positive = " ".join(rng.choices(WORDS, k=min(200, int(10 + rng.paretovariate(1.2) * 12))))
        lines.append(json.dumps({"anchor": anchor, "positive": f"{anchor} {positive}"}))
    path.write_text("\n".join(lines) + "\n")


def contenders(dtypes: list[str]) -> list[tuple[str, str, str]]:
    """(name, script, dtype) in the order they run."""
    return [(f"{name} {dtype}", script, dtype) for dtype in dtypes
            for name, script in (("gte", GTE), ("sentence-transformers", SENTENCE_TRANSFORMERS))]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=None, help="rows of data (default: steps x batch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bf16", help="comma-separated: float32, bf16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU entry: both trainers on the GPU)")
    args = parser.parse_args(argv)
    import torch

    import gte

    model = gte.hub.resolve(gte.embed.DEFAULT_MODEL)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average before: {os.getloadavg()[0]:.2f}; device {args.device}; model {gte.embed.DEFAULT_MODEL}, {args.steps} steps of "
          f"{args.batch} rows, MNRL\n")  # fmt: skip
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, args.rows or args.steps * args.batch)
        for repeat in range(args.repeats):
            for name, script, dtype in contenders(args.dtypes.split(",")):
                out = Path(tmp) / f"{repeat}-{name.replace(' ', '-')}"
                seconds, rss, stdout, _ = run_child([sys.executable, "-c", script, str(data), str(out), str(args.steps),
                                                     str(args.batch), dtype, str(model), args.device])  # fmt: skip
                run = json.loads(stdout.strip().splitlines()[-1]) | {"total": seconds, "rss": rss}
                if name not in best or run["loop"] < best[name]["loop"]:
                    best[name] = run
    print("| trainer | rows/s (loop) | loop s | total s | peak RSS MiB | loss, first 5 steps | loss, last 5 steps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, run in best.items():
        losses = run["losses"]
        print(f"| {name} | {args.steps * args.batch / run['loop']:.1f} | {run['loop']:.2f} | {run['total']:.2f} | "
              f"{run['rss'] / 2**20:.0f} | {sum(losses[:5]) / len(losses[:5]):.4f} | {sum(losses[-5:]) / len(losses[-5:]):.4f} |")  # fmt: skip
    for dtype in args.dtypes.split(","):
        ours, theirs = best.get(f"gte {dtype}"), best.get(f"sentence-transformers {dtype}")
        if ours and theirs:
            print(f"\n{dtype}: gte {theirs['loop'] / ours['loop']:.2f}x the rows/s of sentence-transformers, "
                  f"{ours['rss'] / theirs['rss']:.2f}x its peak RSS")  # fmt: skip


if __name__ == "__main__":
    main()
