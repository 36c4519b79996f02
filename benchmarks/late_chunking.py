"""What late chunking buys (issue #21): retrieval of passages that need their document's context, naive chunks
against late chunks, scored with gte's trec_eval metrics.

    python benchmarks/late_chunking.py              # the embedded default model
    python benchmarks/late_chunking.py --tiny       # fewer documents: a smoke run
    python benchmarks/late_chunking.py --base-shape # the gte-base shape, random weights (its numbers are noise: see below)
    python benchmarks/late_chunking.py --model Alibaba-NLP/gte-base-en-v1.5   # the real one, where it can be downloaded

The set is generated: one document per animal, its name and kind only in the first sentence ("Bruno is a bear
from Alaska."), its facts in later ones that name it by pronoun only ("It eats salmon. It sleeps in a cave.").
Every document is cut into chunks of `--chunk-tokens` of the model's tokens; a query asks one fact about one animal
by name and kind ("what does the bear Bruno eat?"), and the chunks that overlap that fact's sentence are relevant.
A naive chunk ("It eats salmon.") cannot tell whose fact it is; a late chunk saw the whole document. Naive chunks
are pooled as the checkpoint pools, and with CLS pooling too (gte-v1.5 pools CLS; late chunking is defined with
mean pooling). `--base-shape` runs a gte-base-en-v1.5-shaped checkpoint with random weights (and the default
model's tokenizer), which is all that can be run here without a download: it measures nothing about late
chunking (a random encoder ranks at chance either way), only that the path runs at that shape; the issue asks for
the row whatever it says.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
from pathlib import Path

import gte  # first: it sets the OpenMP wait policy that torch reads as it loads, as gte's users get it
import torch

from gte.evaluation import metrics
from gte_defaults import DEFAULT_MODEL

NAMES = ["Bruno", "Mila", "Taro", "Ines", "Kofi", "Lena", "Ravi", "Zoe", "Omar", "Hana", "Pablo", "Ebba", "Sven",
         "Aiko", "Nuno", "Farah", "Igor", "Lupe", "Chen", "Dara"]  # fmt: skip
KINDS = ["bear", "otter", "macaque", "flamingo", "elephant", "lynx", "tiger", "koala", "camel", "panda"]
PLACES = ["Alaska", "Chile", "Japan", "Ghana", "Finland", "India", "Peru", "Norway", "Morocco", "China"]
FOODS = ["salmon", "clams", "fruit", "shrimp", "grass", "hares", "deer", "leaves", "shrubs", "bamboo"]
HOMES = ["a cave", "a burrow", "a hollow tree", "a nest", "the river bank", "tall grass", "a rock shelter"]
FACTS = {"eat": ("It eats {}.", FOODS, "what does the {kind} {name} eat?"),
         "sleep": ("It sleeps in {}.", HOMES, "where does the {kind} {name} sleep?")}  # fmt: skip


def documents(count: int, seed: int = 0) -> tuple[list[str], list[dict[str, tuple[int, int]]], list[tuple[str, str]]]:
    """(texts, each document's fact -> character span of its sentence, each document's (name, kind))."""
    rng = random.Random(seed)
    texts, spans, who = [], [], []
    for i in range(count):
        name, kind = NAMES[i % len(NAMES)], KINDS[(i * 7 + i // len(NAMES)) % len(KINDS)]
        text = f"{name} is a {kind} from {rng.choice(PLACES)}."
        facts = {}
        for fact in rng.sample(list(FACTS), len(FACTS)):
            if rng.random() < 0.5:
                text += f" It is {rng.randint(2, 30)} years old."
            sentence = FACTS[fact][0].format(rng.choice(FACTS[fact][1]))
            facts[fact] = (len(text) + 1, len(text) + 1 + len(sentence))
            text += " " + sentence
        texts.append(text)
        spans.append(facts)
        who.append((name, kind))
    return texts, spans, who


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few documents: a smoke run")
    parser.add_argument("--chunk-tokens", type=int, default=8, help="tokens per chunk (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a checkpoint (default: %(default)s, embedded)")
    parser.add_argument("--base-shape", action="store_true", help="a gte-base-shaped model with random weights")
    args = parser.parse_args(argv)
    if not args.base_shape:
        return measure(args.model, args)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from corpus_bench import base_shape_model

    with tempfile.TemporaryDirectory() as tmp:
        measure(base_shape_model(Path(tmp)), args)


def measure(model: str, args: argparse.Namespace) -> None:
    count = 10 if args.tiny else 200
    texts, spans, who = documents(count)
    embedder = gte.Embedder(model, pooling="mean", show_progress=False)
    cls = gte.Embedder(model, pooling="cls", show_progress=False)
    chunks, late = embedder.encode_chunks(texts, chunk_tokens=args.chunk_tokens, late=True)
    _, naive = embedder.encode_chunks(texts, chunk_tokens=args.chunk_tokens)
    _, naive_cls = cls.encode_chunks(texts, chunk_tokens=args.chunk_tokens)
    queries, qrels = [], {}
    for document, ((name, kind), facts) in enumerate(zip(who, spans)):
        for fact, (start, end) in facts.items():
            relevant = {f"c{j}": 1 for j, c in enumerate(chunks) if c.document == document and c.start < end and start < c.end}
            qrels[f"q{len(queries)}"] = relevant
            queries.append(FACTS[fact][2].format(kind=kind, name=name))
    q_mean, q_cls = embedder.encode(queries), cls.encode(queries)
    rows = [("naive, mean pooling", naive, q_mean), ("naive, CLS pooling", naive_cls, q_cls),
            ("late chunking (mean of the document's token states)", late, q_mean)]  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; model {embedder.model_name}; "
          f"{count} documents, {len(chunks)} chunks of {args.chunk_tokens} tokens, {len(queries)} queries\n")  # fmt: skip
    print("| chunks | nDCG@10 | MRR@10 |\n|---|---:|---:|")
    for label, vectors, query_vectors in rows:
        scores = query_vectors @ vectors.T
        run = {f"q{i}": {f"c{j}": float(s) for j, s in enumerate(row)} for i, row in enumerate(scores)}
        means = metrics.mean(metrics.evaluate(run, qrels, [10]))
        print(f"| {label} | {means['ndcg'][10]:.4f} | {means['mrr'][10]:.4f} |")


if __name__ == "__main__":
    main()
