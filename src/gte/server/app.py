"""The HTTP API over one or more `Embedder`s, `Reranker`s and `Classifier`s: OpenAI's /v1/embeddings and /v1/models;
TEI's /embed, /embed_all, /embed_sparse, /similarity, /rerank, /predict, /tokenize, /decode and its root route
(and gte's /embed_hybrid: /embed and /embed_sparse from one encoder pass);
Cohere's (and Jina's) /v1/rerank and /v2/rerank, Cohere's /v1/embed and /v2/embed; and /health, /info, /metrics.

Every request first passes the `Guard` (API key, payload limit, body-read timeout, request metrics).
An inference request is then parsed, routed to a served model (by its `model`, or by what its route
needs), validated and tokenized at the boundary (tokenizing in a thread pool), and queued on that
model's `Batcher`, which merges concurrent requests into token-budget batches for the library's own
inference calls on one worker thread. The event loop only parses, validates and answers, so /health
stays responsive while a batch computes.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .. import __version__, threads
from ..classify import activate
from ..embed import Embedder
from .errors import ApiError, describe_validation_error, install_error_handlers
from .guard import Guard
from .metrics import CONTENT_TYPE, Metrics
from .schemas import (
    CohereEmbedRequest, CohereRerankRequest, CohereV2EmbedRequest, CohereV2RerankRequest, DecodeRequest, EmbedAllRequest,
    EmbedHybridRequest, EmbedRequest, EmbedSparseRequest, OpenAIEmbeddingRequest, PredictRequest, RequestBody, RerankRequest,
    SimilarityParameters, SimilarityRequest, TextClassificationParameters, TextClassificationRequest, TokenizeRequest,
)  # fmt: skip
from .served import CLASSIFICATION, EMBEDDINGS, RERANKING, SPARSE, Model, Models, model_kind
from .settings import ServerSettings

INFERENCE_PATHS = ("/v1/embeddings", "/embed", "/embed_all", "/embed_sparse", "/embed_hybrid", "/similarity", "/rerank", "/predict",
                   "/v1/rerank", "/v2/rerank", "/v1/embed", "/v2/embed")  # fmt: skip
# Cohere's input_type -> the checkpoint's prompt of that name (sentence-transformers' names for the two searches)
COHERE_PROMPTS = {"search_query": "query", "search_document": "document", "classification": "classification",
                  "clustering": "clustering"}  # fmt: skip
COHERE_SEARCH_UNIT = 100  # documents per billed search unit, as Cohere counts them
ENDPOINTS = (*INFERENCE_PATHS, "/", "/tokenize", "/decode", "/v1/models", "/health", "/info", "/metrics")


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
def create_app(
    models: Mapping[str, Model], settings: ServerSettings | None = None, ranges: Mapping[str, np.ndarray] | None = None
) -> FastAPI:
    """The app serving `models` ({served name: Embedder, Reranker or Classifier}; the first is the default one), with
    int8 / uint8 calibration `ranges` ({served name: [2, dim]}) for the embedding models that have them."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    served = Models(models, settings, metrics, ranges)

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
    _add_cohere_routes(app, served)
    _add_ops_routes(app, served, settings, metrics)
    return app


async def _embeddings(
    models: Models, name: str | None, inputs: list, param: str, *, normalize: bool, dimensions: int | None = None,
    prompt_name: str | None = None, truncate: bool = True, truncation_side: str | None = None,
) -> tuple[Any, list, list[int]]:
    """(the served model, its dense vectors, token counts) for an OpenAI or TEI embedding request."""
    served = models.pick(name, EMBEDDINGS)
    served.check_dimensions(dimensions)
    prompt = served.prompt(prompt_name, inputs)
    with served.admitted():
        ids = await served.token_lists(inputs, prompt=prompt, truncate=truncate, truncation_side=truncation_side,
                                       param=param)  # fmt: skip
        lengths = list(map(len, ids))
        key = ("embed", normalize, dimensions, served.model.prompt_length(prompt))  # one batch per pooling
        return served, await served.infer(key, ids, lengths), lengths


async def _late_chunks(
    models: Models, name: str | None, inputs: list, param: str, *, dimensions: int | None, prompt_name: str | None
) -> tuple[Any, list, list[int]]:
    """(the served model, a vector per input, token counts) for Jina's late_chunking: the inputs are the chunks of
    one document, in order, embedded in one pass over the whole document (`Embedder.late_vectors`)."""
    served = models.pick(name, EMBEDDINGS)
    served.check_dimensions(dimensions)
    prompt = served.prompt(prompt_name, inputs)
    with served.admitted():
        chunks, prompt_ids = await served.chunk_tokens(inputs, prompt=prompt, param=param)
        lengths = list(map(len, chunks))
        (vectors,) = await served.infer(("late", prompt_ids, dimensions), [chunks], [sum(lengths) + len(prompt_ids)])
        return served, vectors, lengths


def _add_openai_routes(app: FastAPI, models: Models) -> None:
    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> Response:
        body = await parse_body(request, OpenAIEmbeddingRequest)
        arguments = dict(dimensions=body.dimensions, prompt_name=body.prompt_name)
        if body.late_chunking:
            served, vectors, lengths = await _late_chunks(models, body.model, body.input, "input", **arguments)
        else:
            served, vectors, lengths = await _embeddings(models, body.model, body.input, "input", normalize=True,
                                                         truncate=body.truncate, **arguments)  # fmt: skip
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
        _, vectors, _ = await _embeddings(
            models, body.model, body.inputs, "inputs", normalize=body.normalize, dimensions=body.dimensions,
            prompt_name=body.prompt_name, truncate=body.truncate, truncation_side=body.truncation_direction,
        )  # fmt: skip
        return json_response(vectors)

    @app.post("/embed_all")
    async def embed_all(request: Request) -> Response:
        """Every token's vector (the encoder's last hidden state), per input, without padding."""
        body = await parse_body(request, EmbedAllRequest)
        served = models.pick(body.model, EMBEDDINGS)
        prompt = served.prompt(body.prompt_name, body.inputs)
        with served.admitted():
            ids = await served.token_lists(body.inputs, prompt=prompt, truncate=body.truncate,
                                           truncation_side=body.truncation_direction, param="inputs")  # fmt: skip
            return json_response(await served.infer(("tokens",), ids, list(map(len, ids))))

    @app.post("/similarity")
    async def similarity(request: Request) -> Response:
        """The cosine of source_sentence's vector to each of sentences'."""
        body = await parse_body(request, SimilarityRequest)
        options = body.parameters or SimilarityParameters()
        texts = [body.inputs.source_sentence, *body.inputs.sentences]
        _, vectors, _ = await _embeddings(
            models, body.model, texts, "inputs.sentences", normalize=True, prompt_name=options.prompt_name,
            truncate=options.truncate, truncation_side=options.truncation_direction,
        )  # fmt: skip
        return json_response(Embedder.similarity(vectors[:1], vectors[1:])[0])

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Each label's score, best first, for a text, a pair, or a batch of them (a list per input)."""
        body = await parse_body(request, PredictRequest)
        single = not (isinstance(body.inputs, list) and isinstance(body.inputs[0], list))
        inputs = [body.inputs] if single else body.inputs
        rows = [x if isinstance(x, str) else x[0] if len(x) == 1 else (x[0], x[1]) for x in inputs]
        served, logits = await _classify(models, body.model, rows, truncate=body.truncate,
                                         truncation_side=body.truncation_direction)  # fmt: skip
        scores = activate(logits, "none" if body.raw_scores else served.model.activation).tolist()
        predictions = [served.model.ranked(row) for row in scores]
        return json_response(predictions[0] if single else predictions)

    @app.post("/")
    async def root(request: Request) -> Response:
        """TEI's root route, where huggingface_hub's `InferenceClient(model=URL)` posts: a body whose inputs are an
        object (sentence_similarity's) is a /similarity request; one for a classifier (the model it names, else the
        first served) is text classification (text_classification's); any other an /embed request
        (feature_extraction's)."""
        try:
            body = orjson.loads(await request.body())
            inputs, name = body.get("inputs"), body.get("model")
        except (orjson.JSONDecodeError, AttributeError):
            inputs, name = None, None  # /embed's parser says what is wrong
        if isinstance(inputs, dict):
            return await similarity(request)
        target = models.named(name if isinstance(name, str) else None).model
        return await (text_classification if CLASSIFICATION.fits(target) else embed)(request)

    async def text_classification(request: Request) -> Response:
        """The Hugging Face Inference API's answer: per text, [{label, score}] best first (top_k of them)."""
        body = await parse_body(request, TextClassificationRequest)
        options = body.parameters or TextClassificationParameters()
        served, logits = await _classify(models, body.model, body.inputs, truncate=True, truncation_side=None)
        scores = activate(logits, options.function_to_apply or served.model.activation).tolist()
        return json_response([served.model.ranked(row, options.top_k) for row in scores])

    @app.post("/embed_sparse")
    async def embed_sparse(request: Request) -> Response:
        body = await parse_body(request, EmbedSparseRequest)
        served = models.pick(body.model, SPARSE)
        with served.admitted():
            ids = await served.token_lists(body.inputs, truncate=body.truncate, truncation_side=body.truncation_direction,
                                           param="inputs")  # fmt: skip
            weights = await served.infer(("sparse",), ids, list(map(len, ids)))
        return json_response([_sparse_values(served.model, row, w) for row, w in zip(ids, weights)])

    @app.post("/embed_hybrid")
    async def embed_hybrid(request: Request) -> Response:
        """Per input, {"dense": vector, "sparse": /embed_sparse's weights}, from one encoder pass."""
        body = await parse_body(request, EmbedHybridRequest)
        served = models.pick(body.model, SPARSE)
        served.check_dimensions(body.dimensions)
        with served.admitted():
            ids = await served.token_lists(body.inputs, truncate=body.truncate, truncation_side=body.truncation_direction,
                                           param="inputs")  # fmt: skip
            results = await served.infer(("hybrid", body.normalize, body.dimensions), ids, list(map(len, ids)))
        return json_response([
            {"dense": dense, "sparse": _sparse_values(served.model, row, weights)}
            for row, (dense, weights) in zip(ids, results)
        ])  # fmt: skip

    @app.post("/rerank")
    async def rerank(request: Request) -> Response:
        body = await parse_body(request, RerankRequest)
        _, scores, _ = await _rerank(models, body.model, body.query, body.texts, "texts", normalize=not body.raw_scores,
                                     truncate=body.truncate, truncation_side=body.truncation_direction)  # fmt: skip
        return json_response([
            {"index": i, "score": scores[i], **({"text": body.texts[i]} if body.return_text else {})}
            for i in best_first(scores)
        ])  # fmt: skip

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        """The tokens /embed (or /rerank) would run for each text: the default prompt's too, unless prompt_name."""
        body = await parse_body(request, TokenizeRequest)
        served = models.named(body.model)
        if body.prompt_name is not None and not EMBEDDINGS.fits(served.model):
            raise ApiError(422, f"{served.name} is a {model_kind(served.model)}: prompts apply to embedding models",
                           param="prompt_name")  # fmt: skip
        prompt = served.prompt(body.prompt_name, body.inputs)
        return json_response(await served.token_details(body.inputs, add_special_tokens=body.add_special_tokens,
                                                        prompt=prompt))  # fmt: skip

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        body = await parse_body(request, DecodeRequest)
        served = models.named(body.model)
        ids = served.check_vocabulary(body.ids, "ids")
        return json_response(served.model.tokenizer.batch_decode(ids, skip_special_tokens=body.skip_special_tokens))


async def _rerank(
    models: Models, name: str | None, query: str, texts: list[str], param: str, *, normalize: bool, truncate: bool = True,
    truncation_side: str | None = None,
) -> tuple[Any, list[float], int]:
    """(the served reranker, one score per text in input order, tokens scored) for a TEI or Cohere rerank request."""
    served = models.pick(name, RERANKING)
    with served.admitted():
        pairs = await served.pair_tokens(query, texts, truncate=truncate, truncation_side=truncation_side, param=param)
        lengths = [len(ids) for ids, _ in pairs]
        scores = await served.infer(("rerank", normalize), pairs, lengths)
    return served, [float(score) for score in scores], sum(lengths)


async def _classify(
    models: Models, name: str | None, inputs: list[str | tuple[str, str]], *, truncate: bool, truncation_side: str | None
) -> tuple[Any, torch.Tensor]:
    """(the served classifier, the logits [n, labels]) of texts and (text, text_pair) pairs."""
    served = models.pick(name, CLASSIFICATION)
    with served.admitted():
        rows = await served.input_tokens(inputs, truncate=truncate, truncation_side=truncation_side, param="inputs")
        logits = await served.infer(("classify",), rows, [len(ids) for ids, _ in rows])
    return served, torch.from_numpy(np.asarray(logits))


def best_first(scores: list[float]) -> list[int]:
    """Indices of `scores`, highest first (input order among equals)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _sparse_values(embedder: Embedder, token_ids: list[int], weights: dict[str, float]) -> list[dict]:
    """TEI's sparse shape, [{"index": token id, "value": weight}], plus the token's text.

    The library keys weights by token text (`Embedder.token_text`); the index is the input's first token id
    with that text."""
    index: dict[str, int] = {}
    for token_id in token_ids:
        index.setdefault(embedder.token_text(token_id), token_id)
    return [{"index": index[token], "value": value, "token": token} for token, value in weights.items()]


def _add_cohere_routes(app: FastAPI, models: Models) -> None:
    """Cohere's rerank API, which Jina's, LangChain's and LlamaIndex's Cohere rerankers speak (relevance scores in
    [0, 1], the sigmoid of the reranker's logit, best first, cut to `top_n`), and its embed API (float, base64 and
    quantized vectors)."""

    @app.post("/v1/rerank")
    async def cohere_rerank(request: Request) -> Response:
        body = await parse_body(request, CohereRerankRequest)
        try:
            texts = body.texts()
        except ValueError as error:
            raise ApiError(422, str(error), param="documents") from None
        answer = await _cohere_rerank(models, body, texts, version="1")
        if body.return_documents:
            for result in answer["results"]:
                document = body.documents[result["index"]]
                result["document"] = document if isinstance(document, dict) else {"text": document}
        return json_response(answer)

    @app.post("/v2/rerank")
    async def cohere_rerank_v2(request: Request) -> Response:
        body = await parse_body(request, CohereV2RerankRequest)
        return json_response(await _cohere_rerank(models, body, body.documents, version="2"))

    @app.post("/v1/embed")
    async def cohere_embed(request: Request) -> Response:
        """Without embedding_types, v1 answers the float vectors as a plain list ("embeddings_floats")."""
        body = await parse_body(request, CohereEmbedRequest)
        answer = await _cohere_embed(models, body, body.embedding_types or ["float"], dimensions=None, version="1")
        if body.embedding_types is None:
            return json_response({**answer, "response_type": "embeddings_floats", "embeddings": answer["embeddings"]["float"]})
        return json_response({**answer, "response_type": "embeddings_by_type"})

    @app.post("/v2/embed")
    async def cohere_embed_v2(request: Request) -> Response:
        body = await parse_body(request, CohereV2EmbedRequest)
        types = body.embedding_types or ["float"]
        return json_response(await _cohere_embed(models, body, types, dimensions=body.output_dimension, version="2"))


async def _cohere_embed(models: Models, body: CohereEmbedRequest, types: list[str], *, dimensions: int | None,
                        version: str) -> dict:  # fmt: skip
    """Cohere's answer: {type: one vector per text} for each of `types`, the texts, meta."""
    served = models.pick(body.model, EMBEDDINGS)
    prompt = COHERE_PROMPTS.get(body.input_type)
    _, vectors, lengths = await _embeddings(
        models, served.name, body.texts, "texts", normalize=True, dimensions=dimensions,
        prompt_name=prompt if prompt in served.model.prompts else None, truncate=body.truncate != "NONE",
        truncation_side="left" if body.truncate == "START" else "right",
    )  # fmt: skip
    embeddings = {kind: _cohere_vectors(served, vectors, kind) for kind in dict.fromkeys(types)}
    meta = {"api_version": {"version": version}, "billed_units": {"input_tokens": sum(lengths)}}
    return {"id": str(uuid.uuid4()), "embeddings": embeddings, "texts": body.texts, "meta": meta}


def _cohere_vectors(served: Any, vectors: np.ndarray, kind: str) -> np.ndarray | list[str]:
    """One of Cohere's embedding types: float, base64 (of the float32 bytes), or a precision of gte.quantize."""
    if kind == "base64":
        return [encode_vector(vector, "base64") for vector in vectors]
    return served.quantized(vectors, "float32" if kind == "float" else kind, "embedding_types")


async def _cohere_rerank(models: Models, body: Any, texts: list[str], *, version: str) -> dict:
    """Cohere's answer: results, meta (API version, billed units, tokens), plus Jina's model and usage."""
    served, scores, tokens = await _rerank(models, body.model, body.query, texts, "documents", normalize=True)
    results = [{"index": i, "relevance_score": scores[i]} for i in best_first(scores)[: body.top_n]]
    meta = {
        "api_version": {"version": version},
        "billed_units": {"search_units": math.ceil(len(texts) / COHERE_SEARCH_UNIT)},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta, "model": served.name,
            "usage": {"total_tokens": tokens}}  # fmt: skip


def _add_ops_routes(app: FastAPI, models: Models, settings: ServerSettings, metrics: Metrics) -> None:
    @app.api_route("/health", methods=["GET", "HEAD"])
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
