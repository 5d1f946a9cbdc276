"""JSON bodies of the server's answers, serialised with orjson (several times faster than ``json`` per request)."""

from __future__ import annotations

import orjson
from fastapi.responses import Response

__all__ = ["JSONBytes", "error_response", "hits_json"]


class JSONBytes(Response):
    """A JSON response serialised by orjson (no per-request model validation of the output)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONBytes:
    """``{"error": message, ...extra}`` with an HTTP status: every error of the server has this shape."""
    return JSONBytes({"error": message, **extra}, status_code=status, headers=headers)


def hits_json(hits, with_text: bool) -> list[dict]:
    """One query's hits as JSON objects: ``doc_id`` and ``score``, with ``title`` and ``text`` when asked for."""
    if with_text:
        return [{"doc_id": h.doc_id, "score": float(h.score), "title": h.title, "text": h.text} for h in hits]
    return [{"doc_id": h.doc_id, "score": float(h.score)} for h in hits]
