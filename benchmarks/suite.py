"""The benchmark suite's pieces, shared by bench.py (CPU) and gpu_bench.py (CUDA).

Models in the official shapes with random weights, the workloads, the contenders (gte padded eager,
sentence-transformers-style, ours), FLOPs and the GEMM ceiling, and batch-by-batch interleaved timing.
Every contender embeds the same documents with the same weights and returns each document's
first-token (CLS) hidden state, so the suite also checks that they agree.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch
import torch.nn.functional as F

from gte import NewConfig, NewModel
from gte.convert import native_config, native_state_dict
from gte.embed import cut_batches
from gte.prepack import prepack

Docs = list[list[int]]  # token ids per document
ORIGINAL, ST = "gte padded eager", "sentence-transformers-style"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 30528
    rope_theta: float = 500000.0
    type_vocab: int = 0

    def config(self) -> NewConfig:
        return NewConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=8192,
            rope_theta=self.rope_theta,
            rope_scaling={"type": "ntk", "factor": 2.0},
            type_vocab_size=self.type_vocab,
            architectures=["NewModel"],
        )

    def gemms(self) -> list[tuple[int, int]]:
        """(in, out) of every projection in one layer: qkv, o, up_gate, down."""
        h, i = self.hidden, self.intermediate
        return [(h, 3 * h), (h, h), (h, 2 * i), (i, h)]

    def linear_flops_per_token(self) -> int:
        return 2 * self.layers * sum(k * n for k, n in self.gemms())

    def attention_flops(self, length: int) -> int:
        """QK^T and PV of one sequence, every layer."""
        return 4 * self.layers * length * length * self.hidden

    def flops(self, lengths: Sequence[int]) -> int:
        return sum(n * self.linear_flops_per_token() + self.attention_flops(n) for n in lengths)


SHAPES = {
    "base": Shape("base", 768, 12, 12, 3072),  # gte-base-en-v1.5
    "large": Shape("large", 1024, 24, 16, 4096, rope_theta=160000.0),  # gte-large-en-v1.5
    "tiny": Shape("tiny", 64, 2, 4, 128, vocab=1000),  # smoke test only
}


def build_model(shape: Shape, seed: int = 0) -> NewModel:
    """Random weights, the same for a given seed."""
    torch.manual_seed(seed)
    return NewModel(shape.config()).eval()


def build_native(model: NewModel, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' own `GteModel` holding the same weights (what sentence-transformers would load)."""
    from transformers import GteConfig, GteModel

    config = GteConfig(**native_config(model.config))
    config._attn_implementation = "sdpa"
    native = GteModel(config)
    native.load_state_dict(native_state_dict(model.state_dict(), model.config))
    return native.to(device, dtype).eval()


# ------------------------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    name: str
    docs: Docs
    description: str

    @property
    def lengths(self) -> list[int]:
        return [len(d) for d in self.docs]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def random_docs(lengths: Sequence[int], vocab: int, generator: torch.Generator) -> Docs:
    return [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]


def mixed(n: int, low: int, high: int, vocab: int, seed: int = 0) -> Workload:
    """Lengths log-uniform in [low, high] (fixed seed): how real corpora look."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.empty(n).uniform_(math.log(low), math.log(high), generator=g).exp().round().long().tolist()
    return Workload("mixed", random_docs(lengths, vocab, g), f"{n} docs, log-uniform {low}..{high} tokens")


def short(n: int, low: int, high: int, vocab: int, seed: int = 1) -> Workload:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g).tolist()
    return Workload("short", random_docs(lengths, vocab, g), f"{n} docs, uniform {low}..{high} tokens")


def long(length: int, vocab: int, seed: int = 2) -> Workload:
    g = torch.Generator().manual_seed(seed)
    return Workload(f"long-{length}", random_docs([length], vocab, g), f"one doc of {length} tokens")


# ------------------------------------------------------------------------------------ contenders
@dataclass
class Contender:
    """How one implementation embeds a workload: its batches (doc indices, in run order) and a function
    that embeds one batch of token lists -> [B, H] first-token hidden states."""

    name: str
    plan: Callable[[list[int]], list[list[int]]]  # lengths -> batches
    embed: Callable[[Docs], torch.Tensor]
    padded: bool  # batches run as padded [B, max_len] grids
    sample: int = 1  # time only every n-th batch, scaling the time by computed tokens (for alike batches)
    model: torch.nn.Module | None = None  # the model it runs, where one is ours to instrument


def padded_batch(docs: Docs, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask [B, max_len] (pad id 0)."""
    width = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    for row, d in enumerate(docs):
        ids[row, : len(d)] = torch.tensor(d)
    mask = (torch.arange(width) < torch.tensor([len(d) for d in docs])[:, None]).long()
    return ids.to(device), mask.to(device)


def in_order(size: int) -> Callable[[list[int]], list[list[int]]]:
    return lambda lengths: [list(range(i, min(i + size, len(lengths)))) for i in range(0, len(lengths), size)]


def sorted_by_length(size: int) -> Callable[[list[int]], list[list[int]]]:
    def plan(lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[i : i + size] for i in range(0, len(order), size)]

    return plan


@contextlib.contextmanager
def attention_backend(model: NewModel, name: str) -> Iterator[None]:
    """Run `model` with one attention backend for a while (contenders share one model's weights)."""
    before = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = before


def original_style(model: NewModel, batch_size: int = 32, sample: int = 1) -> Contender:
    """The original's way: padded batches in input order, eager attention, no unpadding."""

    @torch.inference_mode()
    def embed(docs: Docs) -> torch.Tensor:
        ids, mask = padded_batch(docs, model.device)
        with attention_backend(model, "eager"):
            return model(ids, attention_mask=mask, unpad_inputs=False).last_hidden_state[:, 0]

    return Contender(ORIGINAL, in_order(batch_size), embed, padded=True, sample=sample)


def st_style(native: torch.nn.Module, batch_size: int = 32) -> Contender:
    """sentence-transformers' way: transformers' native GteModel (SDPA), length-sorted padded batches."""

    @torch.inference_mode()
    def embed(docs: Docs) -> torch.Tensor:
        ids, mask = padded_batch(docs, native.device)
        return native(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    return Contender(ST, sorted_by_length(batch_size), embed, padded=True)


def ours(
    model: NewModel, batch_tokens: int, name: str = "ours", backend: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Contender:  # fmt: skip
    """`gte.Embedder.encode_tokens`, called once per batch of the Embedder's own plan (`cut_batches`):
    the same batches as one call over the whole workload, split so contenders can interleave.
    A `dtype` converts `model` in place (the Embedder's dtype option; "int8" quantizes its projections, and the
    Embedder's fidelity probe, without a tokenizer, runs on fixed token ids). A float32 or bfloat16 CPU model is
    copied and packed as gte packs the models it loads (src/gte/prepack.py), so the contenders that share `model`
    keep nn.Linear; elsewhere nothing is packed and `model` is used as it is."""
    if dtype in (None, torch.bfloat16) and model.device.type == "cpu":
        model = copy.deepcopy(model).to(dtype or model.dtype)
        prepack(model)
    embedder = gte.Embedder(model, dtype=dtype)

    def embed(docs: Docs) -> torch.Tensor:
        with attention_backend(embedder.model, backend) if backend else contextlib.nullcontext():
            return torch.from_numpy(embedder.encode_tokens(docs, batch_tokens=batch_tokens, normalize=False))

    return Contender(name, lambda lengths: cut_batches(lengths, batch_tokens), embed, padded=False, model=embedder.model)


# ------------------------------------------------------------------------------------ timing
@dataclass
class Result:
    contender: str
    seconds: float  # best-of-repeats time per batch, summed (scaled up when sampled)
    embeddings: torch.Tensor  # [n, H] float32, input order; NaN rows for documents a sample skipped
    computed_tokens: int  # tokens the GEMMs ran on (padding included), whole workload


@dataclass
class _Step:
    contender: int
    batch: list[int]
    progress: float  # where this batch sits in its contender's work, 0..1


def interleave(plans: list[list[list[int]]], lengths: list[int]) -> list[_Step]:
    """All contenders' batches in one sequence, each placed at the middle of its share of its contender's
    work (in tokens), so every contender moves through the workload at the same pace."""
    steps = []
    for c, batches in enumerate(plans):
        sizes = [sum(lengths[i] for i in b) for b in batches]
        total, done = sum(sizes), 0
        for batch, size in zip(batches, sizes):
            steps.append(_Step(c, batch, (done + size / 2) / total))
            done += size
    return sorted(steps, key=lambda s: s.progress)


def run_workload(
    contenders: list[Contender],
    workload: Workload,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
    probes: Sequence[Callable[[], object]] = (),
    probe_every: int = 4,
) -> list[Result]:
    """Time every contender on the workload, batch by batch interleaved; each batch's time is its best over
    `repeats` passes (a warm-up batch per contender runs first). `probes` run every `probe_every` batches."""
    lengths = workload.lengths
    plans = [c.plan(lengths) for c in contenders]
    for c, plan in zip(contenders, plans):
        c.embed([workload.docs[i] for i in plan[-1]])  # warm-up on the smallest batch
    steps = interleave([plan[:: c.sample] for c, plan in zip(contenders, plans)], lengths)
    best = [math.inf] * len(steps)
    outputs: list[torch.Tensor | None] = [None] * len(steps)
    for _ in range(repeats):
        for s, step in enumerate(steps):
            if s % probe_every == 0:
                for probe in probes:
                    probe()
            docs = [workload.docs[i] for i in step.batch]
            sync()
            start = time.perf_counter()
            outputs[s] = contenders[step.contender].embed(docs)
            sync()
            best[s] = min(best[s], time.perf_counter() - start)
    results = []
    for c, (contender, plan) in enumerate(zip(contenders, plans)):
        mine = [s for s, step in enumerate(steps) if step.contender == c]
        embeddings = torch.full((len(lengths), outputs[mine[0]].shape[-1]), math.nan)
        for s in mine:
            embeddings[steps[s].batch] = outputs[s].float().cpu()
        computed = sum(computed_tokens(b, lengths, contender.padded) for b in plan)
        timed = sum(computed_tokens(steps[s].batch, lengths, contender.padded) for s in mine)
        results.append(Result(contender.name, sum(best[s] for s in mine) * computed / timed, embeddings, computed))
    return results


def computed_tokens(batch: list[int], lengths: list[int], padded: bool) -> int:
    return len(batch) * max(lengths[i] for i in batch) if padded else sum(lengths[i] for i in batch)


def versus_table(results: list[Result], workload: Workload) -> str:
    """Markdown rows of each contender against the first (the sentence-transformers-style baseline)."""
    lines = ["| contender | time s | real tokens/s | padding computed | vs sentence-transformers-style | min cosine |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        cosine = 1.0 if r is results[0] else min_cosine(r.embeddings, results[0].embeddings)
        lines.append(f"| {r.contender} | {r.seconds:.3g} | {workload.tokens / r.seconds:,.0f} | "
                     f"{r.computed_tokens / workload.tokens - 1:.0%} | {results[0].seconds / r.seconds:.2f}x | {cosine:.6f} |")  # fmt: skip
    return "\n".join(lines)


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest cosine similarity between matching rows, over the rows both have."""
    both = ~(a.isnan().any(-1) | b.isnan().any(-1))
    return float(F.cosine_similarity(a[both].double(), b[both].double(), dim=-1).min())


# ------------------------------------------------------------------------------------ ceiling
class GemmRate:
    """The best matmul FLOP/s seen on one layer's projections ([tokens, in] x [in, out], no bias) at a shape.

    Sampled now and then during a run (between batches), so that a burst of load from elsewhere on the
    machine does not set the ceiling.
    """

    def __init__(self, shape: Shape, tokens: int, device: torch.device, dtype: torch.dtype, sync: Callable[[], None]):
        g = torch.Generator(device=device).manual_seed(0)
        self.xs = [torch.randn(tokens, k, generator=g, device=device, dtype=dtype) for k, _ in shape.gemms()]
        self.ws = [torch.randn(n, k, generator=g, device=device, dtype=dtype) for k, n in shape.gemms()]
        self.flops = 2 * tokens * sum(k * n for k, n in shape.gemms())
        self.sync, self.tokens, self.dtype = sync, tokens, dtype
        self.best = 0.0
        self.sample(3)  # the first pass warms up

    def sample(self, passes: int = 1) -> float:
        for _ in range(passes):
            self.sync()
            start = time.perf_counter()
            for x, w in zip(self.xs, self.ws):
                F.linear(x, w)
            self.sync()
            self.best = max(self.best, self.flops / (time.perf_counter() - start))
        return self.best


@dataclass
class Row:
    """One line of a throughput table."""

    contender: str
    seconds: float
    tokens_per_s: float
    padding: float | None  # computed / real tokens - 1
    vs_original: float | None
    vs_st: float | None
    ceiling_fraction: float
    cosine: float | None  # min over docs, vs the first contender


def rows(results: list[Result], workload: Workload, flops: int, gemm_rates: dict[str, float]) -> list[Row]:
    """A row per result (ratios against gte padded eager and sentence-transformers-style when present), then a
    GEMM ceiling per rate: the workload's FLOPs at that matmul FLOP/s. The "of GEMM ceiling" column is
    against the first rate."""
    speed = {r.contender: workload.tokens / r.seconds for r in results}
    ceilings = {label: workload.tokens / (flops / rate) for label, rate in gemm_rates.items()}
    ceiling = next(iter(ceilings.values()))
    original, st = speed.get(ORIGINAL), speed.get(ST)
    out = [
        Row(
            r.contender,
            r.seconds,
            speed[r.contender],
            r.computed_tokens / workload.tokens - 1,
            speed[r.contender] / original if original else None,
            speed[r.contender] / st if st else None,
            speed[r.contender] / ceiling,
            None if r is results[0] else min_cosine(r.embeddings, results[0].embeddings),
        )
        for r in results
    ]
    for label, speed_limit in ceilings.items():
        out.append(Row(f"GEMM ceiling ({label})", workload.tokens / speed_limit, speed_limit, None,
                       speed_limit / original if original else None, speed_limit / st if st else None,
                       speed_limit / ceiling, None))  # fmt: skip
    return out


def throughput_table(table: list[Row]) -> str:
    ratio = lambda x: "" if x is None else f"{x:.2f}x"  # noqa: E731
    lines = [
        f"| contender | time s | real tokens/s | padding | vs padded eager | vs ST | of GEMM ceiling | min cosine vs {table[0].contender} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        padding = "" if r.padding is None else f"{r.padding:.0%}"
        cosine = "" if r.cosine is None else f"{r.cosine:.6f}"
        lines.append(
            f"| {r.contender} | {r.seconds:.3g} | {r.tokens_per_s:,.0f} | {padding} | {ratio(r.vs_original)} | "
            f"{ratio(r.vs_st)} | {r.ceiling_fraction:.0%} | {cosine} |"
        )
    return "\n".join(lines)


def throughput_section(
    shape: Shape,
    workload: Workload,
    contenders: list[Contender],
    repeats: int,
    rates: dict[str, GemmRate],
    sync: Callable[[], None] = lambda: None,
) -> str:
    """Run one workload (sampling the GEMM rates between its batches) and format its table (markdown)."""
    log(f"{shape.name} {workload.name}: {workload.description}, {workload.tokens} tokens")
    results = run_workload(contenders, workload, repeats, sync, probes=[r.sample for r in rates.values()])
    best = {label: rate.best for label, rate in rates.items()}
    table = rows(results, workload, shape.flops(workload.lengths), best)
    notes = [
        f"{c.name}: one in {c.sample} of its batches timed (they are alike: input order, each padded to about the "
        "longest length), its time scaled up by computed tokens; its cosine column covers the documents it ran."
        for c in contenders
        if c.sample > 1
    ]
    title = f"### {shape.name}, {workload.name}: {workload.description} ({workload.tokens:,} real tokens)"
    return "\n\n".join([title, throughput_table(table), *notes])
