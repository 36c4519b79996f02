"""API errors, rendered in the shape each API's clients expect.

Cohere's rerank routes (/v1/rerank, /v2/rerank) answer in Cohere's shape: {"message": message}.
Other routes under /v1/ answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
The TEI routes answer in TEI's: {"error": message, "error_type": type}.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from .schemas import RequestBody

COHERE_PATHS = ("/v1/rerank", "/v2/rerank", "/v1/embed", "/v2/embed")
# kind -> (OpenAI "type", TEI "error_type")
KINDS = {
    "validation": ("invalid_request_error", "Validation"),
    "auth": ("authentication_error", "Unauthorized"),
    "overloaded": ("rate_limit_error", "Overloaded"),
    "backend": ("server_error", "Backend"),
    "unavailable": ("server_error", "Unhealthy"),
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "validation",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers


def error_response(path: str, error: ApiError) -> JSONResponse:
    openai_type, tei_type = KINDS[error.kind]
    if path in COHERE_PATHS:
        body = {"message": error.message}
    elif path.startswith("/v1/"):
        body = {"error": {"message": error.message, "type": openai_type, "param": error.param, "code": error.code}}
    else:
        body = {"error": error.message, "error_type": tei_type}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def describe_validation_error(errors: list[dict[str, Any]], schema: type[RequestBody]) -> tuple[str, str | None]:
    """(message, param) for a request body that is not valid JSON or does not fit `schema`
    (`errors`: pydantic's ValidationError.errors())."""
    messages, params = [], []
    for err in errors:
        where = ".".join(map(str, err["loc"])) or "body"
        if err["type"] == "json_invalid":
            detail = err.get("ctx", {}).get("error", err["msg"])
            hint = "; a lone UTF-16 surrogate (\\ud800-\\udfff without its pair) is not text" if "escape" in detail else ""
            messages.append(f"the request body is not valid JSON ({detail}{hint})")
            continue
        if err["type"] == "extra_forbidden":
            messages.append(_refused_field(where, schema))
        elif err["type"] in ("missing", "invalid_inputs"):  # their messages say it all
            messages.append(f"{where}: {err['msg']}")
        else:  # a wrong type or value: show what came
            messages.append(f"{where}: {err['msg']}, got {_shown(err['input'])}")
        params.append(where)
    return "; ".join(messages), (params[0] if params else None)


def _refused_field(name: str, schema: type[RequestBody]) -> str:
    if name in schema.unsupported:
        return f"{name!r} is not supported: {schema.unsupported[name]}"
    return f"unknown field {name!r} (this route takes: {', '.join(schema.model_fields)})"


def _shown(value: Any, limit: int = 60) -> str:
    """A JSON value as JSON text, cut to `limit` characters."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, in the shape of the API its path belongs to."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown route, wrong method
        path, method = request.url.path, request.method
        if exc.status_code == 404:
            routes = ", ".join(f"{'/'.join(sorted(r.methods))} {r.path}" for r in request.app.routes if isinstance(r, APIRoute))
            message = f"there is no route {path}; this server has {routes}"
        elif exc.status_code == 405:
            message = f"{path} does not take {method}: use {(exc.headers or {}).get('Allow', 'another method')}"
        else:
            message = str(exc.detail)
        return error_response(path, ApiError(exc.status_code, message, headers=exc.headers))

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged with its traceback
        return error_response(request.url.path, ApiError(500, f"internal error ({type(exc).__name__})", kind="backend"))
