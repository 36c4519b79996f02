"""The ASGI layer every HTTP request passes first: the API key, the payload limit, the body-read
timeout, and the request metrics.

The body is read here, in full, before the app sees the request: a declared Content-Length over
the limit is refused before a byte of the body is read, a streamed body is refused as soon as it
passes the limit, and a body that does not arrive within the timeout gets 408. Requests that are
still arriving therefore hold no inference slot (the app counts concurrency once a body is parsed).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import ApiError, error_response
from .metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/health",)  # answered without the API key (load balancer probes)
CLIENT_GONE = 499  # the status recorded for a client that left before its body arrived (nginx's convention)
SHUTTING_DOWN = ApiError(
    503, "the server shut down before this request was answered (its body had not arrived, or its inference had not "
    "run, within --graceful-shutdown-timeout): send it again once the server is back",
    kind="unavailable", headers={"Connection": "close"},
)  # fmt: skip


class ClientGone(Exception):
    """The client disconnected while its request body was arriving."""


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        payload_limit: int,
        body_timeout_s: float,
        metrics: Metrics,
        endpoints: tuple[str, ...],
    ) -> None:
        self.app, self.api_key, self.metrics, self.endpoints = app, api_key, metrics, endpoints
        self.payload_limit, self.body_timeout_s = payload_limit, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        start, status, answered = time.perf_counter(), 500, False

        async def send_recorded(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self._handle(scope, receive, send_recorded, endpoint)
        except ClientGone:
            status = CLIENT_GONE
        except asyncio.CancelledError:  # uvicorn's graceful-shutdown timeout ran out with this request unanswered
            if answered:  # its answer has started: nothing more to say
                raise
            await error_response(scope["path"], SHUTTING_DOWN)(scope, receive, send_recorded)
        finally:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        path = scope["path"]
        try:
            self._check_key(scope)
            self._check_length(scope)
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except ApiError as error:
            return await error_response(path, error)(scope, receive, send)
        except asyncio.TimeoutError:
            error = ApiError(
                408, f"the request body did not arrive within --body-timeout {self.body_timeout_s:g} s",
                headers={"Connection": "close"},
            )  # fmt: skip
            return await error_response(path, error)(scope, receive, send)
        self.metrics.body_size.labels(endpoint=endpoint).observe(len(body))
        await self.app(scope, _replay(body, receive), send)

    def _check_key(self, scope: Scope) -> None:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                kind="auth", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    def _check_length(self, scope: Scope) -> None:
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.payload_limit:
            raise self._too_large(f"{int(declared):,} bytes")

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.payload_limit:
                raise self._too_large(f"more than {self.payload_limit:,} bytes", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: str, close: bool = False) -> ApiError:
        return ApiError(
            413, f"the request body ({size}) is over --payload-limit {self.payload_limit:,} bytes: "
            "send fewer or shorter inputs per request", headers={"Connection": "close"} if close else None,
        )  # fmt: skip


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then waits on the client (for its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
