"""The request limits. The body size, as ASGI middleware: a declared ``Content-Length``
over the limit is refused before reading, and a body that grows past it while
streaming (chunked uploads) stops with :class:`UploadTooLarge`. The header size and
the time a client may take to send its request, in the HTTP protocol itself
(:func:`guarded_protocol`), since no ASGI app sees a request before its headers end."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class UploadTooLarge(Exception):
    """A request body exceeded the configured limit."""

    def __init__(self, max_bytes: int):
        super().__init__(f"upload too large: the limit is {max_bytes / 1e6:g} MB per request")


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 and a JSON ``detail``."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await problem(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await problem(send, 413, str(UploadTooLarge(self.max_bytes)))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def problem(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON ``{"detail": ...}`` answer sent straight from middleware; the connection is then closed."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class ConnectionLimits:
    """What a connection may cost before the server hangs up on it (slow or oversized clients)."""

    max_header_bytes: int = 64 * 1024  # request line + headers; over it: 431
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers; then 408
    body_timeout_s: float = 30.0  # longest pause while a body is being received; then 408


LINGER_S = 2.0  # how long a refused connection is drained before it is closed


def guarded_protocol(limits: ConnectionLimits) -> type:
    """uvicorn's httptools protocol with ``limits``: uvicorn itself bounds neither the header size
    (httptools accepted a 50 MB header) nor the time a client takes to send a request (550 slowloris
    connections all stayed open), only the idle time between requests (``timeout_keep_alive``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _in_headers = True  # a new connection's first request has not sent its headers
        _deadline: asyncio.TimerHandle | None = None
        _refused = False  # answered 431/408: what still comes is read and dropped until the close

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(limits.header_timeout_s)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self._in_headers and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"request headers over {limits.max_header_bytes} bytes")
            elif self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
                self._arm(limits.body_timeout_s)  # a pause in the body starts now

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers, self._header_bytes = True, 0
            self._arm(limits.header_timeout_s)  # a keep-alive connection's next request

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._arm(limits.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()  # the request is in: the time the answer takes is the service's
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._in_headers and self._header_bytes == 0 and self.cycle is None:
                self.transport.close()  # connected and said nothing: no answer owed
            elif self._in_headers or (self.cycle is not None and self.cycle.more_body):
                self._refuse(408, "Request Timeout", "request not received in time")

        def _refuse(self, status: int, reason: str, detail: str) -> None:
            self._disarm()
            log.info("%s: %s; connection closed", "%s:%d" % self.client if self.client else "a client", detail)
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the handler (if any) sees the client as gone
                self.cycle.message_event.set()
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
            # Closing with unread input would reset the connection, and the client might never read
            # the answer: end our side, drop what still comes, and close for good a moment later.
            self._refused = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return GuardedHttpToolsProtocol
