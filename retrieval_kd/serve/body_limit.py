"""An ASGI middleware refusing request bodies over a size limit (413) before the application parses them."""

from __future__ import annotations

from retrieval_kd.serve.responses import error_response

__all__ = ["BodyLimit"]


class BodyLimit:
    """Answers 413 to a request whose body is larger than ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before the application sees the body. A body of up
    to ``drain_bytes`` is read and dropped first, so that a client still sending it gets the 413 rather than a
    broken pipe; a larger one is refused at once and the connection closed. A chunked body is read up to the
    limit and refused as soon as it passes it.
    """

    def __init__(self, app, max_bytes: int, drain_bytes: int | None = None):
        self.app, self.max_bytes = app, int(max_bytes)
        self.drain_bytes = int(drain_bytes) if drain_bytes is not None else max(16 * self.max_bytes, 16 << 20)

    def _too_large(self, what: str, close: bool = True) -> object:
        return error_response(413, f"{what} is over the server's limit of {self.max_bytes} "
                                   "bytes; send fewer or shorter queries per request (rkd serve --max-body-bytes)",
                              headers={"connection": "close"} if close else None)

    @staticmethod
    async def _drain(receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        if length is not None:
            if not length.isdigit():
                return await error_response(400, f"Content-Length {length.decode(errors='replace')!r} is not a "
                                                 "number")(scope, receive, send)
            if int(length) > self.max_bytes:
                drain = int(length) <= self.drain_bytes
                if drain:
                    await self._drain(receive)
                return await self._too_large(f"a request body of {length.decode()} bytes", close=not drain)(
                    scope, receive, send)
            return await self.app(scope, receive, send)
        if chunked is None:
            return await self.app(scope, receive, send)
        messages, total = [], 0
        while True:  # a chunked body: read it up to the limit, then replay it to the application
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._too_large(f"a chunked request body of at least {total} bytes")(scope, receive, send)
            messages.append(message)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
