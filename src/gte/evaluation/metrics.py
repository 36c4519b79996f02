"""Retrieval metrics with trec_eval's definitions (the numbers pytrec_eval, BEIR and MTEB report).

A run ranks documents per query: {query id: {document id: score}}; qrels grade them: {query id: {document id:
relevance}}, relevant meaning a relevance above 0. As trec_eval does, each query's documents are ranked by score,
highest first, ties broken by document id in reverse string order; a document the qrels do not name is not
relevant; a query is measured over what the run retrieved for it (nothing, when it has no entry); gains are the
relevance grades themselves (nDCG's gain is linear, not 2**rel - 1).

At a cutoff k, for one query:
- nDCG@k: DCG of the top k over the DCG of the k best grades in the qrels (rank r's discount: log2(r + 1));
- MRR@k: 1 / the rank of the first relevant document in the top k (0 if none);
- Recall@k: relevant documents in the top k over all relevant ones;
- Precision@k: relevant documents in the top k over k (whether or not the run holds k documents);
- MAP@k: the precision at the rank of each relevant document in the top k, summed, over all relevant ones.
A query with no relevant document scores 0 on every metric (trec_eval's convention).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
import numpy as np

Run = Mapping[str, Mapping[str, float]]  # query id -> document id -> score
Qrels = Mapping[str, Mapping[str, int]]  # query id -> document id -> relevance grade
METRICS = ("ndcg", "mrr", "recall", "precision", "map")
NAMES = {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall", "precision": "P", "map": "MAP"}


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Document ids as trec_eval ranks them: score descending, then document id descending."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def query_metrics(ranking: list[str], relevance: Mapping[str, int], cutoffs: Iterable[int]) -> dict[str, dict[int, float]]:
    """Every metric at every cutoff for one query, {metric: {k: value}}, from its ranked document ids and its qrels."""
    grades = np.array([max(relevance.get(doc, 0), 0) for doc in ranking], dtype=np.float64)  # by rank
    hits = grades > 0
    relevant = sum(1 for grade in relevance.values() if grade > 0)
    ideal = np.array(sorted((g for g in relevance.values() if g > 0), reverse=True), dtype=np.float64)
    values: dict[str, dict[int, float]] = {metric: {} for metric in METRICS}
    for k in cutoffs:
        top, top_hits = grades[:k], hits[:k]
        if relevant == 0:
            for metric in METRICS:
                values[metric][k] = 0.0
            continue
        values["ndcg"][k] = _dcg(top) / _dcg(ideal[:k])
        first = np.flatnonzero(top_hits)
        values["mrr"][k] = 1.0 / (first[0] + 1) if first.size else 0.0
        values["recall"][k] = top_hits.sum() / relevant
        values["precision"][k] = top_hits.sum() / k
        precision_at_hits = np.cumsum(top_hits)[top_hits] / (np.flatnonzero(top_hits) + 1)
        values["map"][k] = precision_at_hits.sum() / relevant
    return values


def _dcg(grades: np.ndarray) -> float:
    """Discounted cumulative gain of grades in rank order (rank r discounted by log2(r + 1))."""
    return float((grades / np.log2(np.arange(2, grades.size + 2))).sum())


def evaluate(run: Run, qrels: Qrels, cutoffs: Iterable[int]) -> dict[str, dict[str, dict[int, float]]]:
    """Per query of the qrels: {query id: {metric: {k: value}}}. A query the run lacks retrieved nothing."""
    cutoffs = sorted(set(cutoffs))
    if not cutoffs or cutoffs[0] < 1:
        raise ValueError(f"cutoffs must be positive integers, got {cutoffs}")
    return {query: query_metrics(ranked(run.get(query, {})), relevance, cutoffs) for query, relevance in qrels.items()}


def mean(per_query: Mapping[str, Mapping[str, Mapping[int, float]]]) -> dict[str, dict[int, float]]:
    """The mean of each metric at each cutoff over the queries (NaN-free: empty input gives 0)."""
    if not per_query:
        return {}
    first = next(iter(per_query.values()))
    return {
        metric: {k: math.fsum(q[metric][k] for q in per_query.values()) / len(per_query) for k in by_k}
        for metric, by_k in first.items()
    }
