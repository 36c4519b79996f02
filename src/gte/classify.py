"""`Classifier`: label scores from a sequence-classification checkpoint (NewForSequenceClassification: sentiment,
NLI, topics, multi-label tags; BERT and XLM-R classifiers through their conversions), for single texts and text
pairs, on the same packed inference path as `Embedder`. `Reranker` (gte.rerank) is its one-label case."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from gte_defaults import ACTIVATIONS

from . import hub, int8
from .embed import backend_name, check_max_length, check_side, default_batch_tokens, run_packed, sided, tokenize_texts
from .engine import EngineModule

Input = str | tuple[str, str] | list[str]  # a text, or a pair encoded together


class Classifier:
    """Classifies texts and text pairs: per input, each label's score, best first.

        classifier = gte.Classifier("path/to/an-nli-checkpoint")
        classifier.predict([("A man sleeps.", "A person rests.")])  # [[{"label": "entailment", "score": 0.97}, ...]]

    The scores are the logits through `activation`: by default as transformers' text-classification pipeline
    picks it, the sigmoid of each logit for a multi-label checkpoint (config problem_type
    "multi_label_classification") or a one-label one, else the softmax over the labels; "none" gives the logits.
    Labels are the checkpoint's id2label names. An over-long input is cut on `truncation_side`. dtype "int8" (CPU
    only) quantizes the encoder layers' projections, as in `Embedder`; `int8_fidelity` then holds the cosines of the
    pooled vectors (the classifier's input) to float32's. `trainable`: the model in train mode with gradients and
    unpacked weights, for `gte.training` (the scoring methods still run without gradients).
    """

    def __init__(
        self,
        model: str | os.PathLike | EngineModule,
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
        trainable: bool = False,
    ):
        loaded = hub.load(
            model, self._architecture, device=device, dtype=dtype, tokenizer=tokenizer,
            attn_implementation=attn_implementation, revision=revision, trainable=trainable,
        )  # fmt: skip
        self.model, self.tokenizer, self.model_name, self.path = loaded.model, loaded.tokenizer, loaded.name, loaded.path
        config = self.model.config
        self.device, self.dtype = self.model.device, self.model.dtype
        self.max_length = check_max_length(config, max_length or config.max_position_embeddings)
        self.truncation_side = check_side(truncation_side)
        self.batch_tokens, self.show_progress = batch_tokens or default_batch_tokens(self.device), show_progress
        self.backend = backend_name(self.model.new)
        self.labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]
        multi_label = config.problem_type == "multi_label_classification"
        self.activation = "sigmoid" if multi_label or config.num_labels == 1 else "softmax"
        self._type_ids = config.type_vocab_size > 1  # with one type every id is 0: nothing to pass
        self._sided: dict[str, Any] = {}
        self.int8_fidelity = int8.quantize_measured(self.model, self._probe, self.model_name) if loaded.int8 else None

    @staticmethod
    def _architecture(name: str, num_labels: int) -> str:
        if name != "NewForSequenceClassification":
            raise ValueError(f"the checkpoint is a {name}, not a sequence classifier (NewForSequenceClassification): "
                             "use gte.Embedder")  # fmt: skip
        return name

    def _probe(self) -> torch.Tensor:
        """The pooled vectors of int8's probe pairs, [n, hidden]."""
        ids, types = int8.probe_tokens(self.tokenizer, self.model.config.vocab_size, self.max_length, pairs=True,
                                       type_ids=self._type_ids)  # fmt: skip
        return self.pooled(ids, types, show_progress=False).float()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name!r}, device={self.device}, "
            f"dtype={int8.dtype_name(self.dtype, self.int8_fidelity)}, labels={len(self.labels)}, "
            f"max_length={self.max_length}, backend={self.backend!r})"
        )

    def tokenize(
        self, inputs: Input | Sequence[Input], *, truncate: bool = True, truncation_side: str | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """(token ids, token type ids or None) of each input, a text or a pair [text, text_pair] encoded together,
        cut to max_length on `truncation_side` (default: the Classifier's)."""
        inputs = check_inputs(inputs)
        side = check_side(truncation_side or self.truncation_side)
        tokenizer = sided(self.tokenizer, side, self._sided)
        ids: list[list[int]] = [[] for _ in inputs]
        types: list[list[int]] | None = [[] for _ in inputs] if self._type_ids else None
        singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        for rows, first, second in (
            (singles, [inputs[i] for i in singles], None),
            (pairs, [inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs]),
        ):
            if rows:
                got, got_types = tokenize_texts(tokenizer, first, second, self.max_length, truncate, self._type_ids, side)
                for j, i in enumerate(rows):
                    ids[i] = got[j]
                    if types is not None:
                        types[i] = got_types[j]
        return ids, types

    def predict(
        self, inputs: Input | Sequence[Input], *, activation: str | None = None, top_k: int | None = None,
        truncate: bool = True, truncation_side: str | None = None,
    ) -> list[list[dict[str, Any]]]:  # fmt: skip
        """Per input (a text, or a pair [text, text_pair]), [{"label", "score"}] best first: every label, or the
        best `top_k`."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        activation = check_activation(activation or self.activation)
        ids, types = self.tokenize(inputs, truncate=truncate, truncation_side=truncation_side)
        scores = activate(self.logits_tokens(ids, types), activation)
        return [self.ranked(row, top_k) for row in scores.tolist()]

    def ranked(self, scores: Sequence[float], top_k: int | None = None) -> list[dict[str, Any]]:
        """[{"label", "score"}] of one input's scores (one per label), best first, the first top_k."""
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k]
        return [{"label": self.labels[i], "score": scores[i]} for i in order]

    @torch.inference_mode()
    def logits_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        token_type_ids: Sequence[Sequence[int]] | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> torch.Tensor:
        """The logits of already-tokenized inputs (special tokens included), float32 [n, labels] on the CPU."""
        pooled = self.pooled(token_ids, token_type_ids, batch_tokens=batch_tokens, show_progress=show_progress)
        return self.model.classifier(pooled).float().cpu()

    @torch.inference_mode()
    def pooled(
        self,
        token_ids: Sequence[Sequence[int]],
        token_type_ids: Sequence[Sequence[int]] | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> torch.Tensor:
        """The pooler's output for each already-tokenized input, [n, hidden] in input order (what the classifier
        scores)."""
        out = torch.empty(len(token_ids), self.model.config.hidden_size, dtype=self.dtype, device=self.device)
        show = self.show_progress if show_progress is None else show_progress
        types = token_type_ids if self._type_ids else None
        pooler = self.model.new.pooler
        batches = run_packed(self.model.new, token_ids, batch_tokens or self.batch_tokens, type_ids=types,
                             picks=pooler.picks, show_progress=show)  # fmt: skip
        for batch, picked, packing in batches:
            out[batch] = pooler(picked, packing)  # [B, hidden]
        return out


def check_inputs(inputs: Input | Sequence[Input]) -> list[str | tuple[str, str]]:
    """A list of texts and (text, text_pair) pairs: one text, or one pair given as a tuple, counts as a list of one;
    TypeError naming the first bad index."""
    if isinstance(inputs, (str, tuple)):
        inputs = [inputs]
    checked: list[str | tuple[str, str]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
            checked.append((item[0], item[1]))
        elif isinstance(item, str):
            checked.append(item)
        else:
            raise TypeError(f"inputs[{i}] is {type(item).__name__}{_shape(item)}: pass a text, or a pair of texts "
                            "[text, text_pair]")  # fmt: skip
    return checked


def _shape(item: Any) -> str:
    return f" of {len(item)}" if isinstance(item, (tuple, list)) else ""


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    return activation


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """[n, labels] logits -> scores: softmax over the labels, each label's sigmoid, or the logits as they are."""
    if activation == "softmax":
        return logits.softmax(-1)
    if activation == "sigmoid":
        return logits.sigmoid()
    return logits
