"""The request body size limit, as ASGI middleware: a declared ``Content-Length``
over the limit is refused before reading, and a body that grows past it while
streaming (chunked uploads) stops with :class:`UploadTooLarge`."""

from __future__ import annotations

import json


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
                return await _problem(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await _problem(send, 413, str(UploadTooLarge(self.max_bytes)))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _problem(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
