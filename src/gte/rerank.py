"""`Reranker`: query-document relevance scores from a NewForSequenceClassification checkpoint
(gte-multilingual-reranker-base), on the same packed inference path as `Embedder`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from . import hub, int8
from .embed import backend_name, check_max_length, check_side, check_texts, default_batch_tokens, run_packed, sided, tokenize_texts
from .modeling import NewForSequenceClassification
from .padding import Packing


class Reranker:
    """Scores (query, document) pairs, encoded together; score = the logit (its sigmoid with normalize=True).
    An over-long pair is cut on `truncation_side`: "right" cuts the end of its longer text, "left" the start.
    dtype "int8" (CPU only) quantizes the encoder layers' projections, as in `Embedder`; `int8_fidelity` then holds
    the cosines of the pooled pair vectors (the classifier's input) to float32's.

        reranker = gte.Reranker("Alibaba-NLP/gte-multilingual-reranker-base")
        reranker.rank("what is a panda?", ["The giant panda is a bear.", "Paris is in France."], top_k=1)
    """

    def __init__(
        self,
        model: str | os.PathLike | NewForSequenceClassification,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        truncation_side: str = "right",
        show_progress: bool | None = None,
        tokenizer: Any = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
    ):
        loaded = hub.load(
            model, _reranker_class, device=device, dtype=dtype, tokenizer=tokenizer, attn_implementation=attn_implementation,
            revision=revision,
        )  # fmt: skip
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        config = self.model.config
        self.device, self.dtype = self.model.device, self.model.dtype
        self.max_length = check_max_length(config, max_length or config.max_position_embeddings)
        self.truncation_side = check_side(truncation_side)
        self.batch_tokens, self.show_progress = batch_tokens or default_batch_tokens(self.device), show_progress
        self.backend = backend_name(self.model.new)
        self._type_ids = config.type_vocab_size > 1  # with one type every id is 0: nothing to pass
        self._sided: dict[str, Any] = {}
        self.int8_fidelity = int8.quantize_measured(self.model, self._probe, self.model_name) if loaded.int8 else None

    def _probe(self) -> torch.Tensor:
        """The pooled vectors of int8's probe pairs, [n, hidden]."""
        ids, types = int8.probe_tokens(self.tokenizer, self.model.config.vocab_size, self.max_length, pairs=True,
                                       type_ids=self._type_ids)  # fmt: skip
        return self.pooled(ids, types, show_progress=False).float()

    def __repr__(self) -> str:
        return (
            f"Reranker({self.model_name!r}, device={self.device}, "
            f"dtype={int8.dtype_name(self.dtype, self.int8_fidelity)}, max_length={self.max_length}, "
            f"backend={self.backend!r})"
        )

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, truncation_side: str | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """(token ids, token type ids or None) of each (query, document) pair, cut to max_length on
        `truncation_side` (default: the Reranker's)."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, not str")
        documents = check_texts(documents, "documents")
        side = check_side(truncation_side or self.truncation_side)
        tokenizer = sided(self.tokenizer, side, self._sided)
        return tokenize_texts(tokenizer, [query] * len(documents), documents, self.max_length, truncate, self._type_ids, side)

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

    @torch.inference_mode()
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
        pooled = self.pooled(token_ids, token_type_ids, batch_tokens=batch_tokens, show_progress=show_progress)
        logits = self.model.classifier(pooled).squeeze(-1).float()  # [n]
        return (torch.sigmoid(logits) if normalize else logits).tolist()

    @torch.inference_mode()
    def pooled(
        self,
        token_ids: Sequence[Sequence[int]],
        token_type_ids: Sequence[Sequence[int]] | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> torch.Tensor:
        """The pooler's output for each already-tokenized pair, [n, hidden] in input order (what the classifier
        scores)."""
        out = torch.empty(len(token_ids), self.model.config.hidden_size, dtype=self.dtype, device=self.device)
        show = self.show_progress if show_progress is None else show_progress
        types = token_type_ids if self._type_ids else None
        batches = run_packed(self.model.new, token_ids, batch_tokens or self.batch_tokens, type_ids=types,
                             picks=Packing.first_token_index, show_progress=show)  # fmt: skip
        for batch, first, _ in batches:
            out[batch] = self.model.new.pooler(first)  # [B, hidden]
        return out


def _reranker_class(name: str, num_labels: int) -> type[NewForSequenceClassification]:
    if name != "NewForSequenceClassification":
        raise ValueError(f"the checkpoint is a {name}, not a reranker (NewForSequenceClassification): use gte.Embedder")
    if num_labels != 1:
        raise ValueError(f"a reranker has one output (num_labels=1); this checkpoint has {num_labels}")
    return NewForSequenceClassification
