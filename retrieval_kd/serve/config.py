"""What a search server accepts and how it batches: request limits and the micro-batching window, checked once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one request and the micro-batching of concurrent ones.

    Args:
        max_k: largest ``k`` a request may ask for (``1 <= k <= max_k``).
        max_queries: queries in one request, at most.
        max_query_chars: characters in one query, at most.
        max_body_bytes: bytes of one request body, at most (a larger one is answered 413 before it is parsed).
        batch_window_ms: how long the worker of an index whose queries go through a model (dense, or a hybrid with
            a dense member) waits after the first request for others to search with it in one ``search(list)``
            call. Requests that arrive while a batch is being searched join the next one whatever the window, so
            0 still batches under load; other indexes never wait.
        max_batch: queries in one batch, at most (a request is never split; one larger than this is searched alone).
        default_k: ``k`` of a request that gives none.
    """

    max_k: int = 1000
    max_queries: int = 256
    max_query_chars: int = 2048
    max_body_bytes: int = 1 << 20
    batch_window_ms: float = 2.0
    max_batch: int = 64
    default_k: int = 10

    def __post_init__(self) -> None:
        from retrieval_kd.errors import ConfigError

        for f in fields(self):
            value = getattr(self, f.name)
            number = (int, float) if f.name == "batch_window_ms" else (int,)
            low = 0 if f.name == "batch_window_ms" else 1
            if isinstance(value, bool) or not isinstance(value, number) or value < low:
                raise ConfigError(f"{f.name}={value!r}: must be {'a number' if low == 0 else 'an integer'} >= {low}")
        if self.default_k > self.max_k:
            raise ConfigError(f"default_k={self.default_k} is more than max_k={self.max_k}")

    def to_dict(self) -> dict:
        return asdict(self)
