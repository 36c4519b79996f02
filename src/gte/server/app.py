"""The HTTP API over one `Embedder` or `Reranker`: OpenAI's /v1/embeddings and /v1/models, TEI's
/embed, /embed_sparse and /rerank, and /health, /info, /metrics.

Every inference request is validated and tokenized at the boundary (tokenizing in a thread pool),
then queued on the `Batcher`, which merges concurrent requests into token-budget batches for the
library's own inference calls (`Embedder.encode_tokens`, `Embedder.sparse_tokens`,
`Reranker.score_tokens`) on one worker thread. The event loop only parses, validates and answers, so
/health stays responsive while a batch computes.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..embed import Embedder
from ..rerank import Reranker
from .batcher import Batcher
from .errors import ApiError, describe_validation_error, install_error_handlers
from .guard import Guard
from .metrics import CONTENT_TYPE, Metrics
from .schemas import (
    EmbedRequest,
    EmbedSparseRequest,
    OpenAIEmbeddingRequest,
    RerankRequest,
)

INFERENCE_PATHS = ("/v1/embeddings", "/embed", "/embed_sparse", "/rerank")
ENDPOINTS = (*INFERENCE_PATHS, "/v1/models", "/health", "/info", "/metrics")
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServerSettings:
    model_name: str | None = None  # what clients send as "model"; default: the model as it was named
    max_batch_tokens: int = 16384  # token budget of one merged batch
    max_wait_ms: float = 2.0  # how long the oldest queued request waits for company
    max_concurrent_requests: int = 512  # inference requests in flight; more get 429
    max_client_batch_size: int = 32  # inputs per request; more get 413
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    batching: bool = True  # False: every request is its own batch (a baseline for benchmarks)
    payload_limit: int = 2_000_000  # bytes of one request body (TEI's default); more get 413 before they are read
    body_timeout_s: float = 30.0  # a request body must arrive within this time; else 408

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "body_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: give a key, or none to serve without authentication")


class Service:
    """The model(s) behind the routes: limits, tokenization, and the batcher's worker calls."""

    def __init__(self, embedder: Embedder | None, reranker: Reranker | None, settings: ServerSettings) -> None:
        if embedder is None and reranker is None:
            raise ValueError("create_app needs an Embedder or a Reranker to serve")
        self.embedder, self.reranker, self.settings = embedder, reranker, settings
        model = embedder or reranker
        self.model_name = settings.model_name or served_name(model.model_name)
        self.max_input_length = model.max_length  # tokens per input: the model object's own limit
        self.metrics = Metrics()
        self.batcher = Batcher(
            self.run_batch,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            batching=settings.batching,
            metrics=self.metrics,
        )
        self.started = int(time.time())
        self.in_flight = 0

    # ------------------------------------------------------------------ worker thread
    def run_batch(self, key: Hashable, items: list) -> Sequence:
        """One merged batch, on the inference thread: the library's own calls, nothing else."""
        kind, *options = key
        budget = self.settings.max_batch_tokens
        if kind == "embed":
            normalize, dim = options
            return self.embedder.encode_tokens(
                items, batch_tokens=budget, normalize=normalize, dim=dim, show_progress=False
            )
        if kind == "sparse":
            return self.embedder.sparse_tokens(items, batch_tokens=budget, show_progress=False)
        (normalize,) = options
        ids, types = zip(*items)
        return self.reranker.score_tokens(
            ids, None if types[0] is None else types, normalize=normalize, batch_tokens=budget
        )

    async def infer(self, key: Hashable, items: list, tokens: int) -> Sequence:
        try:
            return await self.batcher.submit(key, items, tokens)
        except Exception as error:  # the model failed on input that passed validation: a server fault
            raise ApiError(500, f"inference failed: {type(error).__name__}: {error}", kind="backend") from error

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """One inference request in flight (counted once its body is parsed), or 429 at the limit."""
        limit = self.settings.max_concurrent_requests
        if self.in_flight >= limit:
            raise ApiError(
                429, f"the server is at --max-concurrent-requests {limit}: retry after {RETRY_AFTER_S} s",
                kind="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    # ------------------------------------------------------------------ validation at the boundary
    def need_embedder(self, what: str) -> Embedder:
        if self.embedder is None:
            raise ApiError(400, f"{self.model_name} is a reranker: it has no {what}; use POST /rerank")
        return self.embedder

    def need_sparse(self) -> Embedder:
        embedder = self.need_embedder("sparse embeddings")
        if not embedder.has_sparse:
            raise ApiError(
                400,
                f"{self.model_name} has no token-weight head, so no sparse embeddings: serve a "
                "NewForTokenClassification checkpoint with one label (like gte-multilingual-base)",
            )
        return embedder

    def need_reranker(self) -> Reranker:
        if self.reranker is None:
            raise ApiError(400, f"{self.model_name} is an embedding model, not a reranker: use POST /embed")
        return self.reranker

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(
                404,
                f"The model `{name}` does not exist: this server serves `{self.model_name}` (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_dimensions(self, dim: int | None, embedder: Embedder) -> None:
        if dim is not None and dim > embedder.hidden_size:
            raise ApiError(422, f"dimensions {dim} is more than the model's {embedder.hidden_size}", param="dimensions")

    def check_count(self, n: int, param: str) -> None:
        if n > self.settings.max_client_batch_size:
            raise ApiError(
                413,
                f"{n} inputs is more than --max-client-batch-size {self.settings.max_client_batch_size}: "
                "split them over several requests",
                param=param,
            )

    async def token_lists(self, embedder: Embedder, inputs: list, *, truncate: bool, param: str) -> list[list[int]]:
        """Texts tokenized (cut to the input limit when `truncate`), or token-id lists checked."""
        self.check_count(len(inputs), param)
        if isinstance(inputs[0], list):
            return self._check_token_ids(inputs, embedder.vocab_size, param)
        with _too_long(param):
            return await run_in_threadpool(embedder.tokenize, inputs, truncate=truncate)

    async def pair_tokens(self, reranker: Reranker, query: str, texts: list[str], *, truncate: bool) -> list[tuple]:
        """(token ids, token type ids or None) per (query, text) pair."""
        self.check_count(len(texts), "texts")
        with _too_long("texts"):
            ids, types = await run_in_threadpool(reranker.tokenize_pairs, query, texts, truncate=truncate)
        return list(zip(ids, types or [None] * len(ids)))

    def _check_token_ids(self, lists: list[list[int]], vocab_size: int, param: str) -> list[list[int]]:
        for i, ids in enumerate(lists):
            if len(ids) > self.max_input_length:
                raise ApiError(
                    413,
                    f"{param}[{i}] has {len(ids)} token ids, more than --max-input-length {self.max_input_length}; "
                    "token ids are never truncated: shorten the list",
                    param=param,
                )
            if bad := [t for t in ids if not 0 <= t < vocab_size]:
                raise ApiError(
                    422,
                    f"{param}[{i}] holds token id {bad[0]}, outside the vocabulary (0 to {vocab_size - 1})",
                    param=param,
                )
        return lists

    def info(self) -> dict:
        model = self.embedder or self.reranker
        return {
            "model_id": self.model_name,
            "model_type": "reranker" if self.embedder is None else "embedding",
            "sparse": bool(self.embedder and self.embedder.has_sparse),
            "hidden_size": model.model.config.hidden_size,
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
            "backend": model.backend,
            "max_input_length": self.max_input_length,
            **{k: v for k, v in asdict(self.settings).items() if k not in ("model_name", "api_key")},
            "auth": self.settings.api_key is not None,
            "version": __version__,
        }


@contextmanager
def _too_long(param: str) -> Iterator[None]:
    """The library's ValueError for an over-long input with truncation off, as a 413."""
    try:
        yield
    except ValueError as error:
        hint = 'max_length is this server\'s --max-input-length; send "truncate": true to cut inputs to it'
        raise ApiError(413, f"{error} ({hint})", param=param) from error


def served_name(model_name: str) -> str:
    """The name clients send as `model`: a checkpoint directory's own name (its path stays private), or the hub id."""
    path = Path(model_name)
    return path.resolve().name if path.is_dir() else model_name


Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, schema: type[Body]) -> Body:
    """The request's JSON body as `schema`, by pydantic's strict parser: UTF-8 only, no lone surrogates,
    bounded nesting; anything else is a 415 or a 422 saying what was wrong."""
    media = request.headers.get("content-type", "application/json").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, f"the body's Content-Type is {media!r}: send JSON with `Content-Type: application/json`")
    body = await request.body()
    if not body or body.isspace():
        raise ApiError(422, "the request body is missing: send a JSON object")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(422, f"the request body is not UTF-8 (byte {body[error.start]:#04x} at offset {error.start}): "
                       "send JSON encoded as UTF-8") from None  # fmt: skip
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        message, param = describe_validation_error(error.errors())
        raise ApiError(422, message, param=param) from None


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """OpenAI's `embedding` field: floats, or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


# ---------------------------------------------------------------------- the app
def create_app(
    embedder: Embedder | None = None, reranker: Reranker | None = None, settings: ServerSettings | None = None
) -> FastAPI:
    service = Service(embedder, reranker, settings or ServerSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="gte serve", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        Guard, api_key=service.settings.api_key, payload_limit=service.settings.payload_limit,
        body_timeout_s=service.settings.body_timeout_s, metrics=service.metrics, endpoints=ENDPOINTS,
    )  # fmt: skip
    _add_openai_routes(app, service)
    _add_tei_routes(app, service)
    _add_ops_routes(app, service)
    return app


def _add_openai_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> JSONResponse:
        body = await parse_body(request, OpenAIEmbeddingRequest)
        service.check_model(body.model)
        embedder = service.need_embedder("embeddings")
        service.check_dimensions(body.dimensions, embedder)
        with service.admitted():
            ids = await service.token_lists(embedder, body.input, truncate=body.truncate, param="input")
            tokens = sum(map(len, ids))
            vectors = await service.infer(("embed", True, body.dimensions), ids, tokens)
        data = [
            {"object": "embedding", "embedding": encode_vector(v, body.encoding_format), "index": i}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": service.model_name, "usage": usage})

    @app.get("/v1/models")
    async def openai_models() -> dict:
        model = {"id": service.model_name, "object": "model", "created": service.started, "owned_by": "gte"}
        return {"object": "list", "data": [model]}


def _add_tei_routes(app: FastAPI, service: Service) -> None:
    @app.post("/embed")
    async def embed(request: Request) -> JSONResponse:
        body = await parse_body(request, EmbedRequest)
        embedder = service.need_embedder("embeddings")
        service.check_dimensions(body.dimensions, embedder)
        with service.admitted():
            ids = await service.token_lists(embedder, body.inputs, truncate=body.truncate, param="inputs")
            vectors = await service.infer(("embed", body.normalize, body.dimensions), ids, sum(map(len, ids)))
        return JSONResponse(vectors.tolist())

    @app.post("/embed_sparse")
    async def embed_sparse(request: Request) -> JSONResponse:
        body = await parse_body(request, EmbedSparseRequest)
        embedder = service.need_sparse()
        with service.admitted():
            ids = await service.token_lists(embedder, body.inputs, truncate=body.truncate, param="inputs")
            weights = await service.infer(("sparse",), ids, sum(map(len, ids)))
        return JSONResponse([_sparse_values(embedder, row, w) for row, w in zip(ids, weights)])

    @app.post("/rerank")
    async def rerank(request: Request) -> JSONResponse:
        body = await parse_body(request, RerankRequest)
        reranker = service.need_reranker()
        with service.admitted():
            pairs = await service.pair_tokens(reranker, body.query, body.texts, truncate=body.truncate)
            scores = await service.infer(("rerank", not body.raw_scores), pairs, sum(len(ids) for ids, _ in pairs))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return JSONResponse([
            {"index": i, "score": float(scores[i]), **({"text": body.texts[i]} if body.return_text else {})}
            for i in order
        ])  # fmt: skip


def _sparse_values(embedder: Embedder, token_ids: list[int], weights: dict[str, float]) -> list[dict]:
    """TEI's sparse shape, [{"index": token id, "value": weight}], plus the token's text.

    The library keys weights by token text (`tokenizer.decode([id])`); the index is the input's
    first token id with that text."""
    index: dict[str, int] = {}
    for token_id in token_ids:
        index.setdefault(embedder.tokenizer.decode([token_id]), token_id)
    return [{"index": index[token], "value": value, "token": token} for token, value in weights.items()]


def _add_ops_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if not service.batcher.running:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> dict:
        return service.info()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
