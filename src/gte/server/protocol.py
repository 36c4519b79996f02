"""The HTTP/1.1 protocol `gte serve` runs: uvicorn's h11 implementation, except that a request it cannot parse (a
Content-Length that is not one decimal number, a malformed header line) is answered in the error shape of the API
its path belongs to, as the app answers every other error, rather than with uvicorn's plain-text 400.

h11 parses a request's head in one piece and says only that it failed, so the path is read from the last request
line among the bytes received lately; without one, the answer takes TEI's shape (the default routes').
"""

from __future__ import annotations

import asyncio
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import ApiError, error_response

RECENT_BYTES = 16 * 1024  # h11's default limit on a request head
REQUEST_LINE = re.compile(rb"(?:^|\r?\n)[A-Z]+ (/[^ \r\n?#]*)\S* HTTP/1\.[01]\r?\n")
BAD_REQUEST = ApiError(
    400, "the request is not valid HTTP/1.1 (a malformed header: a Content-Length that is not one decimal number, "
    "a header line without a colon, ...): send it with an HTTP client library",
    headers={"Connection": "close"},
)  # fmt: skip


class Http11(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.recent = b""
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.recent = (self.recent + data)[-RECENT_BYTES:]
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        paths = REQUEST_LINE.findall(self.recent)
        response = error_response(paths[-1].decode("latin-1") if paths else "/", BAD_REQUEST)
        headers = [(name, value) for name, value in response.raw_headers if name != b"connection"]
        for event in (
            h11.Response(status_code=400, headers=[*headers, (b"connection", b"close")], reason=b"Bad Request"),
            h11.Data(data=response.body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
