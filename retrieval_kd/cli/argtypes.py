"""argparse ``type=`` checkers: a bad number is refused with the flag's name before any work starts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["non_negative_float", "non_negative_int", "output_file", "positive_float", "positive_int", "unit_float"]


def output_file(text: str) -> Path:
    """A file to write: refused at once when it is an existing folder (not after the work is done)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path (e.g. {path / 'out.run'})")
    return path


def _int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def _float(text: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else (f"> {low:g}" if low_open else f">= {low:g}")
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts, top-k)."""
    return _int(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 meaning none, or all, as the flag's help says)."""
    return _int(text, 0)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _float(text, 0.0, low_open=True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _float(text, 0.0)


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    return _float(text, 0.0, 1.0)
