"""`gte.train` and `gte.train_rerank`: fine-tuning on the packed, unpadded path.

    result = gte.train("pairs.jsonl", "my-model", model="Alibaba-NLP/gte-base-en-v1.5", loss="cached-mnrl",
                       batch_size=256, epochs=1, eval="my-beir-set/")
    gte.train_rerank("labelled.jsonl", "my-reranker", model="Alibaba-NLP/gte-multilingual-reranker-base")

A task (`embedding.EmbedTask`, `reranking.RerankTask`) holds the model and its data and knows a step's loss;
`Run` does the rest, the same for both: each step takes `batch_size` units (rows, pairs or queries) in an
order fixed by the seed and the epoch, computes the loss and its gradients, and takes one AdamW step under a
linear warm-up / decay schedule with gradients clipped at `max_grad_norm` (transformers' Trainer defaults).
Checkpoints every `save_steps` hold everything --resume needs to end at the weights an uninterrupted run ends at.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gte_defaults import DEFAULT_MODEL, TRAIN_BATCH_SIZE, TRAIN_LR, TRAIN_SCALE, TRAIN_WARMUP

from .. import engine, hub
from ..embed import progress_enabled
from . import checkpoint
from .data import epoch_order
from .distributed import World, join
from .embedding import EmbedTask
from .reranking import RerankTask

DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
REPORT = "training.json"


@dataclass(frozen=True)
class Options:
    """A run's choices (see `train`); all but the operational ones at the end must match for --resume."""

    model: str = DEFAULT_MODEL
    loss: str = "mnrl"  # a reranker's default: "bce"
    batch_size: int = TRAIN_BATCH_SIZE
    epochs: int = 1
    steps: int | None = None
    lr: float = TRAIN_LR
    warmup: float = TRAIN_WARMUP
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None
    dtype: str = "auto"  # bf16 autocast on a GPU that has bfloat16, else float32
    scale: float = TRAIN_SCALE
    similarity: str = "cosine"
    directions: tuple[str, ...] = ("query_to_doc",)
    matryoshka_dims: tuple[int, ...] = ()
    matryoshka_weights: tuple[float, ...] | None = None
    seed: int = 0
    # operational: how the run goes, not where it ends
    batch_tokens: int | None = None
    gradient_checkpointing: bool = False
    save_steps: int | None = None
    eval: str | None = None
    resume: bool = False
    device: str | None = None
    show_progress: bool | None = None

    def settings(self, data: str, world: World, max_length: int) -> dict[str, Any]:
        """What defines where the run ends (a resumed run must have the same)."""
        fields = asdict(self)
        for name in ("batch_tokens", "gradient_checkpointing", "save_steps", "eval", "resume", "device", "show_progress"):
            del fields[name]
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
        return fields | {"model": str(self.model), "data": data, "max_length": max_length, "world_size": world.size}


@dataclass
class Result:
    output: Path
    steps: int
    seconds: float
    rows_per_second: float
    tokens_per_second: float
    losses: list[float] = field(default_factory=list)  # per step
    before: dict[str, float] | None = None  # retrieval metrics ("ndcg@10": ...) before training, with eval
    during: dict[int, dict[str, float]] = field(default_factory=dict)  # at each checkpoint's step, with eval
    after: dict[str, float] | None = None

    def table(self) -> str:
        """before / at each checkpoint / after, as a markdown table (with an evaluation set)."""
        if self.before is None or self.after is None:
            return ""
        steps = [f"step {step}" for step in self.during]
        lines = ["| " + " | ".join(["metric", "before", *steps, "after", "change"]) + " |",
                 "|---|" + "---:|" * (len(steps) + 3)]  # fmt: skip
        for name, value in self.before.items():
            cells = [value, *(metrics[name] for metrics in self.during.values()), self.after[name]]
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in cells) + f" | {self.after[name] - value:+.4f} |")
        return "\n".join(lines)


def train(data: str | os.PathLike, output: str | os.PathLike, **options: Any) -> Result:
    """Fine-tune an embedding model on `data` and save it to `output` in the layout it came from (see the module's
    doc). Options (`Options`): model; loss "mnrl" (in-batch negatives and the data's hard negatives, `scale`,
    `similarity` cosine or dot, the `directions` of sentence-transformers' MultipleNegativesRankingLoss),
    "cached-mnrl" (the same loss at the memory of one micro-batch of `batch_tokens` tokens) or "matryoshka"
    (the same loss summed over `matryoshka_dims` with `matryoshka_weights`); batch_size rows per step; epochs
    or steps; lr, warmup (a fraction of the steps, < 1, or a number of steps), weight_decay, max_grad_norm;
    max_length; dtype "bf16" (bfloat16 autocast; weights and optimizer stay float32), "float32" or "auto" (bf16
    on a GPU that has it); gradient_checkpointing;
    save_steps and resume; eval (a (query, positive) pairs file or a BEIR directory: corpus.jsonl,
    queries.jsonl, qrels/test.tsv), evaluated before, at each checkpoint and after; seed; device; show_progress."""
    return _run(EmbedTask, data, output, options)


def train_rerank(data: str | os.PathLike, output: str | os.PathLike, **options: Any) -> Result:
    """Fine-tune a cross-encoder (a one-label sequence classifier) on labelled pairs (`reranking`): loss "bce"
    (batch_size pairs per step) or "listnet" (batch_size queries per step, each with its candidates); the other
    options as `train`'s (no eval)."""
    return _run(RerankTask, data, output, options)


def _run(task: type, data: str | os.PathLike, output: str | os.PathLike, options: dict[str, Any]) -> Result:
    run_options = Options(**{"loss": task.default_loss} | options)
    if run_options.eval is not None and not hasattr(task, "evaluate"):
        raise ValueError("--eval measures embedding models (retrieval); evaluate a reranker with gte eval retrieval "
                         "--rerank on its saved directory")  # fmt: skip
    world, device = join(run_options.device)
    try:
        return Run(task, Path(data), Path(output), run_options, world, device).go()
    finally:
        world.close()


class Run:
    """One training run: a task (model and data) with its optimizer, set up or restored from a checkpoint."""

    def __init__(self, task: type, data: Path, output: Path, options: Options, world: World, device: str | None):
        self.output, self.options, self.world = output, options, world
        self.source = hub.resolve(options.model)
        found = checkpoint.latest_checkpoint(output) if options.resume else None
        if options.resume and found is None:
            warnings.warn(f"--resume: no checkpoint in {output / checkpoint.CHECKPOINTS}; training from the start", stacklevel=4)
        torch.manual_seed(options.seed)
        self.task = task(found or self.source, data, options, device)
        if options.gradient_checkpointing:
            engine.checkpointing(self.task.model)
        self.autocast = _autocast(options.dtype, self.task.model.device)
        self.per_epoch = self.task.units // options.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{data} has {self.task.units} {self.task.unit}, fewer than one batch of {options.batch_size}: "
                             "lower --batch-size")  # fmt: skip
        if options.batch_size % world.size:
            raise ValueError(f"--batch-size {options.batch_size} must split evenly over the {world.size} processes: make it a "
                             f"multiple of {world.size}")  # fmt: skip
        self.total = options.steps or options.epochs * self.per_epoch
        self.settings = options.settings(str(data), world, self.task.max_length)
        self.parameters = self.task.parameters()
        self.optimizer, self.schedule = _optimizer(self.parameters, options, _warmup_steps(options.warmup, self.total),
                                                   self.total)  # fmt: skip
        self.start, self.losses, self.before, self.during = 0, [], None, {}
        if found is not None:
            self._restore(found)
        elif options.eval is not None and world.main:
            self.before = self.task.evaluate(options.eval)

    def go(self) -> Result:
        """Every remaining step, checkpoints on the way, then the model saved (and evaluated)."""
        options, started, tokens = self.options, time.perf_counter(), 0
        bar = _bar(self.total, self.start, self.world.main and progress_enabled(options.show_progress, self.total - self.start))
        for step in range(self.start, self.total):
            tokens += self.step(step)
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses[-1]:.4f}", lr=f"{self.schedule.get_last_lr()[0]:.2e}",
                            rows_s=f"{(step + 1 - self.start) * options.batch_size / elapsed:.1f}",
                            tokens_s=f"{tokens / elapsed:.0f}")  # fmt: skip
            if options.save_steps and (step + 1) % options.save_steps == 0 and step + 1 < self.total:
                self.save_checkpoint(step + 1)
        bar.close()
        seconds, done = time.perf_counter() - started, self.total - self.start
        result = Result(self.output, self.total, seconds, done * options.batch_size / seconds if done else 0.0,
                        tokens / seconds if done else 0.0, self.losses, self.before, self.during)  # fmt: skip
        if self.world.main:
            self.finish(result)
        self.world.barrier()
        return result

    def step(self, step: int) -> int:
        """One optimizer step; the tokens it computed (every rank's)."""
        batch = _step_rows(step, self.per_epoch, self.task.units, self.options.batch_size, self.options.seed, self.world)
        value, tokens = self.task.step(batch, self.world, self.autocast, self.options.batch_tokens)
        self.losses.append(self.world.mean(value))
        self.world.average(self.parameters)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.options.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return tokens * self.world.size

    def save_checkpoint(self, step: int) -> None:
        """The checkpoint of `step` (the model evaluated first, with eval)."""
        if self.world.main:
            if self.options.eval is not None:
                self.during[step] = self.task.evaluate(self.options.eval)
            state = {"settings": self.settings, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                     "rng": torch.get_rng_state(), "step": step, "losses": self.losses, "before": self.before,
                     "during": self.during}  # fmt: skip
            checkpoint.save_checkpoint(lambda folder: self.task.save(self.source, folder), self.output, step, state)
        self.world.barrier()

    def finish(self, result: Result) -> None:
        """The model saved in the source's layout (checkpoints removed: it supersedes them), evaluated, reported."""
        self.task.save(self.source, self.output)
        shutil.rmtree(self.output / checkpoint.CHECKPOINTS, ignore_errors=True)
        if self.options.eval is not None:
            result.after = self.task.evaluate(self.options.eval)
        report = {"settings": self.settings, **{k: v for k, v in asdict(result).items() if k != "output"}}
        (self.output / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    def _restore(self, found: Path) -> None:
        state = checkpoint.load_state(found)
        _check_settings(state["settings"], self.settings, found)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        self.start, self.losses, self.before, self.during = state["step"], state["losses"], state["before"], state["during"]


def _step_rows(step: int, per_epoch: int, rows: int, batch_size: int, seed: int, world: World) -> list[int]:
    """This rank's share of the rows of `step`."""
    order = epoch_order(rows, step // per_epoch, seed)
    start = (step % per_epoch) * batch_size
    share = batch_size // world.size
    return order[start + world.rank * share : start + (world.rank + 1) * share]


def _optimizer(parameters: list[torch.nn.Parameter], options: Options, warmup: int, total: int):
    """AdamW (no weight decay on biases and norms, as transformers' Trainer) under a linear warm-up and decay."""
    from transformers import get_linear_schedule_with_warmup

    decay = [p for p in parameters if p.ndim > 1]
    rest = [p for p in parameters if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=options.lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total)


def _warmup_steps(warmup: float, total: int) -> int:
    if warmup < 0:
        raise ValueError(f"warmup must be a fraction of the steps (< 1) or a number of steps, got {warmup}")
    return int(warmup * total + 0.5) if warmup < 1 else int(warmup)


def _autocast(dtype: str, device: torch.device):
    """bfloat16 autocast for "bf16", and for "auto" on a GPU with bfloat16 (on the CPU it bought 1.11x for 1.34x the
    memory: BENCHMARKS.md, train_bench.py); else none (float32)."""
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: train in one of auto, {', '.join(DTYPES)} (bf16: bfloat16 autocast)")
    return nullcontext() if DTYPES[dtype] is None else torch.autocast(device.type, dtype=DTYPES[dtype])


def _check_settings(saved: dict[str, Any], now: dict[str, Any], found: Path) -> None:
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{found} was saved by a run with other settings ({'; '.join(changed)}): resume with the "
                         "same ones, or train into a new output directory")  # fmt: skip


def _bar(total: int, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, file=sys.stderr, unit="step", dynamic_ncols=True)
