"""`Reranker`: query-document relevance scores from a one-label sequence classifier
(gte-multilingual-reranker-base), the one-label case of `Classifier`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .classify import Classifier
from .embed import check_texts


class Reranker(Classifier):
    """Scores (query, document) pairs, encoded together; score = the logit (its sigmoid with normalize=True).
    An over-long pair is cut on `truncation_side`: "right" cuts the end of its longer text, "left" the start.
    The options are `Classifier`'s.

        reranker = gte.Reranker("Alibaba-NLP/gte-multilingual-reranker-base")
        reranker.rank("what is a panda?", ["The giant panda is a bear.", "Paris is in France."], top_k=1)
    """

    @staticmethod
    def _architecture(name: str, num_labels: int) -> str:
        if name != "NewForSequenceClassification":
            raise ValueError(f"the checkpoint is a {name}, not a reranker (NewForSequenceClassification): use gte.Embedder")
        if num_labels != 1:
            raise ValueError(f"a reranker has one output (num_labels=1); this checkpoint has {num_labels}: use "
                             "gte.Classifier")  # fmt: skip
        return name

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, truncation_side: str | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """(token ids, token type ids or None) of each (query, document) pair, cut to max_length on
        `truncation_side` (default: the Reranker's)."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, not str")
        documents = check_texts(documents, "documents")
        return self.tokenize([(query, document) for document in documents], truncate=truncate,
                             truncation_side=truncation_side)  # fmt: skip

    def score(
        self, query: str, documents: Sequence[str], *, normalize: bool = False, truncate: bool = True,
        truncation_side: str | None = None,
    ) -> list[float]:  # fmt: skip
        """One relevance score per document, in input order."""
        ids, types = self.tokenize_pairs(query, documents, truncate=truncate, truncation_side=truncation_side)
        return self.score_tokens(ids, types, normalize=normalize)

    def rank(
        self, query: str, documents: Sequence[str], *, top_k: int | None = None, normalize: bool = False,
        truncation_side: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """[{"index", "score", "text"}], best first (the first top_k)."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        documents = check_texts(documents, "documents")
        scores = self.score(query, documents, normalize=normalize, truncation_side=truncation_side)
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_k]
        return [{"index": i, "score": scores[i], "text": documents[i]} for i in order]

    def score_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        token_type_ids: Sequence[Sequence[int]] | None = None,
        *,
        normalize: bool = False,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> list[float]:
        """Scores of already-tokenized pairs (special tokens included)."""
        logits = self.logits_tokens(token_ids, token_type_ids, batch_tokens=batch_tokens, show_progress=show_progress)
        return (torch.sigmoid(logits[:, 0]) if normalize else logits[:, 0]).tolist()
