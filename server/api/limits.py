"""Request bounds enforced before a handler runs: body size, body time, header time.

A body over its size limit (declared or streamed) gets 413; a body that does not arrive in full within
`body_timeout` gets 408 (a client sending one byte a second would otherwise hold a connection and a
handler for ever). Headers are read before any ASGI code runs, so their deadline lives in the HTTP
protocol itself (`HeaderDeadlineProtocol`): a connection whose request headers are not complete within
`header_timeout` of its first byte is answered 408 and closed. Documented in the README.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import error_body


class _TooLarge(BaseException):
    """Raised from `receive` inside the app. Not an `Exception`: FastAPI turns any `Exception` raised while
    it reads a body into a 400, and this must reach `BodyLimits` to become its 413."""


class _TooSlow(BaseException):
    """As `_TooLarge`, for the 408."""


class BodyLimits:
    """413 for bodies over `max_bytes` (or the override for a path prefix: uploads), 408 for bodies that
    take longer than `body_timeout` seconds to arrive once the app starts reading them, both in the OpenAI
    error shape."""

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[str, int] | None = None,
                 body_timeout: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((v for p, v in self.overrides.items() if scope["path"].startswith(p)), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, 413, f"request body exceeds the limit of {limit} bytes", "request_too_large")
            return
        received = 0
        body_complete = False
        deadline: float | None = None  # from the app's first read: a request may wait for admission first
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete, deadline
            if body_complete:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.body_timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await _reject(send, 413, f"request body exceeds the limit of {limit} bytes", "request_too_large")
        except _TooSlow:
            if not response_started:
                await _reject(send, 408, f"the request body did not arrive within {self.body_timeout:g} s",
                              "request_timeout")


async def _reject(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers (uvicorn has none: its keep-alive
    timer starts only after a first response, and every received byte resets it)."""

    header_timeout = 10.0  # set per server by `header_deadline_protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(f"request headers did not arrive within {self.header_timeout:g} s",
                                     "invalid_request_error", "request_timeout")).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()


def header_deadline_protocol(header_timeout: float) -> type[Any]:
    """The protocol class for `uvicorn.Config(http=...)`, with this server's header deadline."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
