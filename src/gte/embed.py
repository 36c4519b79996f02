"""`Embedder`: texts -> embeddings (dense, and sparse token weights where the checkpoint has the head).

One inference path, shared with `Reranker` and the server: tokenize, sort by length, cut batches by a
token budget, run them unpadded through the engine's packed `run` and read each sequence's result from the
packed hidden [T, H] without ever padding it.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import normalizers
from torch import nn
from torch.nn import functional as F

from gte_defaults import CPU_BATCH_TOKENS, DEFAULT_MODEL, GPU_BATCH_TOKENS

from . import attention, chunking, hub, int8, st_files
from .batching import budget_groups
from .chunking import Chunk
from .configuration import NewConfig
from .engine import Encoder, EngineModule
from .padding import Packing
from .pooling import Head, Pooling
from .quantize import check_precision, quantize_embeddings

PROGRESS_MIN_BATCHES = 4  # an automatic progress bar only for jobs of at least this many batches
LATE_GROUP_TOKENS = 65536  # late chunking: documents whose token states are held at once (hidden 768: 192 MiB)
# Texts are cut to max_length x this many characters before they are tokenized, so a huge text costs what a
# long one does. Real text averages 3-6 characters per token; 64 leaves room for long words, markup and spaces.
MAX_CHARS_PER_TOKEN = 64
TRUNCATION_SIDES = ("right", "left")


class PoolingNotice(UserWarning):
    """A checkpoint without sentence-transformers files: which pooling gte uses, and why."""


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
    side: str = "right",
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids with special tokens (and token type ids when asked), cut to max_length on `side` (the
    special tokens stay) with one warning. `tokenizer` must truncate on `side` (see `sided`)."""

    def run(first: list[str], second: list[str] | None, limit: int):
        return tokenizer(
            first, second, truncation=True, max_length=limit, return_attention_mask=False, return_token_type_ids=type_ids
        )

    if not texts:
        return [], [] if type_ids else None
    texts = cap_chars(texts, max_length, truncate, side)
    pairs = None if pairs is None else cap_chars(pairs, max_length, truncate, side)
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


def cap_chars(texts: list[str], max_length: int, truncate: bool, side: str = "right") -> list[str]:
    """Texts cut to max_length x MAX_CHARS_PER_TOKEN characters, keeping their start (side "right") or their end
    ("left"); ValueError instead when not `truncate`."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    over = [i for i, text in enumerate(texts) if len(text) > limit]
    if over and not truncate:
        raise ValueError(
            f"{len(over)} of {len(texts)} texts are longer than max_length={max_length} tokens can hold ({limit:,} "
            f"characters; the first at index {over[0]} has {len(texts[over[0]]):,}); shorten them or allow truncation"
        )
    if not over:
        return texts
    return [text[:limit] for text in texts] if side == "right" else [text[-limit:] for text in texts]


def check_side(side: str) -> str:
    if side not in TRUNCATION_SIDES:
        raise ValueError(f"truncation side {side!r} is not one of {', '.join(TRUNCATION_SIDES)}")
    return side


def sided(tokenizer: Any, side: str, copies: dict[str, Any]) -> Any:
    """`tokenizer`, or a copy of it (kept in `copies`) that truncates on `side`: "right" (the end of the text
    goes) or "left" (the start goes)."""
    if tokenizer.truncation_side == check_side(side):
        return tokenizer
    if side not in copies:
        copies[side] = copy.deepcopy(tokenizer)
        copies[side].truncation_side = side
    return copies[side]


def cut_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of at most `budget` tokens (at least one each)."""
    if budget < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {budget}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return [order[group.start : group.stop] for group in budget_groups((lengths[i] for i in order), budget)]


def default_batch_tokens(device: torch.device) -> int:
    return CPU_BATCH_TOKENS if device.type == "cpu" else GPU_BATCH_TOKENS


def progress_enabled(show: bool | None, batches: int) -> bool:
    if show is not None:
        return show
    return batches >= PROGRESS_MIN_BATCHES and sys.stderr.isatty()


def run_packed(
    model: Encoder,
    token_ids: Sequence[Sequence[int]],
    budget: int,
    *,
    type_ids: Sequence[Sequence[int]] | None = None,
    picks: Callable[[Packing], torch.Tensor | None] | None = None,
    show_progress: bool | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, Packing]]:
    """Yield (indices, hidden, packing) per batch: hidden [T, H] for the batch's packed tokens, or [S, H]
    for the S tokens that `picks(packing)` names, when it names some (the last layer computes only those).
    Call under torch.inference_mode()."""
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
            subset = None if picks is None else picks(packing)
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


def base_model(model: nn.Module) -> Encoder:
    """The encoder of a model with a head (its `new`), or the model itself (gte.engine's modules, or transformers')."""
    return getattr(model, "new", model)


def backend_name(model: Encoder) -> str:
    """The attention backend a packed run of this model uses."""
    return attention.select(model.config._attn_implementation, model.device, model.dtype, False, False).name


def checkpoint_head(
    settings: st_files.SentenceTransformersSettings, hidden_size: int, path: Path | None, pooling: str | None = None
) -> Head:
    """The Head that follows the encoder (the Embedder's, the ONNX export's): the checkpoint's sentence-transformers
    modules with `pooling` (keeping the checkpoint's include_prompt) in place of its Pooling when given; CLS when
    the checkpoint has no Pooling, with a notice naming `path` unless `pooling` chose."""
    stored = settings.pooling
    if pooling is not None:
        chosen = Pooling.parse(pooling, stored.include_prompt if stored else True)
    elif stored is not None:
        chosen = stored
    else:
        if path is not None:
            warnings.warn(PoolingNotice(f"{path} has no sentence-transformers files (modules.json): pooling is 'cls', "
                                        "the official GTE models' (sentence-transformers would take the mean); pass "
                                        "pooling='mean' / --pooling mean to change it"), stacklevel=3)  # fmt: skip
        chosen = Pooling(("cls",))
    return st_files.build_head(settings, hidden_size, chosen)


# ------------------------------------------------------------------------------ Embedder
class Embedder:
    """Embeddings from a GTE "new" or BERT-family checkpoint, fast and without trust_remote_code.

        emb = gte.Embedder()                                    # all-MiniLM-L6-v2, embedded (offline)
        vectors = emb.encode(["first text", "second text"])     # float32 [2, 384], L2-normalised
        gte.Embedder("Alibaba-NLP/gte-base-en-v1.5")            # [n, 768], 8192 tokens
        emb.encode_query("how do cats purr?")                   # with the checkpoint's query prompt, if any

    `model`: a checkpoint directory, a hub id, or a loaded gte model (gte.NewModel, or the `model` of another
    Embedder: then pass `tokenizer` too, unless you only call `encode_tokens`; a device or dtype converts it in
    place). A checkpoint loads into the engine (`gte.engine.Encoder`, the `model` attribute). Device: CUDA when present;
    dtype: float16 on GPU, float32 on CPU; batch_tokens: 4096 on CPU, 16384 on GPU. dtype "int8" (CPU only):
    the encoder layers' projections in int8, the rest float32, and `int8_fidelity` says how close it stays to
    float32 (measured as it loads; an Int8Warning under cosine 0.999).
    The checkpoint's sentence-transformers files decide what
    follows the encoder, exactly as sentence-transformers runs them (Pooling in any mode, Dense, Normalize;
    any other module is refused), the max length (max_seq_length, else the tokenizer's model_max_length
    within the model's positions), lower-casing and the prompts. Without those files: CLS pooling, with a
    notice. `normalize` (default True) L2-normalises the final vectors, whether or not the checkpoint does;
    `truncation_side` "left" keeps the end of over-long texts instead of their start. `trainable`: the
    encoder and the head in train mode with gradients and unpacked weights, for `gte.training` (the encode
    methods still run without gradients).
    """

    def __init__(
        self,
        model: str | os.PathLike | EngineModule = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        normalize: bool = True,
        pooling: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        truncation_side: str = "right",
        show_progress: bool | None = None,
        tokenizer: Any = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        trainable: bool = False,
    ):
        if trainable and (dtype == "int8" or not isinstance(model, (str, os.PathLike))):
            raise ValueError("trainable=True loads a checkpoint in float32 or bfloat16 weights: pass a directory or hub id, "
                             "not a model object, and no int8 dtype")  # fmt: skip
        loaded = hub.load(
            model, _embedding_architecture, device=device, dtype=dtype, tokenizer=tokenizer, attn_implementation=attn_implementation,
            revision=revision, trainable=trainable,
        )  # fmt: skip
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.encoder = base_model(self.model)
        self.settings = settings = st_files.read_settings(loaded.path)
        config = self.encoder.config
        self.device, self.dtype = self.encoder.device, self.encoder.dtype
        self.hidden_size, self.vocab_size = config.hidden_size, config.vocab_size
        self.head = checkpoint_head(settings, config.hidden_size, loaded.path, pooling).to(self.device)
        self.head.train(trainable).requires_grad_(trainable)
        self.path = loaded.path
        self.pooling = self.head.pooling.name
        self.dimension = self.head.dim or config.hidden_size * len(self.head.pooling.modes)
        self.max_length = check_max_length(config, max_length or self._default_max_length(config))
        if self.tokenizer is not None and settings.do_lower_case:
            self.tokenizer = lowercased(self.tokenizer)
        # sentence-transformers' prompts: "query" and "document" exist (empty) unless the checkpoint or the caller sets them
        self.prompts = {"query": "", "document": ""} | settings.prompts | (prompts or {})
        self.default_prompt_name = default_prompt_name or settings.default_prompt_name
        self.resolve_prompt(self.default_prompt_name)  # a default that names no prompt fails here
        self.truncation_side = check_side(truncation_side)
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.normalize, self.show_progress = normalize, show_progress
        self.has_sparse = self.model.architecture == "NewForTokenClassification" and config.num_labels == 1
        self.backend = backend_name(self.encoder)
        self._token_text: dict[int, str] = {}
        self._sided: dict[str, Any] = {}
        self.int8_fidelity = int8.quantize_measured(self.model, self._probe, self.model_name) if loaded.int8 else None

    def _probe(self) -> torch.Tensor:
        """The vectors of int8's probe texts, [n, dimension]."""
        ids, _ = int8.probe_tokens(self.tokenizer, self.vocab_size, self.max_length)
        return torch.from_numpy(self.encode_tokens(ids, show_progress=False))

    def _default_max_length(self, config: NewConfig) -> int:
        """sentence-transformers' rule: max_seq_length, else the tokenizer's model_max_length within the positions."""
        if self.settings.max_seq_length:
            return self.settings.max_seq_length
        limit = getattr(self.tokenizer, "model_max_length", None) or config.max_position_embeddings
        return min(int(limit), config.max_position_embeddings)

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model_name!r}, device={self.device}, "
            f"dtype={int8.dtype_name(self.dtype, self.int8_fidelity)}, dimension={self.dimension}, "
            f"max_length={self.max_length}, head={self.head.describe()!r}, backend={self.backend!r}, "
            f"sparse={self.has_sparse})"
        )

    # -------------------------------------------------------------------------- prompts and tokens
    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prompt text, as sentence-transformers picks it: `prompt` if given, else the checkpoint's prompt
        named `prompt_name` (ValueError when it has none of that name), else the default prompt's, else ""."""
        if prompt is not None:
            if prompt_name is not None:
                raise ValueError("pass prompt_name or prompt, not both")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"prompt name {name!r} is not one of this model's prompts ({', '.join(self.prompts)}); "
                             "pass one of them, or the text itself as prompt=...")  # fmt: skip
        return self.prompts[name]

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens at the start of each sequence that pooling leaves out (0 unless the checkpoint's
        Pooling has include_prompt false): the prompt's own tokens, its trailing special token not counted."""
        if not prompt or self.head.pooling.include_prompt:
            return 0
        ids = self.tokenizer(prompt)["input_ids"]
        return len(ids) - (ids[-1] in self.tokenizer.all_special_ids)

    def tokenize(
        self, texts: str | Sequence[str], *, prompt: str = "", max_length: int | None = None, truncate: bool = True,
        truncation_side: str | None = None,
    ) -> list[list[int]]:  # fmt: skip
        """Token ids per text (`prompt` + text), special tokens included, cut to max_length (one TruncationWarning)."""
        if self.tokenizer is None:
            raise ValueError("this Embedder has no tokenizer: pass tokenizer=... or call encode_tokens with token ids")
        limit = check_max_length(self.encoder.config, max_length or self.max_length)
        side = check_side(truncation_side or self.truncation_side)
        texts = check_texts(texts)
        texts = [prompt + text for text in texts] if prompt else texts
        return tokenize_texts(sided(self.tokenizer, side, self._sided), texts, None, limit, truncate, side=side)[0]

    # -------------------------------------------------------------------------- dense
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        dim: int | None = None,
        show_progress: bool | None = None,
        truncate: bool = True,
        truncation_side: str | None = None,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        sparse: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[dict[str, float]]]:
        """float32 [n, dim] embeddings in input order (dim: Matryoshka truncation, re-normalised), each text
        after the prompt `resolve_prompt` picks; at another `precision` (int8, uint8, binary, ubinary) quantized
        as sentence-transformers' `quantize_embeddings` does, int8 / uint8 within `ranges` [2, dim]
        (`gte.quantize`). With `sparse=True` (a checkpoint with a token-weight head), (vectors, weights): each
        text's sparse weights too, from the same encoder pass, each equal to `encode` and `encode_sparse` apart;
        the texts then take no prompt, as sparse weights never do."""
        check_precision(precision)
        text = self.resolve_prompt(prompt_name, prompt)
        if sparse and text:
            raise ValueError(f"dense and sparse vectors from one pass read the same tokens, and sparse weights take no "
                             f"prompt: pass prompt=\"\" (not {text!r}), or call encode and encode_sparse apart")  # fmt: skip
        ids = self.tokenize(texts, prompt=text, max_length=max_length, truncate=truncate, truncation_side=truncation_side)
        result = self.encode_tokens(ids, prompt_length=self.prompt_length(text), batch_tokens=batch_tokens,
                                    normalize=normalize, dim=dim, show_progress=show_progress, sparse=sparse)  # fmt: skip
        if sparse:
            vectors, weights = result
            return quantize_embeddings(vectors, precision, ranges), weights
        return quantize_embeddings(result, precision, ranges)

    def encode_query(self, texts: str | Sequence[str], *, prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs: Any) -> np.ndarray:  # fmt: skip
        """`encode` with the checkpoint's "query" prompt unless another is given (sentence-transformers' rule)."""
        if prompt_name is None and prompt is None:
            prompt_name = "query"
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, texts: str | Sequence[str], *, prompt_name: str | None = None, prompt: str | None = None,
                        **kwargs: Any) -> np.ndarray:  # fmt: skip
        """`encode` with the first of the prompts "document", "passage", "corpus" the model has, unless another is
        given (sentence-transformers' rule; "document" exists, empty, unless the checkpoint sets it)."""
        if prompt_name is None and prompt is None:
            prompt_name = next(name for name in ("document", "passage", "corpus") if name in self.prompts)
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)

    @torch.inference_mode()
    def encode_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        prompt_length: int = 0,
        batch_tokens: int | None = None,
        normalize: bool | None = None,
        dim: int | None = None,
        show_progress: bool | None = None,
        sparse: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[dict[str, float]]]:
        """Token ids (special tokens included) -> float32 [n, dim] embeddings in input order. The first
        `prompt_length` tokens of each sequence are left out of pooling (see `prompt_length`). With `sparse=True`,
        (embeddings, sparse weights) from one encoder pass (see `sparse_tokens`)."""
        dim = self.check_dim(dim)
        normalize = self.normalize if normalize is None else normalize
        special = self._sparse_specials() if sparse else set()
        out = np.empty((len(token_ids), dim), dtype=np.float32)
        weights: list[dict[str, float]] = [{} for _ in token_ids]
        one_token = self.head.pooling.one_token and not sparse  # then the last layer computes only the tokens pooling reads
        picks = partial(self.head.pooling.picks, skip=prompt_length) if one_token else None
        for batch, hidden, packing in self._run(token_ids, batch_tokens, show_progress, picks):
            vectors = self.head(hidden, packing, prompt_length, picked=one_token)
            vectors = vectors[:, :dim]  # [B, dim]
            if normalize:
                vectors = F.normalize(vectors, dim=-1)
            out[batch] = vectors.cpu().numpy()
            if sparse:
                self._sparse_batch(token_ids, batch, hidden, packing, special, weights)
        return (out, weights) if sparse else out

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """float32 [n, m] cosine similarities of the rows of `a` [n, d] and `b` [m, d] (sentence-transformers'
        `similarity`, cosine)."""
        a, b = (unit_rows(np.atleast_2d(np.asarray(x, dtype=np.float32))) for x in (a, b))
        return a @ b.T

    # -------------------------------------------------------------------------- token vectors
    def encode_all(
        self, texts: str | Sequence[str], *, prompt_name: str | None = None, prompt: str | None = None,
        batch_tokens: int | None = None, max_length: int | None = None, show_progress: bool | None = None,
        truncate: bool = True, truncation_side: str | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        """float32 [tokens, hidden] per text: the encoder's last hidden state of each of its tokens (prompt and special
        tokens included, no padding), as sentence-transformers' `token_embeddings` and TEI's /embed_all give them."""
        text = self.resolve_prompt(prompt_name, prompt)
        ids = self.tokenize(texts, prompt=text, max_length=max_length, truncate=truncate, truncation_side=truncation_side)
        return self.token_vectors(ids, batch_tokens=batch_tokens, show_progress=show_progress)

    @torch.inference_mode()
    def token_vectors(
        self, token_ids: Sequence[Sequence[int]], *, batch_tokens: int | None = None, show_progress: bool | None = None
    ) -> list[np.ndarray]:
        """Token ids -> float32 [len(ids), hidden] per sequence, in input order (see `encode_all`)."""
        out: list[np.ndarray] = [np.empty((0, self.encoder.config.hidden_size), np.float32)] * len(token_ids)
        for batch, hidden, packing in self._run(token_ids, batch_tokens, show_progress):
            for i, rows in zip(batch, hidden.float().cpu().split(packing.seqlens_list)):
                out[i] = rows.numpy()
        return out

    # -------------------------------------------------------------------------- chunks
    def encode_chunks(
        self, texts: str | Sequence[str], *, chunk_tokens: int, overlap: int = 0, by: str = "tokens", late: bool = False,
        prompt_name: str | None = None, prompt: str | None = None, batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> tuple[list[Chunk], np.ndarray]:  # fmt: skip
        """Each text cut into chunks of at most `chunk_tokens` of its own tokens (gte.chunking: character spans, never
        a part of a token), `by` "tokens" (consecutive chunks sharing `overlap` tokens) or "sentences" (whole
        sentences packed into each, the next repeating the last ones that fit in `overlap` tokens), and float32
        [chunks, dimension] vectors, normalised as the Embedder normalises: naive (each chunk embedded alone, after
        the prompt, pooled as the checkpoint pools) or `late` (each document through the encoder once, a chunk the
        mean of its tokens' states, always normalised)."""
        if self.tokenizer is None:
            raise ValueError("chunks are cut on the model's tokens: pass tokenizer=... to the Embedder")
        chunking.check(chunk_tokens, overlap, by)
        texts = check_texts(texts)
        text = self.resolve_prompt(prompt_name, prompt)
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = encoded["input_ids"]
        chunks = [chunk for document, (body, offsets) in enumerate(zip(texts, encoded["offset_mapping"]))
                  for chunk in chunking.cut(offsets, body, document, chunk_tokens, overlap, by)]  # fmt: skip
        if late:
            spans = [(c.document, c.first, c.last) for c in chunks]
            return chunks, self.late_vectors(ids, spans, prompt_ids, batch_tokens=batch_tokens, show_progress=show_progress)
        head, tail = self._special_ends()
        room = self.max_length - len(head) - len(prompt_ids) - len(tail)
        if chunk_tokens > room:
            raise ValueError(f"chunk_tokens {chunk_tokens} leaves no room for the special tokens and prompt within "
                             f"max_length {self.max_length}: at most {room}")  # fmt: skip
        token_ids = [head + prompt_ids + ids[c.document][c.first : c.last] + tail for c in chunks]
        return chunks, self.encode_tokens(token_ids, prompt_length=self.prompt_length(text), batch_tokens=batch_tokens,
                                          show_progress=show_progress)  # fmt: skip

    @torch.inference_mode()
    def late_vectors(
        self, documents: Sequence[Sequence[int]], spans: Sequence[tuple[int, int, int]], prompt_ids: Sequence[int] = (),
        *, batch_tokens: int | None = None, show_progress: bool | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Late chunking on token ids: each document (its tokens, special tokens aside) through the encoder once,
        after `prompt_ids`; per span (document, first token, last token) the mean of those tokens' final hidden
        states, normalised: float32 [spans, hidden] (a span of no tokens: zeros). Documents go through in groups
        of about LATE_GROUP_TOKENS tokens, so that one group's token states are held at a time."""
        by_document: dict[int, list[tuple[int, int, int]]] = {}
        for row, (document, first, last) in enumerate(spans):
            by_document.setdefault(document, []).append((row, first, last))
        means = np.zeros((len(spans), self.hidden_size), np.float32)
        for group in budget_groups(map(len, documents), LATE_GROUP_TOKENS):
            states = self._document_states([documents[d] for d in group], list(prompt_ids), batch_tokens, show_progress)
            for document, rows in zip(group, states):
                for row, first, last in by_document.get(document, []):
                    if last > first:
                        means[row] = rows[first:last].mean(0)
        return unit_rows(means)

    def _document_states(self, ids: Sequence[Sequence[int]], prompt_ids: list[int], batch_tokens: int | None,
                         show_progress: bool | None) -> list[np.ndarray]:  # fmt: skip
        """Each document's final hidden states [its tokens, H] (prompt and special tokens aside), from one encoder
        pass: in macro-windows of what max_length leaves, a quarter of them shared, where a document is longer."""
        head, tail = self._special_ends()
        room = self.max_length - len(head) - len(prompt_ids) - len(tail)
        if room < 4:
            raise ValueError(f"max_length {self.max_length} leaves {room} tokens for a document beside the special tokens "
                             "and prompt: too few to chunk; raise max_length or shorten the prompt")  # fmt: skip
        lead = len(head) + len(prompt_ids)  # where a window's document tokens begin
        plans = [chunking.windows(len(row), room, room // 4) for row in ids]
        sequences = [head + prompt_ids + list(row[first:last]) + tail for row, ranges in zip(ids, plans) for first, last in ranges]
        states = iter(self.token_vectors(sequences, batch_tokens=batch_tokens, show_progress=show_progress))
        out = []
        for row, ranges in zip(ids, plans):
            windows = [next(states)[lead : lead + last - first] for first, last in ranges]
            out.append(chunking.stitch(windows, ranges, len(row)) if row else np.empty((0, self.hidden_size), np.float32))
        return out

    def _special_ends(self) -> tuple[list[int], list[int]]:
        """The special token ids the tokenizer puts before and after one text's tokens ([CLS] and [SEP], say)."""
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a")["input_ids"]
        lead = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
        return full[:lead], full[lead + len(plain) :]

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
        special = self._sparse_specials()
        out: list[dict[str, float]] = [{} for _ in token_ids]
        for batch, hidden, packing in self._run(token_ids, batch_tokens, show_progress):
            self._sparse_batch(token_ids, batch, hidden, packing, special, out)
        return out

    def _sparse_specials(self) -> set[int]:
        """The special token ids sparse weights leave out; ValueError where this model cannot give sparse weights."""
        if not self.has_sparse:
            raise ValueError(
                f"{self.model_name} has no token-weight head: sparse embeddings need a NewForTokenClassification "
                "checkpoint with one label (like Alibaba-NLP/gte-multilingual-base)"
            )
        if self.tokenizer is None:
            raise ValueError("sparse embeddings name their tokens: pass tokenizer=... to the Embedder")
        return set(self.tokenizer.all_special_ids)

    def _sparse_batch(self, token_ids: Sequence[Sequence[int]], batch: list[int], hidden: torch.Tensor, packing: Packing,
                      special: set[int], out: list[dict[str, float]]) -> None:  # fmt: skip
        """One batch's sparse weights, from its last hidden state [T, H], into out[i] for each of its sequences."""
        weights = torch.relu(self.model.classifier(hidden)).squeeze(-1).float().cpu()  # [T]
        for i, row in zip(batch, weights.split(packing.seqlens_list)):
            out[i] = self._token_weights(token_ids[i], row.tolist(), special)

    def _token_weights(self, ids: Sequence[int], weights: list[float], special: set[int]) -> dict[str, float]:
        result: dict[str, float] = {}
        for token_id, weight in zip(ids, weights):
            if weight > 0 and token_id not in special:
                token = self.token_text(token_id)
                if token.strip() and weight > result.get(token, 0.0):  # a bare word-start piece decodes to ""
                    result[token] = weight
        return result

    def token_text(self, token_id: int) -> str:
        """The token's decoded text, as sparse weights name it (decoded once per id)."""
        if token_id not in self._token_text:
            self._token_text[token_id] = self.tokenizer.decode([token_id])
        return self._token_text[token_id]

    # -------------------------------------------------------------------------- internals
    def _run(self, token_ids, batch_tokens, show_progress, picks=None):
        budget = batch_tokens or self.batch_tokens
        show = self.show_progress if show_progress is None else show_progress
        return run_packed(self.encoder, token_ids, budget, picks=picks, show_progress=show)

    def check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dimension
        if not 1 <= dim <= self.dimension:
            raise ValueError(f"dim must be between 1 and the model's {self.dimension} dimensions, got {dim}")
        return dim


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of `x` scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def lowercased(tokenizer: Any) -> Any:
    """A fast tokenizer that lower-cases its input first (sentence-transformers' do_lower_case): `tokenizer` when
    it does already, else a copy (a tokenizer passed in stays as it is)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    steps = list(normalizer) if isinstance(normalizer, normalizers.Sequence) else [] if normalizer is None else [normalizer]
    if any(isinstance(step, normalizers.Lowercase) for step in steps):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), *steps])
    return tokenizer


def check_max_length(config: NewConfig, max_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens (room for the special tokens), got {max_length}")
    if config.position_embedding_type == "absolute" and max_length > config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds this model's {config.max_position_embeddings} absolute positions"
        )
    return max_length


def _embedding_architecture(name: str, num_labels: int) -> str:
    if name == "NewForSequenceClassification":
        raise ValueError("this checkpoint is a sequence classifier (NewForSequenceClassification): load it with "
                         "gte.Reranker (one label, query-document scores) or gte.Classifier")  # fmt: skip
    if name == "NewForTokenClassification" and num_labels == 1:
        return name  # the token-weight head of gte-multilingual-base: dense + sparse
    return "NewModel"
