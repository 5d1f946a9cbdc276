"""Reading a YAML config file (or an already parsed mapping) with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_config"]


def read_config(source: str | os.PathLike | dict, kind: str = "config") -> tuple[dict, str]:
    """``(values, where)``: the top-level mapping of a YAML file, or a copy of ``source`` when it is a mapping;
    ``where`` names the file for error messages (``"config"`` for a mapping)."""
    import yaml

    if isinstance(source, dict):
        return dict(source), "config"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {kind} file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"{where}: not valid YAML ({problem}); fix the file") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a {kind} is a mapping of keys, not a {type(values).__name__}")
    return values, str(path)
