"""`gte.train`: contrastive fine-tuning of an embedding model on the packed, unpadded path.

    result = gte.train("pairs.jsonl", "my-model", model="Alibaba-NLP/gte-base-en-v1.5", loss="cached-mnrl",
                       batch_size=256, epochs=1, eval="my-beir-set/")

Each step takes `batch_size` rows (anchor, positive, negatives) in an order fixed by the seed and the epoch,
embeds every text with the checkpoint's prompts (anchors "query", the rest "document"), computes the loss
(`losses`), and takes one AdamW step under a linear warm-up / decay schedule with gradients clipped at
`max_grad_norm` (transformers' Trainer defaults). Checkpoints every `save_steps` hold everything --resume
needs to end at the weights an uninterrupted run ends at.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gte_defaults import DEFAULT_MODEL, TRAIN_BATCH_SIZE, TRAIN_LOSSES, TRAIN_LR, TRAIN_SCALE, TRAIN_WARMUP

from .. import hub
from ..embed import Embedder, progress_enabled
from . import checkpoint, forward
from .data import Rows, Tokens, epoch_order, read_rows
from .distributed import World, join
from .losses import Loss, Matryoshka, RankingLoss

DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
REPORT = "training.json"
EVAL_METRICS = (("ndcg", 10), ("mrr", 10), ("recall", 10), ("recall", 100))


@dataclass(frozen=True)
class Options:
    """A run's choices (see `train`); all but the operational ones at the end must match for --resume."""

    model: str = DEFAULT_MODEL
    loss: str = "mnrl"
    batch_size: int = TRAIN_BATCH_SIZE
    epochs: int = 1
    steps: int | None = None
    lr: float = TRAIN_LR
    warmup: float = TRAIN_WARMUP
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None
    dtype: str = "float32"
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
    pairs_per_second: float
    tokens_per_second: float
    losses: list[float] = field(default_factory=list)  # per step
    before: dict[str, float] | None = None  # retrieval metrics ("ndcg@10": ...) before training, with eval
    after: dict[str, float] | None = None

    def table(self) -> str:
        """before / after as a markdown table (with an evaluation set)."""
        if self.before is None or self.after is None:
            return ""
        lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
        for name, value in self.before.items():
            lines.append(f"| {name} | {value:.4f} | {self.after[name]:.4f} | {self.after[name] - value:+.4f} |")
        return "\n".join(lines)


def train(data: str | os.PathLike, output: str | os.PathLike, **options: Any) -> Result:
    """Fine-tune a model on `data` and save it to `output` in the layout it came from (see the module's doc).
    Options (`Options`): model; loss "mnrl" (in-batch negatives and the data's hard negatives, `scale`,
    `similarity` cosine or dot, the `directions` of sentence-transformers' MultipleNegativesRankingLoss),
    "cached-mnrl" (the same loss at the memory of one micro-batch of `batch_tokens` tokens) or "matryoshka"
    (the same loss summed over `matryoshka_dims` with `matryoshka_weights`); batch_size rows per step; epochs
    or steps; lr, warmup (a fraction of the steps, < 1, or a number of steps), weight_decay, max_grad_norm;
    max_length; dtype "bf16" (bfloat16 autocast; weights and optimizer stay float32); gradient_checkpointing;
    save_steps and resume; eval (a (query, positive) pairs file or a BEIR directory: corpus.jsonl,
    queries.jsonl, qrels/test.tsv), evaluated before and after; seed; device; show_progress."""
    run_options = Options(**options)
    world, device = join(run_options.device)
    try:
        return Run(Path(data), Path(output), run_options, world, device).go()
    finally:
        world.close()


class Run:
    """One training run: the model, its data and optimizer, set up (or restored from a checkpoint) to take steps."""

    def __init__(self, data: Path, output: Path, options: Options, world: World, device: str | None):
        self.output, self.options, self.world = output, options, world
        self.source = hub.resolve(options.model)
        found = checkpoint.latest_checkpoint(output) if options.resume else None
        if options.resume and found is None:
            warnings.warn(f"--resume: no checkpoint in {output / checkpoint.CHECKPOINTS}; training from the start", stacklevel=3)
        torch.manual_seed(options.seed)
        self.embedder = Embedder(found or self.source, device=device, dtype="float32", max_length=options.max_length,
                                 trainable=True, show_progress=False)  # fmt: skip
        if options.gradient_checkpointing:
            self.embedder.model.gradient_checkpointing_enable()
        self.rows = rows = read_rows(data)
        self.loss = make_loss(options.loss, options.scale, options.similarity, options.directions,
                              options.matryoshka_dims, options.matryoshka_weights, self.embedder.dimension)  # fmt: skip
        self.autocast = _autocast(options.dtype, self.embedder.device)
        self.per_epoch = len(rows) // options.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{data} has {len(rows)} rows, fewer than one batch of {options.batch_size}: lower --batch-size")
        if options.batch_size % world.size:
            raise ValueError(f"--batch-size {options.batch_size} must split evenly over the {world.size} processes")
        self.total = options.steps or options.epochs * self.per_epoch
        self.settings = options.settings(str(data), world, self.embedder.max_length)
        _, self.skips, self.tokens = tokenize(self.embedder, rows)
        self.parameters = [*self.embedder.model.parameters(), *self.embedder.head.parameters()]
        self.optimizer, self.schedule = _optimizer(self.embedder, options, _warmup_steps(options.warmup, self.total), self.total)
        self.start, self.losses, self.before = 0, [], None
        if found is not None:
            self._restore(found)
        elif options.eval is not None and world.main:
            self.before = evaluate(self.embedder, options.eval)

    def go(self) -> Result:
        """Every remaining step, checkpoints on the way, then the model saved (and evaluated)."""
        options, started, tokens = self.options, time.perf_counter(), 0
        bar = _bar(self.total, self.start, self.world.main and progress_enabled(options.show_progress, self.total - self.start))
        for step in range(self.start, self.total):
            tokens += self.step(step)
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses[-1]:.4f}", lr=f"{self.schedule.get_last_lr()[0]:.2e}",
                            pairs_s=f"{(step + 1 - self.start) * options.batch_size / elapsed:.1f}",
                            tokens_s=f"{tokens / elapsed:.0f}")  # fmt: skip
            if options.save_steps and (step + 1) % options.save_steps == 0 and step + 1 < self.total:
                self.save_checkpoint(step + 1)
        bar.close()
        seconds, done = time.perf_counter() - started, self.total - self.start
        result = Result(self.output, self.total, seconds, done * options.batch_size / seconds if done else 0.0,
                        tokens / seconds if done else 0.0, self.losses, self.before)  # fmt: skip
        if self.world.main:
            self.finish(result)
        self.world.barrier()
        return result

    def step(self, step: int) -> int:
        """One optimizer step; the tokens it embedded (every rank's)."""
        batch = _step_rows(step, self.per_epoch, len(self.rows), self.options.batch_size, self.options.seed, self.world)
        columns = [column.take(batch) for column in self.tokens]
        value = forward.step(self.embedder, self.loss, columns, self.skips, self.options.batch_tokens or self.embedder.batch_tokens,
                             cached=self.options.loss == "cached-mnrl", gather=self.world.gather, autocast=self.autocast)  # fmt: skip
        self.losses.append(self.world.mean(value))
        self.world.average(self.parameters)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.options.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(len(r) for column in columns for r in column) * self.world.size

    def save_checkpoint(self, step: int) -> None:
        if self.world.main:
            state = {"settings": self.settings, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                     "rng": torch.get_rng_state(), "step": step, "losses": self.losses, "before": self.before}  # fmt: skip
            checkpoint.save_checkpoint(self.embedder, self.source, self.output, step, state)
        self.world.barrier()

    def finish(self, result: Result) -> None:
        """The model saved in the source's layout (checkpoints removed: it supersedes them), evaluated, reported."""
        checkpoint.save_model(self.embedder, self.source, self.output)
        shutil.rmtree(self.output / checkpoint.CHECKPOINTS, ignore_errors=True)
        if self.options.eval is not None:
            result.after = evaluate(self.embedder, self.options.eval)
        report = {"settings": self.settings, **{k: v for k, v in asdict(result).items() if k != "output"}}
        (self.output / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    def _restore(self, found: Path) -> None:
        state = checkpoint.load_state(found)
        _check_settings(state["settings"], self.settings, found)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        self.start, self.losses, self.before = state["step"], state["losses"], state["before"]


def make_loss(name: str, scale: float, similarity: str, directions: tuple[str, ...], dims: tuple[int, ...],
              weights: tuple[float, ...] | None, dimension: int) -> Loss:  # fmt: skip
    if name not in TRAIN_LOSSES:
        raise ValueError(f"loss {name!r}: use one of {', '.join(TRAIN_LOSSES)}")
    ranking = RankingLoss(scale, similarity, tuple(directions))
    if name != "matryoshka":
        if dims:
            raise ValueError("Matryoshka dimensions are for loss 'matryoshka'")
        return ranking
    if not dims:
        raise ValueError(f"loss 'matryoshka' needs its dimensions (e.g. {dimension},{dimension // 2},{dimension // 4})")
    matryoshka = Matryoshka(ranking, tuple(dims), tuple(_weights(dims, weights)))
    matryoshka.check(dimension)
    return matryoshka


def tokenize(embedder: Embedder, rows: Rows) -> tuple[list[str], list[int], list[Tokens]]:
    """(prompt, tokens pooling skips, token ids) per column: anchors with the "query" prompt, the others with the
    "document" prompt (sentence-transformers' encode_query / encode_document rule)."""
    document = next(name for name in ("document", "passage", "corpus") if name in embedder.prompts)
    prompts = [embedder.resolve_prompt("query")] + [embedder.resolve_prompt(document)] * (len(rows.columns) - 1)
    tokens = [Tokens.pack(embedder.tokenize(texts, prompt=prompt)) for texts, prompt in zip(rows.columns, prompts)]
    return prompts, [embedder.prompt_length(p) for p in prompts], tokens


def evaluate(embedder: Embedder, location: str | os.PathLike) -> dict[str, float]:
    """Retrieval metrics of the model as it is now (gte eval), in eval mode; train mode after."""
    from ..evaluation import evaluate_retrieval

    embedder.model.eval()
    embedder.head.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="gte-train-eval-") as cache:
            report = evaluate_retrieval(**eval_files(location), embedder=embedder, cache_dir=cache, show_progress=False)
    finally:
        embedder.model.train()
        embedder.head.train()
    scores = report.variants[0].scores
    return {f"{metric}@{k}": scores[metric][k] for metric, k in EVAL_METRICS if k in scores[metric]}


def eval_files(location: str | os.PathLike) -> dict[str, Any]:
    """evaluate_retrieval's inputs: a BEIR directory's three files, or one pairs file."""
    path = Path(location)
    if not path.is_dir():
        return {"pairs": path}
    qrels = next((q for q in (path / "qrels" / "test.tsv", path / "qrels" / "dev.tsv", path / "qrels.tsv") if q.is_file()),
                 path / "qrels" / "test.tsv")  # fmt: skip
    return {"corpus": path / "corpus.jsonl", "queries": path / "queries.jsonl", "qrels": qrels}


def _step_rows(step: int, per_epoch: int, rows: int, batch_size: int, seed: int, world: World) -> list[int]:
    """This rank's share of the rows of `step`."""
    order = epoch_order(rows, step // per_epoch, seed)
    start = (step % per_epoch) * batch_size
    share = batch_size // world.size
    return order[start + world.rank * share : start + (world.rank + 1) * share]


def _optimizer(embedder: Embedder, options: Options, warmup: int, total: int):
    """AdamW (no weight decay on biases and norms, as transformers' Trainer) under a linear warm-up and decay."""
    from transformers import get_linear_schedule_with_warmup

    named = [*embedder.model.named_parameters(), *embedder.head.named_parameters()]
    decay = [p for n, p in named if p.ndim > 1]
    rest = [p for n, p in named if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=options.lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total)


def _warmup_steps(warmup: float, total: int) -> int:
    if warmup < 0:
        raise ValueError(f"warmup must be a fraction of the steps (< 1) or a number of steps, got {warmup}")
    return int(warmup * total + 0.5) if warmup < 1 else int(warmup)


def _weights(dims: tuple[int, ...], weights: tuple[float, ...] | None) -> tuple[float, ...]:
    return tuple(weights) if weights is not None else (1.0,) * len(dims)


def _autocast(dtype: str, device: torch.device):
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: train in one of {', '.join(DTYPES)} (bf16: bfloat16 autocast)")
    return nullcontext() if DTYPES[dtype] is None else torch.autocast(device.type, dtype=DTYPES[dtype])


def _check_settings(saved: dict[str, Any], now: dict[str, Any], found: Path) -> None:
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{found} was saved by a run with other settings ({'; '.join(changed)}): resume with the "
                         "same ones, or train into a new output directory")  # fmt: skip


def _bar(total: int, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, file=sys.stderr, unit="step", dynamic_ncols=True)
