"""Where the project keeps things: dataset manifests and cache (``data/``) and built indexes (``indexes/``).

Both default to the folders at the top of a source checkout (the usual, editable install) and can be moved
with environment variables:

* ``RKD_DATA_DIR``: manifests are read from ``$RKD_DATA_DIR/manifests``, downloads cached in ``$RKD_DATA_DIR/cache``;
* ``RKD_CACHE_DIR``: moves only the cache (tests point it at a temporary folder);
* ``RKD_INDEX_DIR``: default home of built indexes;
* ``RKD_DATA_MIRROR``: a read-only folder holding collections in BEIR layout (see :mod:`retrieval_kd.data.resolve`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "data_dir", "cache_dir", "indexes_dir", "manifests_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path | None:
    """The source checkout this package runs from, or None for a wheel install."""
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").exists() else None


def data_dir() -> Path:
    if os.environ.get("RKD_DATA_DIR"):
        return Path(os.environ["RKD_DATA_DIR"])
    root = project_root()
    return root / "data" if root else Path.home() / ".cache" / "retrieval_kd" / "data"


def cache_dir() -> Path:
    if os.environ.get("RKD_CACHE_DIR"):
        return Path(os.environ["RKD_CACHE_DIR"])
    return data_dir() / "cache"


def manifests_dir() -> Path:
    """Manifests of registered datasets: ``data/manifests`` in a checkout, a packaged copy in a wheel."""
    candidate = data_dir() / "manifests"
    if candidate.is_dir():
        return candidate
    return _PACKAGE_DIR / "_manifests"


def indexes_dir() -> Path:
    if os.environ.get("RKD_INDEX_DIR"):
        return Path(os.environ["RKD_INDEX_DIR"])
    root = project_root()
    return root / "indexes" if root else Path.home() / ".cache" / "retrieval_kd" / "indexes"
