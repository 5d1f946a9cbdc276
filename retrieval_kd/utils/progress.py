"""Progress bars behind one switch: library code wraps long loops in :func:`progress`, the CLI turns bars on.

Library code stays quiet by default (it logs); ``rkd`` calls :func:`set_progress(True)` so users see tqdm bars
on long work. ``RKD_PROGRESS=1`` turns them on from the environment too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "set_progress", "progress_enabled"]

T = TypeVar("T")
_ENABLED = os.environ.get("RKD_PROGRESS", "") not in ("", "0")


def set_progress(enabled: bool) -> None:
    global _ENABLED
    _ENABLED = bool(enabled)


def progress_enabled() -> bool:
    return _ENABLED


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, **kwargs) -> Iterable[T]:
    """``tqdm(iterable)`` when progress is on, the iterable itself otherwise."""
    return tqdm(iterable, desc=desc, total=total, disable=not _ENABLED, dynamic_ncols=True, **kwargs)
