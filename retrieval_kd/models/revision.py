"""The revision of a model, recorded in fingerprints and cache keys."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["model_revision", "model_cache_id"]


def model_revision(model_name_or_path: str) -> str:
    """A revision string for a model: the hub snapshot's commit, or a hash of a local folder's file listing.

    A local folder's hash covers each file's name, size and modification time, so a model retrained into the same
    folder (same file sizes, new weights) gets a new revision and never reuses embeddings cached for the old one.
    """
    path = Path(model_name_or_path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return "local-" + h.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name_or_path, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent.name
    except Exception:  # noqa: BLE001 - revision is informative, never fatal
        logger.debug("no cached revision for %s", model_name_or_path, exc_info=True)
    return "unknown"


def model_cache_id(model_name_or_path: str) -> tuple[str, str]:
    """``(key, label)`` naming a model in cache keys and cache file names.

    A hub id is its own key. A local folder is keyed by its revision alone (its file listing), not by how its
    path was spelt, so ``experiments/x/model`` and ``/abs/.../experiments/x/model`` share one cache entry.
    """
    path = Path(model_name_or_path)
    if path.is_dir():
        return model_revision(model_name_or_path), path.resolve().name
    return str(model_name_or_path), str(model_name_or_path)
