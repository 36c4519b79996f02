"""`gte eval retrieval` / `gte.evaluate_retrieval`: how well a model retrieves on a retrieval set, in the standard
numbers (gte.evaluation.metrics).

The corpus is embedded once, through the corpus-job path (streaming, resumable), into a cache directory keyed by
the model, its options and the corpus, so a second evaluation re-uses the vectors; queries are embedded with the
checkpoint's "query" prompt and documents with its "document" prompt. Search is exact, block by block
(gte.evaluation.search). Every variant (a Matryoshka dimension, a precision) is scored from the same vectors; a
reranker, when given, re-scores the first variant's top hits, reported beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..embed import Embedder, progress_enabled
from ..quantize import quantize_embeddings
from ..rerank import Reranker
from ..sources import InputError
from . import metrics
from .data import RetrievalSet, check_qrels, read_pairs, read_qrels, read_texts
from .search import CORPUS_BLOCK, Encode, top_k

DEFAULT_CUTOFFS = (1, 10, 100)
EVAL_PRECISIONS = ("float32", "int8", "binary")
CACHE_ENV = "GTE_EVAL_CACHE"


@dataclass
class Variant:
    name: str  # "full", "dim 256", "int8", "dim 256 binary", "rerank top 100", ...
    scores: dict[str, dict[int, float]]  # metric -> k -> mean over the judged queries
    dim: int | None = None  # the Matryoshka cut, None for every dimension
    precision: str = "float32"
    reranked: bool = False


@dataclass
class Report:
    model: str
    dimension: int  # of the model's vectors
    queries: int  # judged queries evaluated
    documents: int
    cutoffs: list[int]
    variants: list[Variant]
    seconds: dict[str, float] = field(default_factory=dict)  # embed_corpus, embed_queries, search, rerank
    notes: list[str] = field(default_factory=list)
    cache: str | None = None

    def table(self, metric_names: Sequence[str] = metrics.METRICS) -> str:
        """A markdown table: one row per variant, one column per metric and cutoff."""
        columns = [(m, k) for m in metric_names for k in self.cutoffs]
        head = "| variant | " + " | ".join(f"{metrics.NAMES[m]}@{k}" for m, k in columns) + " |"
        rule = "|---|" + "---:|" * len(columns)
        rows = [f"| {v.name} | " + " | ".join(f"{v.scores[m][k]:.4f}" for m, k in columns) + " |" for v in self.variants]
        return "\n".join([head, rule, *rows])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def plot(self, path: str | os.PathLike, metric: str = "ndcg", k: int | None = None) -> Path:
        """A PNG of `metric`@k (default: nDCG@10, else at the largest cutoff) against the dimensions, a line per
        precision (matplotlib, the `eval` extra)."""
        try:
            from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay as they are
        except ImportError:
            raise ImportError("a plot needs matplotlib: pip install 'gte-engine[eval]'") from None
        k = k or (10 if 10 in self.cutoffs else self.cutoffs[-1])
        figure = Figure(figsize=(6, 4))
        axes = figure.subplots()
        first_stage = [v for v in self.variants if not v.reranked]
        for precision in dict.fromkeys(v.precision for v in first_stage):
            points = sorted((v.dim or self.dimension, v.scores[metric][k]) for v in first_stage if v.precision == precision)
            axes.plot(*zip(*points), marker="o", label=precision)
        axes.set_xscale("log", base=2)
        axes.set(xlabel="dimensions", ylabel=f"{metrics.NAMES[metric]}@{k}", title=f"{self.model}: {self.queries} queries")
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        return Path(path)


def load_set(
    corpus: str | os.PathLike | None = None,
    queries: str | os.PathLike | None = None,
    qrels: str | os.PathLike | None = None,
    *,
    pairs: str | os.PathLike | None = None,
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str | None = "title",
) -> RetrievalSet:
    """A retrieval set from BEIR-style files (corpus, queries, qrels) or from one pairs file."""
    if pairs is not None:
        if corpus is not None or queries is not None or qrels is not None:
            raise InputError("pass a pairs file, or the corpus, queries and qrels: not both")
        return read_pairs(pairs)
    if corpus is None or queries is None or qrels is None:
        raise InputError("a retrieval set needs the corpus, the queries and the qrels (or one pairs file)")
    corpus_ids, documents = read_texts(corpus, id_field, text_field, title_field, "document")
    query_ids, texts = read_texts(queries, id_field, text_field, None, "query")
    return RetrievalSet(corpus_ids, documents, query_ids, texts, read_qrels(qrels))


def evaluate_retrieval(
    corpus: str | os.PathLike | None = None,
    queries: str | os.PathLike | None = None,
    qrels: str | os.PathLike | None = None,
    *,
    pairs: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    embedder: Embedder | None = None,  # else one is loaded from `model`
    k: Sequence[int] = DEFAULT_CUTOFFS,
    dims: Sequence[int] = (),
    precisions: Sequence[str] = (),
    rerank: str | os.PathLike | Reranker | None = None,
    rerank_top_k: int = 100,
    ignore_missing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool | None = None,
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str | None = "title",
) -> Report:
    """Evaluate retrieval on a retrieval set: nDCG, MRR, Recall, Precision and MAP at each cutoff in `k`, for
    the model's full vectors and each Matryoshka dimension in `dims`, each in float32 and each of `precisions`
    ("int8", "binary"), all from one embedding; and after reranking the first variant's top `rerank_top_k` hits
    with the cross-encoder `rerank`.

        report = gte.evaluate_retrieval("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
        print(report.table())
    """
    cutoffs = sorted(set(k))
    if not cutoffs or cutoffs[0] < 1:
        raise ValueError(f"the cutoffs must be positive integers, got {list(k)}")
    data = load_set(corpus, queries, qrels, pairs=pairs, id_field=id_field, text_field=text_field, title_field=title_field)
    notes = check_qrels(data, ignore_missing)
    judged = [i for i, query in enumerate(data.query_ids) if query in data.qrels]
    if not judged:
        raise InputError("no query has a judgement in the qrels: nothing to evaluate; check that the qrels' query ids "
                         "are the queries file's ids (--id-field names that column)")  # fmt: skip
    unknown = [p for p in precisions if p not in EVAL_PRECISIONS]
    if unknown:
        raise ValueError(f"precision {unknown[0]!r}: evaluate {', '.join(EVAL_PRECISIONS)}")
    embedder = embedder or Embedder(model)
    for dim in dims:
        embedder.check_dim(dim)
    seconds: dict[str, float] = {}
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    started = time.perf_counter()
    documents, cached = corpus_vectors(embedder, data.corpus, cache, show_progress)
    seconds["embed_corpus"] = time.perf_counter() - started
    started = time.perf_counter()
    query_texts = [data.queries[i] for i in judged]
    query_vectors = embedder.encode(query_texts, prompt_name="query", show_progress=show_progress)
    seconds["embed_queries"] = time.perf_counter() - started
    depth = max(cutoffs[-1], rerank_top_k if rerank else 0)
    query_ids = [data.query_ids[i] for i in judged]
    variants, first_stage = [], None
    seconds["search"] = 0.0
    for scoring in scorings(documents, dims, precisions):
        started = time.perf_counter()
        scores, rows = top_k(query_vectors, documents, depth, scoring.encode, show_progress)
        seconds["search"] += time.perf_counter() - started
        run = {q: {data.corpus_ids[r]: float(s) for s, r in zip(sc, rw)} for q, sc, rw in zip(query_ids, scores, rows)}
        first_stage = run if first_stage is None else first_stage
        variants.append(Variant(scoring.name, metrics.mean(metrics.evaluate(run, data.qrels, cutoffs)), scoring.dim,
                                scoring.precision))  # fmt: skip
    if rerank is not None:
        started = time.perf_counter()
        reranked = rerank_run(rerank, first_stage, dict(zip(query_ids, query_texts)), data, rerank_top_k, show_progress)
        seconds["rerank"] = time.perf_counter() - started
        scores = metrics.mean(metrics.evaluate(reranked, data.qrels, cutoffs))
        variants.append(Variant(f"rerank top {rerank_top_k}", scores, reranked=True))
    if cached:
        notes.append(f"corpus vectors from the cache ({cached})")
    return Report(embedder.model_name, embedder.dimension, len(judged), len(data.corpus_ids), cutoffs, variants, seconds,
                  notes, str(cached) if cached else None)  # fmt: skip


@dataclass(frozen=True)
class Scoring:
    """How one variant scores: the first `dim` values, re-normalised (all of them for None), at `precision`: float32;
    int8 (each dimension's 256 buckets of its range over the corpus, as gte.quantize makes them; the codes' dot
    product); binary (the sign bits as +-1: dot products rank as the Hamming distance does)."""

    dim: int | None = None
    precision: str = "float32"
    ranges: np.ndarray | None = None  # int8: [2, dim] over the corpus

    @property
    def name(self) -> str:
        words = ([] if self.dim is None else [f"dim {self.dim}"]) + ([] if self.precision == "float32" else [self.precision])
        return " ".join(words) or "full"

    def encode(self, rows: np.ndarray) -> torch.Tensor:  # [n, d] float32 -> [n, dim] float32
        if self.dim is not None:
            rows = rows[:, : self.dim]
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        if self.precision == "int8":
            rows = quantize_embeddings(rows, "int8", self.ranges)
        elif self.precision == "binary":
            rows = np.where(rows > 0, 1, -1)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def scorings(documents: np.ndarray, dims: Sequence[int], precisions: Sequence[str]) -> Iterator[Scoring]:
    """Every variant: each dimension (the full one first) at each precision (float32 first)."""
    for dim in [None, *dims]:
        for precision in dict.fromkeys(["float32", *precisions]):
            plain = Scoring(dim)
            yield Scoring(dim, precision, corpus_ranges(documents, plain.encode) if precision == "int8" else None)


def corpus_ranges(documents: np.ndarray, encode: Encode) -> np.ndarray:
    """[2, d]: each dimension's lowest and highest value over the corpus, as `encode` makes its vectors, block by block."""
    low, high = None, None
    for start in range(0, len(documents), CORPUS_BLOCK):
        block = encode(np.array(documents[start : start + CORPUS_BLOCK], dtype=np.float32)).numpy()
        low = block.min(0) if low is None else np.minimum(low, block.min(0))
        high = block.max(0) if high is None else np.maximum(high, block.max(0))
    return np.stack([low, high])


def rerank_run(model: str | os.PathLike | Reranker, run: metrics.Run, query_texts: dict[str, str], data: RetrievalSet,
               top: int, show_progress: bool | None) -> dict[str, dict[str, float]]:  # fmt: skip
    """The first stage's top `top` hits per query, re-scored by a cross-encoder."""
    reranker = model if isinstance(model, Reranker) else Reranker(model)
    texts = dict(zip(data.corpus_ids, data.corpus))
    reranked = {}
    bar = not progress_enabled(show_progress, len(run))
    for query, hits in tqdm(run.items(), desc="rerank", unit="query", disable=bar, file=sys.stderr):
        ids = metrics.ranked(hits)[:top]
        reranked[query] = dict(zip(ids, map(float, reranker.score(query_texts[query], [texts[i] for i in ids]))))
    return reranked


# ------------------------------------------------------------------------------ the corpus vectors' cache
def default_cache() -> Path:
    """$GTE_EVAL_CACHE, else gte's folder in the user's cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gte" / "eval"


def corpus_key(embedder: Embedder, texts: Sequence[str]) -> str:
    """What the vectors depend on: the model (its description and a sample of every weight), the options that
    change vectors, the document prompt, and every text."""
    digest = hashlib.sha256()
    settings = {"embedder": repr(embedder), "normalize": embedder.normalize, "side": embedder.truncation_side,
                "prompt": embedder.resolve_prompt("document")}  # fmt: skip
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in embedder.model.state_dict().items():
        digest.update(name.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:32]


def corpus_vectors(embedder: Embedder, texts: list[str], cache: Path, show_progress: bool | None) -> tuple[np.ndarray, Path | None]:
    """The corpus's vectors [N, dim] (memory-mapped from the cache), and the cache file when it held them already."""
    from ..job import embed_corpus

    path = cache / corpus_key(embedder, texts) / "corpus.npy"
    if path.exists():
        return np.load(path, mmap_mode="r"), path
    path.parent.mkdir(parents=True, exist_ok=True)
    embed_corpus(texts, path, embedder=embedder, prompt_name="document", resume=True, show_progress=show_progress)
    return np.load(path, mmap_mode="r"), None
