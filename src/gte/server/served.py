"""The models one server serves: each with its own batcher, limits and metrics (`ServedModel`), and
the routing of a request to one of them, by the `model` it names or by what its route needs (`Models`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from ..classify import Classifier
from ..embed import Embedder, unit_rows
from ..int8 import dtype_name
from ..quantize import quantize_embeddings
from ..rerank import Reranker
from .batcher import Batcher
from .errors import ApiError
from .metrics import Metrics
from .settings import ServerSettings

Model = Embedder | Classifier  # a Reranker is a Classifier
RETRY_AFTER_S = 1
# Requests with up to this many characters are tokenized on the event loop (well under a millisecond); larger
# ones in a worker thread, so that the loop stays responsive. A thread hop costs more than a short text does.
INLINE_TOKENIZE_CHARS = 10_000


@dataclass(frozen=True)
class Need:
    """What a route needs from a model, and what to say about one that cannot give it."""

    what: str
    fits: Callable[[Model], bool]
    why_not: Callable[[str, Model], str]  # (served name, model) -> message


def model_kind(model: Model) -> str:
    """What a served model is, in /info's terms: "embedding", "reranker" or "classifier"."""
    return "embedding" if isinstance(model, Embedder) else "reranker" if isinstance(model, Reranker) else "classifier"


def _other_routes(model: Model) -> str:
    """The routes a model that cannot serve a request can serve instead."""
    routes = {"embedding": "POST /embed", "reranker": "POST /rerank or /predict", "classifier": "POST /predict"}
    return routes[model_kind(model)]


EMBEDDINGS = Need(
    "embeddings", lambda m: isinstance(m, Embedder),
    lambda name, m: f"{name} is a {model_kind(m)}: it has no embeddings; use {_other_routes(m)}",
)  # fmt: skip
SPARSE = Need(
    "sparse embeddings",
    lambda m: isinstance(m, Embedder) and m.has_sparse,
    lambda name, m: f"{name} has no token-weight head, so no sparse embeddings: serve a NewForTokenClassification "
    "checkpoint with one label (like gte-multilingual-base)",
)
RERANKING = Need(
    "reranking", lambda m: isinstance(m, Reranker),
    lambda name, m: f"{name} is {'an embedding model' if model_kind(m) == 'embedding' else 'a classifier'}, not a "
    f"reranker (a one-label classifier): use {_other_routes(m)}",
)  # fmt: skip
CLASSIFICATION = Need(
    "classification", lambda m: isinstance(m, Classifier),
    lambda name, m: f"{name} is an embedding model, not a sequence classifier: use {_other_routes(m)}",
)  # fmt: skip


class ServedModel:
    """One model behind the routes: its limits, tokenization, batcher and worker calls."""

    def __init__(
        self, name: str, model: Model, settings: ServerSettings, metrics: Metrics, ranges: np.ndarray | None = None
    ) -> None:
        self.name, self.model, self.settings = name, model, settings
        self.ranges = self._check_ranges(ranges)  # int8 / uint8 calibration: each dimension's low and high, [2, dim]
        self.max_input_length = model.max_length  # tokens per input: the model object's own limit
        self.default_prompt = self._default_prompt(settings) if isinstance(model, Embedder) else ""
        self.metrics = metrics.for_model(name)
        self.batcher = Batcher(
            self.run_batch,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            batching=settings.batching,
            metrics=self.metrics,
        )
        self.in_flight = 0

    # ------------------------------------------------------------------ worker thread
    def run_batch(self, key: Hashable, items: list) -> Sequence:
        """One merged batch, on the inference thread: the library's own calls, at the model's own compute budget."""
        kind, *options = key
        if kind == "embed":
            normalize, dim, prompt_length = options
            return self.model.encode_tokens(
                items, prompt_length=prompt_length, normalize=normalize, dim=dim, show_progress=False
            )
        if kind == "sparse":
            return self.model.sparse_tokens(items, show_progress=False)
        if kind == "hybrid":
            normalize, dim = options
            vectors, weights = self.model.encode_tokens(items, normalize=normalize, dim=dim, show_progress=False, sparse=True)
            return list(zip(vectors, weights))
        if kind == "tokens":
            return self.model.token_vectors(items, show_progress=False)
        if kind == "late":
            prompt_ids, dim = options
            return [self._late_chunks(chunks, list(prompt_ids), dim) for chunks in items]
        ids, types = zip(*items)
        types = None if types[0] is None else types
        if kind == "classify":
            return self.model.logits_tokens(ids, types, show_progress=False).numpy()
        (normalize,) = options
        return self.model.score_tokens(ids, types, normalize=normalize)

    def _late_chunks(self, chunks: list[list[int]], prompt_ids: list[int], dim: int | None) -> np.ndarray:
        """Late chunking of one document given as its chunks' token ids: [chunks, dim] (re-normalised when cut)."""
        ends = np.cumsum([0, *map(len, chunks)])
        spans = [(0, int(first), int(last)) for first, last in zip(ends, ends[1:])]
        vectors = self.model.late_vectors([list(chain.from_iterable(chunks))], spans, prompt_ids, show_progress=False)
        return vectors if dim is None else unit_rows(vectors[:, :dim])

    async def infer(self, key: Hashable, items: list, lengths: list[int]) -> Sequence:
        """Results for `items` (of `lengths` tokens), one per item: the batcher runs them in --max-batch-tokens
        batches, taking turns with other requests and merging with those of the same key."""
        try:
            return await self.batcher.submit(key, items, lengths)
        except Exception as error:  # the model failed on input that passed validation: a server fault
            raise ApiError(500, f"inference failed: {type(error).__name__}: {error}", kind="backend") from error

    # ------------------------------------------------------------------ validation at the boundary
    @contextmanager
    def admitted(self) -> Iterator[None]:
        """One inference request in flight (counted once its body is parsed), or 429 at the limit."""
        limit = self.settings.max_concurrent_requests
        if self.in_flight >= limit:
            raise ApiError(
                429, f"{self.name} is at --max-concurrent-requests {limit}: retry after {RETRY_AFTER_S} s",
                kind="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def _check_ranges(self, ranges: np.ndarray | None) -> np.ndarray | None:
        if ranges is None:
            return None
        if not isinstance(self.model, Embedder):
            raise ValueError(f"{self.name} is a {model_kind(self.model)}: ranges quantize embeddings")
        if ranges.shape != (2, self.model.dimension):
            raise ValueError(f"the ranges for {self.name} are [2, {ranges.shape[-1]}], its vectors have {self.model.dimension} "
                             "dimensions: calibrate on vectors of this model")  # fmt: skip
        return ranges

    def quantized(self, vectors: np.ndarray, precision: str, param: str) -> np.ndarray:
        """`vectors` [n, dim] at `precision` (gte.quantize); int8 / uint8 within the ranges given at start only, so
        that every request quantizes alike."""
        if precision.endswith("int8"):
            if self.ranges is None:
                raise ApiError(422, f"{self.name} has no calibration ranges, so no {precision} embeddings: start gte serve "
                               "with --ranges FILE.npy (each dimension's low and high, [2, dim]); binary and ubinary "
                               "need none", param=param)  # fmt: skip
            if vectors.shape[1] != self.ranges.shape[1]:
                raise ApiError(422, f"the ranges are for all {self.ranges.shape[1]} dimensions: {precision} embeddings "
                               "come at the full dimension only", param=param)  # fmt: skip
        return quantize_embeddings(vectors, precision, self.ranges)

    def check_dimensions(self, dim: int | None) -> None:
        if dim is not None and dim > self.model.dimension:
            raise ApiError(422, f"dimensions {dim} is more than the model's {self.model.dimension}", param="dimensions")

    def check_count(self, n: int, param: str) -> None:
        if n > self.settings.max_client_batch_size:
            raise ApiError(
                413,
                f"{n} inputs is more than --max-client-batch-size {self.settings.max_client_batch_size}: "
                "split them over several requests",
                param=param,
            )

    def prompt(self, prompt_name: str | None, inputs: list) -> str:
        """The prompt put before a request's texts: the one it names, else the default prompt (the server's, else
        the checkpoint's), as `Embedder.encode` picks it. Token-id inputs are used as given: no prompt."""
        if is_token_ids(inputs):
            if prompt_name is not None:
                raise ApiError(422, "prompt_name applies to texts; token ids are used as given: send texts, or put the "
                               "prompt's tokens in the token ids", param="prompt_name")  # fmt: skip
            return ""
        if prompt_name is None:
            return self.default_prompt
        try:
            return self.model.resolve_prompt(prompt_name)
        except ValueError:
            raise ApiError(
                422, f"prompt_name {prompt_name!r} is not one of {self.name}'s prompts ({self._prompt_names()}): send one "
                "of them, or no prompt_name for the default prompt", param="prompt_name",
            ) from None  # fmt: skip

    def _default_prompt(self, settings: ServerSettings) -> str:
        try:
            return self.model.resolve_prompt(settings.default_prompt_name, settings.default_prompt)
        except ValueError:
            raise ValueError(
                f"the default prompt name {settings.default_prompt_name!r} is not one of {self.name}'s prompts "
                f"({self._prompt_names()}): give one of them, or the prompt's text itself (--default-prompt)"
            ) from None

    def _prompt_names(self) -> str:
        return ", ".join(self.model.prompts)

    async def token_lists(
        self, inputs: list, *, prompt: str = "", truncate: bool, truncation_side: str | None, param: str
    ) -> list[list[int]]:
        """Texts tokenized after `prompt` (cut to the input limit on `truncation_side` when `truncate`), or token-id
        lists checked."""
        self.check_count(len(inputs), param)
        if is_token_ids(inputs):
            return self._check_token_ids(inputs, param)
        with _too_long(param):
            return await _call(sum(map(len, inputs)), self.model.tokenize, inputs, prompt=prompt, truncate=truncate,
                               truncation_side=truncation_side)  # fmt: skip

    async def chunk_tokens(self, texts: list, *, prompt: str, param: str) -> tuple[list[list[int]], tuple[int, ...]]:
        """Late chunking's token ids: each chunk's own tokens (no special tokens), and the prompt's."""
        self.check_count(len(texts), param)
        if is_token_ids(texts):
            raise ApiError(422, "late_chunking takes the chunks' texts, not token ids", param=param)
        encoded = await _call(sum(map(len, texts)) + len(prompt), self.model.tokenizer, [prompt, *texts],
                              add_special_tokens=False, return_attention_mask=False, verbose=False)  # fmt: skip
        prompt_ids, *chunks = encoded["input_ids"]
        return chunks, tuple(prompt_ids if prompt else ())

    async def input_tokens(
        self, inputs: list[str | tuple[str, str]], *, truncate: bool, truncation_side: str | None, param: str
    ) -> list[tuple]:
        """(token ids, token type ids or None) per input of a classifier: a text, or a (text, text_pair) pair."""
        self.check_count(len(inputs), param)
        with _too_long(param):
            chars = sum(len(x) if isinstance(x, str) else len(x[0]) + len(x[1]) for x in inputs)
            ids, types = await _call(chars, self.model.tokenize, inputs, truncate=truncate,
                                     truncation_side=truncation_side)  # fmt: skip
        return list(zip(ids, types or [None] * len(ids)))

    async def pair_tokens(
        self, query: str, texts: list[str], *, truncate: bool, truncation_side: str | None, param: str
    ) -> list[tuple]:
        """(token ids, token type ids or None) per (query, text) pair."""
        return await self.input_tokens([(query, text) for text in texts], truncate=truncate,
                                       truncation_side=truncation_side, param=param)  # fmt: skip

    async def token_details(self, texts: list[str], *, add_special_tokens: bool, prompt: str) -> list[list[dict]]:
        """TEI's /tokenize answer: per text (after `prompt`), its tokens as {id, text, special, start, stop}, the
        offsets in characters of the text sent (the prompt's tokens have none), not cut to the input limit."""
        self.check_count(len(texts), "inputs")
        full = [prompt + text for text in texts]
        encoded = await _call(sum(map(len, full)), self.model.tokenizer, full, add_special_tokens=add_special_tokens,
                              return_offsets_mapping=True, return_special_tokens_mask=True, return_attention_mask=False,
                              verbose=False)  # fmt: skip
        return [
            [_token(token_id, special, start - len(prompt), stop - len(prompt), text, self.model.tokenizer)
             for token_id, special, (start, stop) in zip(ids, specials, offsets)]
            for text, ids, specials, offsets in zip(
                texts, encoded["input_ids"], encoded["special_tokens_mask"], encoded["offset_mapping"]
            )
        ]  # fmt: skip

    def _check_token_ids(self, lists: list[list[int]], param: str) -> list[list[int]]:
        for i, ids in enumerate(lists):
            if len(ids) > self.max_input_length:
                raise ApiError(
                    413,
                    f"{param}[{i}] has {len(ids)} token ids, more than --max-input-length {self.max_input_length}; "
                    "token ids are never truncated: shorten the list",
                    param=param,
                )
        return self.check_vocabulary(lists, param)

    def check_vocabulary(self, lists: list[list[int]], param: str) -> list[list[int]]:
        vocab_size = self.model.vocab_size
        for i, ids in enumerate(lists):
            if bad := [t for t in ids if not 0 <= t < vocab_size]:
                raise ApiError(
                    422,
                    f"{param}[{i}] holds token id {bad[0]}, outside the vocabulary (0 to {vocab_size - 1})",
                    param=param,
                )
        return lists

    def info(self) -> dict:
        model = self.model
        return {
            "model_id": self.name,
            "model_type": model_kind(model),
            "sparse": SPARSE.fits(model),
            "hidden_size": model.model.config.hidden_size,
            "dtype": dtype_name(model.dtype, model.int8_fidelity),
            "int8_fidelity": None if model.int8_fidelity is None else model.int8_fidelity.as_dict(),
            "device": str(model.device),
            "backend": model.backend,
            "max_input_length": self.max_input_length,
        }


class Models:
    """The served models, by name, in the order given (the first is the default one /info describes)."""

    def __init__(
        self, models: Mapping[str, Model], settings: ServerSettings, metrics: Metrics,
        ranges: Mapping[str, np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        if not models:
            raise ValueError("create_app needs at least one Embedder, Reranker or Classifier to serve")
        ranges = ranges or {}
        if set(ranges) - set(models):
            raise ValueError(f"ranges for {', '.join(sorted(set(ranges) - set(models)))}, which is not served")
        self.served = [ServedModel(name, model, settings, metrics, ranges.get(name)) for name, model in models.items()]
        self.by_name = {served.name: served for served in self.served}
        self.started = int(time.time())

    def named(self, name: str | None) -> ServedModel:
        """The model named `name` (a 404 listing the served ones if there is none), or the default (first) one."""
        if name is None:
            return self.served[0]
        if name not in self.by_name:
            names = ", ".join(f"`{served.name}`" for served in self.served)
            raise ApiError(
                404, f"The model `{name}` does not exist: this server serves {names} (see GET /v1/models)",
                param="model", code="model_not_found",
            )  # fmt: skip
        return self.by_name[name]

    def pick(self, name: str | None, need: Need) -> ServedModel:
        """The model named `name`, or, without a name, the one served model that fits `need`."""
        candidates = [self.named(name)] if name is not None else self.served
        fitting = [served for served in candidates if need.fits(served.model)]
        if len(fitting) == 1:
            return fitting[0]
        if fitting:
            choices = ", ".join(f"`{served.name}`" for served in fitting)
            raise ApiError(400, f"several served models give {need.what} ({choices}): name one in `model`", param="model")
        raise ApiError(400, "; ".join(need.why_not(served.name, served.model) for served in candidates))

    def start(self) -> None:
        for served in self.served:
            served.batcher.start()

    async def stop(self) -> None:
        for served in self.served:
            await served.batcher.stop()


def _token(token_id: int, special: int, start: int, stop: int, text: str, tokenizer: Any) -> dict:
    """One token of /tokenize: a special token (or a prompt's) by its vocabulary string, without offsets; another by
    the characters of `text` it covers."""
    if special or start < 0:
        return {"id": token_id, "text": tokenizer.convert_ids_to_tokens(token_id), "special": bool(special),
                "start": None, "stop": None}  # fmt: skip
    return {"id": token_id, "text": text[start:stop], "special": False, "start": start, "stop": stop}


def is_token_ids(inputs: list) -> bool:
    """Whether a request's parsed inputs are token-id lists (else texts)."""
    return isinstance(inputs[0], list)


async def _call(chars: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` (a tokenizer call on `chars` characters) inline when short, else in a thread."""
    if chars <= INLINE_TOKENIZE_CHARS:
        return function(*args, **kwargs)
    return await run_in_threadpool(function, *args, **kwargs)


@contextmanager
def _too_long(param: str) -> Iterator[None]:
    """The library's ValueError for an over-long input with truncation off, as a 413."""
    try:
        yield
    except ValueError as error:
        hint = 'max_length is this server\'s --max-input-length; send "truncate": true to cut inputs to it'
        raise ApiError(413, f"{error} ({hint})", param=param) from error
