"""Clients who leave: once a request's body is read, the connection is watched, and if the
client goes away before its answer, the request's work is cancelled (waiting model
batches and decodes are dropped, see :mod:`medcls.serving.batching`; images its batch was
decoding when it left skip the model, see :mod:`medcls.serving.app`) and one line is
logged instead of a traceback. A client that leaves during its upload ends the same way."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class CancelOnDisconnect:
    """ASGI middleware: cancels the request's handler when its client disconnects."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_read = asyncio.Event()
        answered = False  # the whole answer is sent: the handler may still clean up (uploaded files)
        started = False  # its first part is sent

        async def tracked_receive():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()  # (a disconnect during the upload ends the handler with ClientDisconnect)
            return message

        async def client_left() -> None:
            # The handler does not read again once the body is in (no streaming responses here),
            # so the next message can only be the disconnect (uvicorn also sends one after the answer).
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        async def tracked_send(message) -> None:
            nonlocal answered, started
            started = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        handler = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        watcher = asyncio.ensure_future(client_left())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handler.cancel()
            raise
        finally:
            watcher.cancel()
        if not handler.done() and not answered:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
            if not started:  # nginx's "client closed request", for the middleware that counts answers
                await send({"type": "http.response.start", "status": 499, "headers": []})
            log.info("%s left before the answer to %s %s; its work was cancelled", _client(scope),
                     scope["method"], scope["path"])
            return
        try:
            await handler
        except ClientDisconnect:
            log.info("%s left during its upload to %s %s", _client(scope), scope["method"], scope["path"])


def _client(scope) -> str:
    client = scope.get("client")
    return f"client {client[0]}:{client[1]}" if client else "a client"
