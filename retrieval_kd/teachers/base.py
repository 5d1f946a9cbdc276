"""The teacher interface: score one query against its candidate passages; a fingerprint keys the score store."""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Teacher", "model_revision"]


def model_revision(model_name_or_path: str) -> str:
    """A revision string for a model: the hub snapshot's commit, or a hash of a local folder's file listing."""
    path = Path(model_name_or_path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
        return "local-" + h.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name_or_path, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent.name
    except Exception:  # noqa: BLE001 - revision is informative, never fatal
        logger.debug("no cached revision for %s", model_name_or_path, exc_info=True)
    return "unknown"


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
