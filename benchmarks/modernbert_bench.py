"""ModernBERT on our engine against transformers' ModernBertModel, on CPU (issue #22): markdown on stdout.

    python benchmarks/modernbert_bench.py            # gte-modernbert-base's shape, random weights
    python benchmarks/modernbert_bench.py --tiny     # a tiny shape, in seconds (the smoke test)

1. Mixed corpus: transformers' ModernBertModel (SDPA) on length-sorted padded batches of 32, as
   sentence-transformers runs it, against ours on the same checkpoint converted as it loads (unpadded,
   token-budget batches); batches interleaved (suite.run_workload), each batch's best over the repeats.
   Lengths log-uniform between 8 and 512 tokens.
2. One long document: ours with the checkpoint's local layers (a query block sees only the keys within the
   window: O(L x window) on those layers) against the same weights with every layer global (O(L^2)), and
   transformers' ModernBertModel. Best of the repeats, one call each, alternating.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from bench import machine  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    local_attention: int
    long: int  # tokens of the long document

    def config(self) -> transformers.ModernBertConfig:
        return transformers.ModernBertConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            intermediate_size=self.intermediate, local_attention=self.local_attention, global_attn_every_n_layers=3,
            max_position_embeddings=8192, pad_token_id=0,
        )  # fmt: skip


SHAPES = {
    "base": Shape("gte-modernbert-base", 768, 22, 12, 1152, 50368, 128, 8192),
    "tiny": Shape("tiny", 64, 3, 4, 96, 1024, 16, 512),
}


def models(shape: Shape, tmp: str) -> tuple[torch.nn.Module, gte.NewModel, gte.NewModel]:
    """transformers' model (SDPA), ours converted as it loads, and ours with every layer global."""
    torch.manual_seed(0)
    theirs = transformers.ModernBertModel(shape.config())
    theirs.config._attn_implementation = "sdpa"
    theirs.save_pretrained(tmp)
    ours = gte.NewModel.from_pretrained(tmp).eval()
    config = ours.config.to_dict() | {"layer_types": ["full_attention"] * shape.layers}
    full = gte.NewModel(gte.NewConfig.from_dict(config)).eval()
    full.load_state_dict(ours.state_dict())
    return theirs.eval(), ours, full


def mixed_section(shape: Shape, theirs: torch.nn.Module, ours: gte.NewModel, docs: int, repeats: int, budget: int) -> str:
    workload = suite.mixed(docs, 8, 512, shape.vocab)
    workload = suite.Workload(workload.name, [[t or 1 for t in d] for d in workload.docs], workload.description)

    @torch.inference_mode()
    def st_embed(batch: suite.Docs) -> torch.Tensor:
        ids, mask = suite.padded_batch(batch, torch.device("cpu"))
        return theirs(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    contenders = [suite.Contender(suite.ST, suite.sorted_by_length(32), st_embed, padded=True), suite.ours(ours, budget)]
    suite.log(f"{shape.name}: {workload.description}, {workload.tokens} tokens")
    results = suite.run_workload(contenders, workload, repeats)
    title = (f"### {shape.name} shape (hidden {shape.hidden}, {shape.layers} layers, window {shape.local_attention}), "
             f"mixed: {workload.description} ({workload.tokens:,} tokens)")  # fmt: skip
    return "\n\n".join([title, suite.versus_table(results, workload)])


def long_section(shape: Shape, theirs: torch.nn.Module, ours: gte.NewModel, full: gte.NewModel, repeats: int) -> str:
    ids = torch.randint(1, shape.vocab, (1, shape.long), generator=torch.Generator().manual_seed(2))
    embedders = {name: gte.Embedder(model, show_progress=False) for name, model in (("ours, local layers", ours),
                                                                                    ("ours, every layer global", full))}  # fmt: skip
    calls = {name: (lambda e=e: e.encode_tokens(ids.tolist(), batch_tokens=shape.long, normalize=False))
             for name, e in embedders.items()}  # fmt: skip
    calls["transformers ModernBertModel (SDPA)"] = lambda: theirs(input_ids=ids).last_hidden_state[:, 0]
    best = dict.fromkeys(calls, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
    local = best["ours, local layers"]
    lines = ["| contender | seconds | vs ours with local layers |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.2f} | {seconds / local:.2f}x |" for name, seconds in best.items()]
    return "\n\n".join([f"### One document of {shape.long} tokens, best of {repeats}", "\n".join(lines)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and workload: a smoke run")
    parser.add_argument("--docs", type=int, default=256, help="documents in the mixed corpus (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="passes, best kept (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=int, default=gte.embed.CPU_BATCH_TOKENS, help="ours: token budget")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=gte.embed.TruncationWarning)
    transformers.logging.set_verbosity_error()
    shape = SHAPES["tiny" if args.tiny else "base"]
    docs, repeats = (24, 1) if args.tiny else (args.docs, args.repeats)
    start = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        theirs, ours, full = models(shape, tmp)
        print(f"\n{mixed_section(shape, theirs, ours, docs, repeats, args.batch_tokens)}", flush=True)
        print(f"\n{long_section(shape, theirs, ours, full, repeats)}", flush=True)
    print(f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
