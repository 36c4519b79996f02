"""API errors, rendered in the shape each API's clients expect.

Routes under /v1/ answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
The TEI routes answer in TEI's: {"error": message, "error_type": type}.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# kind -> (OpenAI "type", TEI "error_type")
KINDS = {
    "validation": ("invalid_request_error", "Validation"),
    "auth": ("authentication_error", "Unauthorized"),
    "overloaded": ("rate_limit_error", "Overloaded"),
    "backend": ("server_error", "Backend"),
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
    if path.startswith("/v1/"):
        body = {"error": {"message": error.message, "type": openai_type, "param": error.param, "code": error.code}}
    else:
        body = {"error": error.message, "error_type": tei_type}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for a request body that is not valid JSON or does not fit the schema."""
    messages, params = [], []
    for err in exc.errors():
        where = ".".join(map(str, err["loc"][1:])) or "body"  # loc[0] is "body"
        if err["type"] == "json_invalid":
            detail = err.get("ctx", {}).get("error", "")
            messages.append(f"the request body is not valid JSON ({detail} at character {err['loc'][-1]})")
        elif err["type"] == "missing" and where == "body":
            messages.append("the request body is missing: send a JSON object")
        else:
            messages.append(f"{where}: {err['msg']}")
            params.append(where)
    return "; ".join(messages), (params[0] if params else None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        return error_response(request.url.path, ApiError(422, message, param=param))
