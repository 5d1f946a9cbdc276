"""The search service: a FastAPI application over loaded retrievers, one micro-batching worker per index.

Endpoints (JSON; OpenAPI at ``/openapi.json``, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, both from assets
that fastapi-offline installs, so the pages work without network):

* ``POST /search`` ``{"index": name, "queries": [...], "k": 10, "with_text": false}`` ->
  ``{"index", "k", "results": [[{"doc_id", "score"[, "title", "text"]}, ...] per query], "took_ms"}``
* ``GET /search?index=NAME&q=TEXT[&q=TEXT...]&k=10&with_text=false`` -> the same
* ``GET /indexes`` -> ``{"indexes": [{"name", "kind", ...describe()}]}``
* ``GET /health`` -> ``{"status": "ok", "indexes": [...], "uptime_s"}``
* ``GET /stats`` -> per index: requests, queries, search calls, the mean and largest batch

Every error is ``{"error": message}`` with a 4xx status saying what is wrong (404 unknown index, 413 body too
large, 422 a value or JSON type the request may not have, with the field named); an error never stops the
server. Retrievers are loaded before the application is made (the CLI does it once, at start).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from retrieval_kd import __version__
from retrieval_kd.serve.batcher import MicroBatcher
from retrieval_kd.serve.body_limit import BodyLimit
from retrieval_kd.serve.config import ServeConfig
from retrieval_kd.serve.responses import JSONBytes, error_response, hits_json

logger = logging.getLogger(__name__)

__all__ = ["HybridSpec", "create_app"]

#: index kinds whose queries go through a model: their worker waits ``batch_window_ms`` for company
MODEL_KINDS = ("dense",)


@dataclass(frozen=True)
class HybridSpec:
    """A fusion of served indexes (:class:`~retrieval_kd.search.hybrid.HybridRetriever`), by their names."""

    members: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    normalization: str = "minmax"
    depth: int = 100


@dataclass
class _Served:
    name: str
    kind: str
    describe: dict
    batcher: MicroBatcher


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("a query needs at least one non-space character")
    return text


def _request_model(config: ServeConfig) -> type[BaseModel]:
    query = Annotated[str, StringConstraints(min_length=1, max_length=config.max_query_chars),
                      AfterValidator(_not_blank)]

    class SearchRequest(BaseModel):
        """One or many queries against one served index (or hybrid)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        index: str | None = Field(None, description="a served index or hybrid (GET /indexes); may be left out "
                                                    "when the server serves one index")
        queries: list[query] = Field(min_length=1, max_length=config.max_queries,
                                     description=f"1..{config.max_queries} query texts of at most "
                                                 f"{config.max_query_chars} characters")
        k: int = Field(config.default_k, ge=1, le=config.max_k, description=f"hits per query, 1..{config.max_k}")
        with_text: bool = Field(False, description="add each hit's title and text")

    return SearchRequest


class Hit(BaseModel):
    doc_id: str
    score: float
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    index: str
    k: int
    results: list[list[Hit]] = Field(description="one list of hits per query, in the order of the queries, best "
                                                 "first")
    took_ms: float


class ErrorBody(BaseModel):
    error: str


def _field(loc: tuple, rename: Mapping[str, str]) -> str:
    parts = [str(rename.get(str(p), p)) for p in loc if p not in ("body", "query")]
    return ".".join(parts) or "body"


def validation_message(errors: list[dict], rename: Mapping[str, str] | None = None) -> str:
    """One readable line from pydantic's errors: ``k: Input should be less than or equal to 1000; ...``."""
    lines = []
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            lines.append(f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON")
            continue
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "required"
        lines.append(f"{_field(tuple(err.get('loc', ())), rename or {})}: {msg}")
    return "; ".join(lines)


def _plain_errors(errors: list[dict]) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]


def create_app(indexes: Mapping[str, Any], hybrids: Mapping[str, HybridSpec] | None = None,
               config: ServeConfig | None = None, warmup: bool = True) -> FastAPI:
    """The service over loaded retrievers.

    Args:
        indexes: ``{name: retriever}``; a retriever has ``kind``, ``describe()`` and ``search(texts, k, with_text)``
            (:class:`~retrieval_kd.search.retriever.Retriever`).
        hybrids: ``{name: HybridSpec}`` fusions of ``indexes`` by name, served under their own names.
        config: limits and batching (:class:`ServeConfig`).
        warmup: search one query per index when the server starts (the first request then pays no lazy set-up).
    """
    config = config or ServeConfig()
    hybrids = dict(hybrids or {})
    if not indexes:
        raise ValueError("nothing to serve: give at least one index")
    clash = sorted(set(indexes) & set(hybrids))
    if clash:
        raise ValueError(f"hybrid name(s) {', '.join(clash)} are also index names; name them apart")
    locks = {name: threading.Lock() for name in indexes}
    served: dict[str, _Served] = {}
    for name, retriever in indexes.items():
        kind = str(getattr(retriever, "kind", "unknown"))
        window = config.batch_window_ms / 1000 if kind in MODEL_KINDS else 0.0
        served[name] = _Served(name, kind, _describe(retriever),
                               MicroBatcher(_search_fn(retriever), window, config.max_batch, [locks[name]], name))
    for name, spec in hybrids.items():
        served[name] = _hybrid(name, spec, indexes, served, locks, config)

    started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for entry in served.values():
            await entry.batcher.start()
        if warmup:
            for entry in served.values():
                await entry.batcher.run_once(["warm up"])
        logger.info("serving %d index(es): %s", len(served), ", ".join(f"{n} ({e.kind})" for n, e in served.items()))
        try:
            yield
        finally:
            for entry in served.values():
                await entry.batcher.stop()

    app = FastAPIOffline(title="retrieval-kd search", version=__version__, lifespan=lifespan,
                         description="Search the indexes retrieval-kd built (dense FAISS, learned sparse, BM25, "
                                     "and hybrids of them). Concurrent requests for a dense index are searched "
                                     "together (micro-batching).")
    app.state.served = served
    app.state.serve_config = config
    SearchRequest = _request_model(config)  # noqa: N806 - a class made for these limits
    errors = {404: {"model": ErrorBody, "description": "unknown index"},
              413: {"model": ErrorBody, "description": "body too large"},
              422: {"model": ErrorBody, "description": "a value or type the request may not have"}}

    async def run_search(request: BaseModel):
        name = request.index
        if name is None:
            if len(served) != 1:
                return error_response(422, f"index: required when more than one index is served (one of "
                                           f"{', '.join(served)})")
            name = next(iter(served))
        entry = served.get(name)
        if entry is None:
            return error_response(404, f"unknown index {name!r}; this server serves {', '.join(served)} "
                                       "(GET /indexes)")
        t0 = time.perf_counter()
        results = await entry.batcher.search(request.queries, request.k, request.with_text)
        return JSONBytes({"index": name, "k": request.k, "results": [hits_json(h, request.with_text) for h in results],
                          "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    body_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()}}}}

    @app.post("/search", response_model=SearchResponse, responses=errors, summary="search one or many queries",
              openapi_extra=body_schema)
    async def search_post(http: Request):
        try:  # parsed and checked in one step by pydantic-core (faster than FastAPI's json.loads + validation)
            request = SearchRequest.model_validate_json(await http.body())
        except ValidationError as exc:
            return error_response(422, validation_message(exc.errors()), detail=_plain_errors(exc.errors()))
        return await run_search(request)

    @app.get("/search", response_model=SearchResponse, responses=errors, summary="search queries given in the URL")
    async def search_get(q: Annotated[list[str], Query(description="a query; repeat for several")],
                         index: str | None = None, k: int = config.default_k, with_text: bool = False):
        try:
            request = SearchRequest.model_validate({"index": index, "queries": q, "k": k, "with_text": with_text})
        except ValidationError as exc:
            return error_response(422, validation_message(exc.errors(), {"queries": "q"}),
                                  detail=_plain_errors(exc.errors()))
        return await run_search(request)

    @app.get("/indexes", summary="the served indexes and hybrids")
    async def list_indexes():
        return JSONBytes({"indexes": [{**e.describe, "name": n, "kind": e.kind} for n, e in served.items()]})

    @app.get("/health", summary="liveness")
    async def health():
        return JSONBytes({"status": "ok", "indexes": list(served), "uptime_s": round(time.monotonic() - started, 1)})

    @app.get("/stats", summary="requests, queries and search calls (batches) per index")
    async def stats():
        return JSONBytes({"indexes": {n: e.batcher.stats.to_dict() for n, e in served.items()},
                          "config": config.to_dict()})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        return error_response(422, validation_message(list(exc.errors())), detail=_plain_errors(list(exc.errors())))

    @app.exception_handler(404)
    @app.exception_handler(405)
    async def no_route(request, exc):
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; the endpoints are "
                                               "POST and GET /search, GET /indexes, /health, /stats, /openapi.json, "
                                               "/docs", headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        logger.error("internal error: %s: %s", type(exc).__name__, exc)
        return error_response(500, f"internal error ({type(exc).__name__}: {exc}); the server goes on serving")

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    return app


def _describe(retriever) -> dict:
    describe = getattr(retriever, "describe", None)
    value = describe() if callable(describe) else {}
    return dict(value) if isinstance(value, Mapping) else {"description": value}


def _search_fn(retriever):
    def search(texts: list[str], k: int, with_text: bool) -> list[list]:
        return retriever.search(texts, k=k, with_text=with_text)

    return search


def _hybrid(name: str, spec: HybridSpec, indexes: Mapping[str, Any], served: Mapping[str, _Served],
            locks: Mapping[str, threading.Lock], config: ServeConfig) -> _Served:
    from retrieval_kd.search.hybrid import HybridRetriever

    missing = [m for m in spec.members if m not in indexes]
    if missing:
        raise ValueError(f"hybrid {name!r}: {', '.join(missing)} is not a served index (served: {', '.join(indexes)})")
    if len(spec.members) < 2:
        raise ValueError(f"hybrid {name!r}: give two or more members (A+B)")
    hybrid = HybridRetriever([indexes[m] for m in spec.members], weights=list(spec.weights) if spec.weights else None,
                             normalization=spec.normalization, depth=spec.depth)
    model_member = any(served[m].kind in MODEL_KINDS for m in spec.members)
    window = config.batch_window_ms / 1000 if model_member else 0.0
    describe = {"members": list(spec.members), "weights": list(spec.weights) if spec.weights else None,
                "normalization": spec.normalization, "depth": spec.depth}
    if callable(getattr(hybrid, "describe", None)):
        describe = {**_describe(hybrid), **describe}
    batcher = MicroBatcher(_search_fn(hybrid), window, config.max_batch, [locks[m] for m in spec.members], name)
    return _Served(name, "hybrid", describe, batcher)
