"""The HTTP API over one or more `Embedder`s and `Reranker`s: OpenAI's /v1/embeddings and /v1/models,
TEI's /embed, /embed_sparse and /rerank, and /health, /info, /metrics.

Every request first passes the `Guard` (API key, payload limit, body-read timeout, request metrics).
An inference request is then parsed, routed to a served model (by its `model`, or by what its route
needs), validated and tokenized at the boundary (tokenizing in a thread pool), and queued on that
model's `Batcher`, which merges concurrent requests into token-budget batches for the library's own
inference calls on one worker thread. The event loop only parses, validates and answers, so /health
stays responsive while a batch computes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .. import __version__, threads
from ..embed import Embedder
from .errors import ApiError, describe_validation_error, install_error_handlers
from .guard import Guard
from .metrics import CONTENT_TYPE, Metrics
from .schemas import EmbedRequest, EmbedSparseRequest, OpenAIEmbeddingRequest, RequestBody, RerankRequest
from .served import EMBEDDINGS, RERANKING, SPARSE, Model, Models
from .settings import ServerSettings

INFERENCE_PATHS = ("/v1/embeddings", "/embed", "/embed_sparse", "/rerank")
ENDPOINTS = (*INFERENCE_PATHS, "/v1/models", "/health", "/info", "/metrics")


def served_name(model_name: str) -> str:
    """The name clients send as `model`: a checkpoint directory's own name (its path stays private), or the hub id."""
    path = Path(model_name)
    return path.resolve().name if path.is_dir() else model_name


Body = TypeVar("Body", bound=RequestBody)


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
        message, param = describe_validation_error(error.errors(), schema)
        raise ApiError(422, message, param=param) from None


def encode_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """OpenAI's `embedding` field: the floats (written as a JSON list), or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector


def json_response(content: Any) -> Response:
    """`content` as JSON, numpy arrays included: orjson writes a float32 vector about 20x faster than json.dumps
    of its list, and each float as the shortest text that reads back to the same float32."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


# ---------------------------------------------------------------------- the app
def create_app(models: Mapping[str, Model], settings: ServerSettings | None = None) -> FastAPI:
    """The app serving `models` ({served name: Embedder or Reranker}; the first is the default one)."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    served = Models(models, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.start()
        yield
        await served.stop()

    app = FastAPI(title="gte serve", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        Guard, api_key=settings.api_key, payload_limit=settings.payload_limit, body_timeout_s=settings.body_timeout_s,
        metrics=metrics, endpoints=ENDPOINTS,
    )  # fmt: skip
    _add_openai_routes(app, served)
    _add_tei_routes(app, served)
    _add_ops_routes(app, served, settings, metrics)
    return app


async def _embeddings(
    models: Models, body: Any, inputs: list, param: str, *, normalize: bool, truncation_side: str | None
) -> tuple[Any, list, list[int]]:
    """(the served model, its dense vectors, token counts) for an OpenAI or TEI embedding request."""
    served = models.pick(body.model, EMBEDDINGS)
    served.check_dimensions(body.dimensions)
    prompt = served.prompt(body.prompt_name, inputs)
    with served.admitted():
        ids = await served.token_lists(inputs, prompt=prompt, truncate=body.truncate, truncation_side=truncation_side,
                                       param=param)  # fmt: skip
        lengths = list(map(len, ids))
        key = ("embed", normalize, body.dimensions, served.model.prompt_length(prompt))  # one batch per pooling
        return served, await served.infer(key, ids, lengths), lengths


def _add_openai_routes(app: FastAPI, models: Models) -> None:
    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> Response:
        body = await parse_body(request, OpenAIEmbeddingRequest)
        served, vectors, lengths = await _embeddings(models, body, body.input, "input", normalize=True, truncation_side=None)
        data = [
            {"object": "embedding", "embedding": encode_vector(v, body.encoding_format), "index": i}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}
        return json_response({"object": "list", "data": data, "model": served.name, "usage": usage})

    @app.get("/v1/models")
    async def openai_models() -> dict:
        data = [{"id": s.name, "object": "model", "created": models.started, "owned_by": "gte"} for s in models.served]
        return {"object": "list", "data": data}


def _add_tei_routes(app: FastAPI, models: Models) -> None:
    @app.post("/embed")
    async def embed(request: Request) -> Response:
        body = await parse_body(request, EmbedRequest)
        _, vectors, _ = await _embeddings(models, body, body.inputs, "inputs", normalize=body.normalize,
                                          truncation_side=body.truncation_direction)  # fmt: skip
        return json_response(vectors)

    @app.post("/embed_sparse")
    async def embed_sparse(request: Request) -> Response:
        body = await parse_body(request, EmbedSparseRequest)
        served = models.pick(body.model, SPARSE)
        with served.admitted():
            ids = await served.token_lists(body.inputs, truncate=body.truncate, truncation_side=body.truncation_direction,
                                           param="inputs")  # fmt: skip
            weights = await served.infer(("sparse",), ids, list(map(len, ids)))
        return json_response([_sparse_values(served.model, row, w) for row, w in zip(ids, weights)])

    @app.post("/rerank")
    async def rerank(request: Request) -> Response:
        body = await parse_body(request, RerankRequest)
        served = models.pick(body.model, RERANKING)
        with served.admitted():
            pairs = await served.pair_tokens(body.query, body.texts, truncate=body.truncate,
                                             truncation_side=body.truncation_direction)  # fmt: skip
            scores = await served.infer(("rerank", not body.raw_scores), pairs, [len(ids) for ids, _ in pairs])
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return json_response([
            {"index": i, "score": float(scores[i]), **({"text": body.texts[i]} if body.return_text else {})}
            for i in order
        ])  # fmt: skip


def _sparse_values(embedder: Embedder, token_ids: list[int], weights: dict[str, float]) -> list[dict]:
    """TEI's sparse shape, [{"index": token id, "value": weight}], plus the token's text.

    The library keys weights by token text (`Embedder.token_text`); the index is the input's first token id
    with that text."""
    index: dict[str, int] = {}
    for token_id in token_ids:
        index.setdefault(embedder.token_text(token_id), token_id)
    return [{"index": index[token], "value": value, "token": token} for token, value in weights.items()]


def _add_ops_routes(app: FastAPI, models: Models, settings: ServerSettings, metrics: Metrics) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if not all(served.batcher.running for served in models.served):
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> dict:
        """The default (first) model's fields at the top, as TEI has them; every model under "models"."""
        return {
            **models.served[0].info(),
            "models": [served.info() for served in models.served],
            **{k: v for k, v in asdict(settings).items() if k != "api_key"},
            "auth": settings.api_key is not None,
            **threads.choose().report(),
            "version": __version__,
        }

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)
