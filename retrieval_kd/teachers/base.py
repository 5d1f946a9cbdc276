"""The teacher interface: score one query against its candidate passages; a fingerprint keys the score store."""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Teacher"]


class Teacher(ABC):
    """Scores query-passage pairs. Higher is more relevant; scores of one query are comparable with each other.

    Subclasses set :attr:`kind` and implement :meth:`score` and :meth:`config`. The fingerprint hashes the
    config (model id and revision, prompt template, settings), so two teachers with the same fingerprint give
    the same scores and share entries in the score store.
    """

    kind: str = "teacher"
    #: True when scores depend on the whole candidate list (listwise), not on each pair alone.
    listwise: bool = False

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that determines the scores."""

    @abstractmethod
    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        """Scores of the candidates for one query, aligned with ``doc_ids``."""

    def score_batch(self, items: list[tuple[str, list[str], list[str]]]) -> list[np.ndarray]:
        """Scores of several ``(query, doc_ids, doc_texts)`` items; teachers that batch across queries override it."""
        return [self.score(query, ids, texts) for query, ids, texts in items]

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"kind": self.kind, **self.config()}, sort_keys=True, default=str)
        return f"{self.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    @property
    def name(self) -> str:
        model = self.config().get("model")
        return f"{self.kind}:{model}" if model else self.kind

    def prepare(self, collection) -> None:  # noqa: B027 - optional hook
        """Called once before scoring a collection (e.g. to build an index)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fingerprint={self.fingerprint!r})"
