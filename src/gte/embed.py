"""`Embedder`: texts -> embeddings (dense, and sparse token weights where the checkpoint has the head).

One inference path, shared with `Reranker` and the server: tokenize, sort by length, cut batches by a
token budget, run them unpadded through `NewModel.run` and read each sequence's result from the
packed hidden [T, H] without ever padding it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from . import attention, hub
from .configuration import NewConfig
from .modeling import NewForTokenClassification, NewModel, NewPreTrainedModel
from .padding import Packing

# Tokens per batch by device. On the CPU, larger batches make the GEMMs no faster, and measured a few percent
# slower (their per-layer buffers are large fresh allocations, first touched in every layer).
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 16384
PROGRESS_MIN_BATCHES = 4  # an automatic progress bar only for jobs of at least this many batches
# Texts are cut to max_length x this many characters before they are tokenized, so a huge text costs what a
# long one does. Real text averages 3-6 characters per token; 64 leaves room for long words, markup and spaces.
MAX_CHARS_PER_TOKEN = 64


class TruncationWarning(UserWarning):
    """Some inputs were longer than max_length tokens and were cut (`count` of them)."""

    def __init__(self, message: str, count: int = 0):
        super().__init__(message)
        self.count = count


# ------------------------------------------------------------------------------ shared pieces
def check_texts(texts: str | Sequence[str], name: str = "texts") -> list[str]:
    """A list of strings (one string counts as a list of one); TypeError naming the first bad index."""
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is {type(text).__name__}, not str: pass strings only")
    return texts


def tokenize_texts(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    max_length: int,
    truncate: bool,
    type_ids: bool = False,
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids with special tokens (and token type ids when asked), cut to max_length with one warning."""

    def run(first: list[str], second: list[str] | None, limit: int):
        return tokenizer(
            first, second, truncation=True, max_length=limit, return_attention_mask=False, return_token_type_ids=type_ids
        )

    if not texts:
        return [], [] if type_ids else None
    texts, pairs = cap_chars(texts, max_length, truncate), None if pairs is None else cap_chars(pairs, max_length, truncate)
    encoded = run(texts, pairs, max_length + 1)  # one token more than allowed reveals the over-long ones
    ids, types = encoded["input_ids"], encoded.get("token_type_ids") if type_ids else None
    over = [i for i, row in enumerate(ids) if len(row) > max_length]
    if over:
        what = "pairs" if pairs is not None else "texts"
        if not truncate:
            raise ValueError(
                f"{len(over)} of {len(ids)} {what} are longer than max_length={max_length} tokens (the first at index "
                f"{over[0]}); shorten them, raise max_length, or allow truncation"
            )
        message = f"{len(over)} of {len(ids)} {what} were longer than max_length={max_length} tokens and were truncated"
        warnings.warn(TruncationWarning(message, len(over)), stacklevel=3)
        redo = run([texts[i] for i in over], None if pairs is None else [pairs[i] for i in over], max_length)
        for j, i in enumerate(over):
            ids[i] = redo["input_ids"][j]
            if types is not None:
                types[i] = redo["token_type_ids"][j]
    return ids, types


def cap_chars(texts: list[str], max_length: int, truncate: bool) -> list[str]:
    """Texts cut to max_length x MAX_CHARS_PER_TOKEN characters (ValueError instead when not `truncate`)."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    over = [i for i, text in enumerate(texts) if len(text) > limit]
    if over and not truncate:
        raise ValueError(
            f"{len(over)} of {len(texts)} texts are longer than max_length={max_length} tokens can hold ({limit:,} "
            f"characters; the first at index {over[0]} has {len(texts[over[0]]):,}); shorten them or allow truncation"
        )
    return [text[:limit] for text in texts] if over else texts


def cut_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of at most `budget` tokens (at least one each)."""
    if budget < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {budget}")
    batches: list[list[int]] = []
    used = budget
    for i in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        if used + lengths[i] > budget:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += lengths[i]
    return batches


def default_batch_tokens(device: torch.device) -> int:
    return CPU_BATCH_TOKENS if device.type == "cpu" else GPU_BATCH_TOKENS


def progress_enabled(show: bool | None, batches: int) -> bool:
    if show is not None:
        return show
    return batches >= PROGRESS_MIN_BATCHES and sys.stderr.isatty()


def run_packed(
    model: NewModel,
    token_ids: Sequence[Sequence[int]],
    budget: int,
    *,
    type_ids: Sequence[Sequence[int]] | None = None,
    first_only: bool = False,
    show_progress: bool | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, Packing]]:
    """Yield (indices, hidden, packing) per batch: hidden [T, H] for the batch's packed tokens, or
    [B, H] (each sequence's first token) with `first_only`. Call under torch.inference_mode()."""
    lengths = [len(ids) for ids in token_ids]
    if 0 in lengths:
        raise ValueError(f"token_ids[{lengths.index(0)}] is empty: every sequence needs at least one token")
    batches = cut_batches(lengths, budget)
    device = model.device
    with _progress(len(token_ids), progress_enabled(show_progress, len(batches))) as bar:
        for batch in batches:
            ids = torch.tensor(list(chain.from_iterable(token_ids[i] for i in batch)), dtype=torch.long)
            _check_vocabulary(ids, batch, token_ids, model.config.vocab_size)
            types = None
            if type_ids is not None:
                types = torch.tensor(list(chain.from_iterable(type_ids[i] for i in batch)), dtype=torch.long).to(device)
            packing = Packing.from_seqlens(torch.tensor([lengths[i] for i in batch], device=device))
            subset = packing.first_token_index() if first_only else None
            hidden, _, _ = model.run(ids.to(device), packing, token_type_ids=types, subset=subset)
            yield batch, hidden, packing
            bar.update(len(batch))


def _check_vocabulary(ids: torch.Tensor, batch: list[int], token_ids: Sequence[Sequence[int]], vocab_size: int) -> None:
    if ids.min() >= 0 and ids.max() < vocab_size:
        return
    bad = next(i for i in batch if min(token_ids[i]) < 0 or max(token_ids[i]) >= vocab_size)
    raise ValueError(f"token_ids[{bad}] holds ids outside this model's vocabulary (0..{vocab_size - 1})")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="seq", dynamic_ncols=True)


def base_model(model: NewPreTrainedModel) -> NewModel:
    return model if isinstance(model, NewModel) else model.new


def backend_name(model: NewModel) -> str:
    """The attention backend a packed run of this model uses."""
    return attention.select(model.config._attn_implementation, model.device, model.dtype, False, False).name


# ------------------------------------------------------------------------------ Embedder
class Embedder:
    """Embeddings from a GTE "new" or BERT-family checkpoint, fast and without trust_remote_code.

        emb = gte.Embedder()                                    # all-MiniLM-L6-v2, embedded (offline)
        vectors = emb.encode(["first text", "second text"])     # float32 [2, 384], L2-normalised
        gte.Embedder("Alibaba-NLP/gte-base-en-v1.5")            # [n, 768], 8192 tokens

    `model`: a checkpoint directory, a hub id, or a loaded gte model (then pass `tokenizer` too,
    unless you only call `encode_tokens`). Device: CUDA when present; dtype: float16 on GPU, float32 on
    CPU; batch_tokens: 4096 on CPU, 16384 on GPU. Pooling and max_length come from the checkpoint's
    sentence-transformers files when present (else CLS pooling and max_position_embeddings).
    """

    def __init__(
        self,
        model: str | os.PathLike | NewPreTrainedModel = hub.DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        normalize: bool = True,
        pooling: str | None = None,
        show_progress: bool | None = None,
        tokenizer: Any = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
    ):
        loaded = hub.load(
            model, _embedding_class, device=device, dtype=dtype, tokenizer=tokenizer, attn_implementation=attn_implementation,
            revision=revision,
        )  # fmt: skip
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.encoder = base_model(self.model)
        settings = loaded.settings
        config = self.encoder.config
        self.device, self.dtype = self.encoder.device, self.encoder.dtype
        self.hidden_size, self.vocab_size = config.hidden_size, config.vocab_size
        self.max_length = check_max_length(config, max_length or settings.max_seq_length or config.max_position_embeddings)
        self.pooling = hub.check_pooling(pooling or settings.pooling or "cls")
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.normalize, self.show_progress = normalize, show_progress
        self.has_sparse = isinstance(self.model, NewForTokenClassification) and config.num_labels == 1
        self.backend = backend_name(self.encoder)
        self._token_text: dict[int, str] = {}

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model_name!r}, device={self.device}, dtype={self.dtype}, hidden_size={self.hidden_size}, "
            f"max_length={self.max_length}, pooling={self.pooling!r}, backend={self.backend!r}, sparse={self.has_sparse})"
        )

    # -------------------------------------------------------------------------- tokens
    def tokenize(self, texts: str | Sequence[str], *, max_length: int | None = None, truncate: bool = True) -> list[list[int]]:
        """Token ids per text, special tokens included, cut to max_length (one TruncationWarning)."""
        if self.tokenizer is None:
            raise ValueError("this Embedder has no tokenizer: pass tokenizer=... or call encode_tokens with token ids")
        limit = check_max_length(self.encoder.config, max_length or self.max_length)
        return tokenize_texts(self.tokenizer, check_texts(texts), None, limit, truncate)[0]

    # -------------------------------------------------------------------------- dense
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        dim: int | None = None,
        show_progress: bool | None = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """float32 [n, dim] embeddings in input order (dim: Matryoshka truncation, re-normalised)."""
        ids = self.tokenize(texts, max_length=max_length, truncate=truncate)
        return self.encode_tokens(ids, batch_tokens=batch_tokens, normalize=normalize, dim=dim, show_progress=show_progress)

    @torch.inference_mode()
    def encode_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        batch_tokens: int | None = None,
        normalize: bool | None = None,
        dim: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Token ids (special tokens included) -> float32 [n, dim] embeddings in input order."""
        dim = self.check_dim(dim)
        normalize = self.normalize if normalize is None else normalize
        out = np.empty((len(token_ids), dim), dtype=np.float32)
        first_only = self.pooling == "cls"
        for batch, hidden, packing in self._run(token_ids, batch_tokens, show_progress, first_only):
            pooled = hidden if first_only else self._mean(hidden, packing)
            vectors = pooled.float()[:, :dim]  # [B, dim]
            if normalize:
                vectors = F.normalize(vectors, dim=-1)
            out[batch] = vectors.cpu().numpy()
        return out

    # -------------------------------------------------------------------------- sparse
    def encode_sparse(
        self, texts: str | Sequence[str], *, batch_tokens: int | None = None, max_length: int | None = None,
        show_progress: bool | None = None, truncate: bool = True,
    ) -> list[dict[str, float]]:  # fmt: skip
        """{token: weight} per text, from the checkpoint's token-weight head (gte-multilingual-base)."""
        ids = self.tokenize(texts, max_length=max_length, truncate=truncate)
        return self.sparse_tokens(ids, batch_tokens=batch_tokens, show_progress=show_progress)

    @torch.inference_mode()
    def sparse_tokens(
        self, token_ids: Sequence[Sequence[int]], *, batch_tokens: int | None = None, show_progress: bool | None = None
    ) -> list[dict[str, float]]:
        """Weights = relu(token logit), the max over repeats of a token (tokens named by their decoded text);
        special tokens, blank tokens and zero weights dropped."""
        if not self.has_sparse:
            raise ValueError(
                f"{self.model_name} has no token-weight head: sparse embeddings need a NewForTokenClassification "
                "checkpoint with one label (like Alibaba-NLP/gte-multilingual-base)"
            )
        if self.tokenizer is None:
            raise ValueError("sparse embeddings name their tokens: pass tokenizer=... to the Embedder")
        special = set(self.tokenizer.all_special_ids)
        out: list[dict[str, float]] = [{} for _ in token_ids]
        for batch, hidden, packing in self._run(token_ids, batch_tokens, show_progress, first_only=False):
            weights = torch.relu(self.model.classifier(hidden)).squeeze(-1).float().cpu()  # [T]
            for i, row in zip(batch, weights.split(packing.seqlens_list)):
                out[i] = self._token_weights(token_ids[i], row.tolist(), special)
        return out

    def _token_weights(self, ids: Sequence[int], weights: list[float], special: set[int]) -> dict[str, float]:
        result: dict[str, float] = {}
        for token_id, weight in zip(ids, weights):
            if weight > 0 and token_id not in special:
                token = self._token_string(token_id)
                if token.strip() and weight > result.get(token, 0.0):  # a bare word-start piece decodes to ""
                    result[token] = weight
        return result

    def _token_string(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = self.tokenizer.decode([token_id])
        return self._token_text[token_id]

    # -------------------------------------------------------------------------- internals
    def _run(self, token_ids, batch_tokens, show_progress, first_only):
        budget = batch_tokens or self.batch_tokens
        show = self.show_progress if show_progress is None else show_progress
        return run_packed(self.encoder, token_ids, budget, first_only=first_only, show_progress=show)

    @staticmethod
    def _mean(hidden: torch.Tensor, packing: Packing) -> torch.Tensor:
        """[T, H] -> [B, H] mean over each sequence's tokens."""
        rows = torch.arange(packing.batch_size, device=hidden.device).repeat_interleave(packing.seqlens)
        sums = hidden.new_zeros((packing.batch_size, hidden.shape[1]), dtype=torch.float32).index_add_(0, rows, hidden.float())
        return sums / packing.seqlens[:, None]

    def check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.hidden_size
        if not 1 <= dim <= self.hidden_size:
            raise ValueError(f"dim must be between 1 and the hidden size {self.hidden_size}, got {dim}")
        return dim


def check_max_length(config: NewConfig, max_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens (room for the special tokens), got {max_length}")
    if config.position_embedding_type == "absolute" and max_length > config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds this model's {config.max_position_embeddings} absolute positions"
        )
    return max_length


def _embedding_class(name: str, num_labels: int) -> type[NewPreTrainedModel]:
    if name == "NewForSequenceClassification":
        raise ValueError("this checkpoint is a reranker (NewForSequenceClassification): load it with gte.Reranker")
    if name == "NewForTokenClassification" and num_labels == 1:
        return NewForTokenClassification  # the token-weight head of gte-multilingual-base: dense + sparse
    return NewModel
