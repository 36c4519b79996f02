"""`gte eval retrieval` / `gte.evaluate_retrieval`: how well a model retrieves on a retrieval set, in the standard
numbers (gte.evaluation.metrics).

The corpus is embedded once, through the corpus-job path (streaming, resumable), into a cache directory keyed by
the model, its options and the corpus, so a second evaluation re-uses the vectors; queries are embedded with the
checkpoint's "query" prompt and documents with its "document" prompt. Search is exact, block by block
(gte.evaluation.search). Each variant (a Matryoshka dimension) is scored from the same vectors; a reranker, when
given, re-scores the first stage's top hits, reported beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..embed import Embedder, progress_enabled
from ..rerank import Reranker
from ..sources import InputError
from . import metrics
from .data import RetrievalSet, check_qrels, read_pairs, read_qrels, read_texts
from .search import top_k

DEFAULT_CUTOFFS = (1, 10, 100)
CACHE_ENV = "GTE_EVAL_CACHE"


@dataclass
class Variant:
    name: str  # "dim 256", "rerank top 100", ...
    scores: dict[str, dict[int, float]]  # metric -> k -> mean over the judged queries


@dataclass
class Report:
    model: str
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
    the model's full vectors and each Matryoshka dimension in `dims`, and after reranking the top `rerank_top_k`
    hits with the cross-encoder `rerank`.

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
        raise InputError("no query has a judgement in the qrels: nothing to evaluate")
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
    variants, runs = [], {}
    seconds["search"] = 0.0
    for dim in [None, *dims]:
        started = time.perf_counter()
        scores, rows = top_k(query_vectors, documents, depth, dim, show_progress)
        seconds["search"] += time.perf_counter() - started
        run = {q: {data.corpus_ids[r]: float(s) for s, r in zip(sc, rw)} for q, sc, rw in zip(query_ids, scores, rows)}
        runs[dim] = run
        name = "full" if dim is None else f"dim {dim}"
        variants.append(Variant(name, metrics.mean(metrics.evaluate(run, data.qrels, cutoffs))))
    if rerank is not None:
        started = time.perf_counter()
        reranked = rerank_run(rerank, runs[None], dict(zip(query_ids, query_texts)), data, rerank_top_k, show_progress)
        seconds["rerank"] = time.perf_counter() - started
        variants.append(Variant(f"rerank top {rerank_top_k}", metrics.mean(metrics.evaluate(reranked, data.qrels, cutoffs))))
    if cached:
        notes.append(f"corpus vectors from the cache ({cached})")
    return Report(embedder.model_name, len(judged), len(data.corpus_ids), cutoffs, variants, seconds, notes,
                  str(cached) if cached else None)  # fmt: skip


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
