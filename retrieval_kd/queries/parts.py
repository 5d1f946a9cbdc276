"""Batch results of a long job, each committed atomically, so a killed job's rerun continues where it stopped.

A parts folder (``<output>.parts/``) holds ``settings.json`` (what the job was started with) and one
``batch-NNNNNN.jsonl`` per finished batch, each written aside and renamed in (:class:`atomic_write`): a batch is
there whole or not at all. A rerun with the same settings skips the batches that are there; one with other
settings is refused (its finished batches would be mixed with new ones) unless ``restart`` drops them. The job
removes the folder once its final file is written. Only what a job wrote is ever removed: a folder at that path
without ``settings.json`` that holds files other than a job's own is refused (one holding only those, left by a job
killed while starting or removing it, is started afresh), and removing deletes the batches, the temporary files of
killed writers and the settings (last), then the folder only if nothing else is left in it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from retrieval_kd.data.formats import atomic_write, iter_jsonl
from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["BatchParts", "parts_folder"]


def parts_folder(output: str | os.PathLike) -> Path:
    """Where the finished batches of the job writing ``output`` are kept: ``<output>.parts``."""
    output = Path(output)
    return output.with_name(f"{output.name}.parts")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (``generator.dtype``), a key one side lacks included."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b or (key in old) != (key in new):
            out.append(f"{prefix}{key}" + (" (not recorded by the earlier run)" if key not in old else ""))
    return out


class BatchParts:
    """Finished batches of one job.

    Args:
        folder: the parts folder (created).
        settings: JSON-able settings the batches depend on; compared with the folder's on open.
        restart: drop batches left by an earlier run, whatever its settings.
    """

    SETTINGS = "settings.json"

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], restart: bool = False):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
        found = self.folder / self.SETTINGS
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: is a file, not the folder of a job's finished batches; move it away")
        if self.folder.is_dir() and not found.is_file():
            ours = self._ours()
            if len(ours) < sum(1 for _ in self.folder.iterdir()):
                raise ConfigError(f"{self.folder}: this folder was not written by retrieval-kd (no {self.SETTINGS}) "
                                  "and holds other files; move it away or choose another output, its files are left "
                                  "as they are")
            restart = True  # what a job killed while starting or removing it left: no settings to continue from
        if restart and self.folder.is_dir():
            self.remove()
        if found.is_file():
            try:
                old = json.loads(found.read_text(encoding="utf-8"))
            except ValueError:
                old = None
            if old != self.settings:
                changed = _differences(old if isinstance(old, dict) else {}, self.settings)
                raise ConfigError(f"{self.folder}: holds the finished batches of a run with other settings "
                                  f"({', '.join(changed) or 'unreadable settings'} differ); rerun with the same "
                                  "settings to continue it, or pass --restart (restart=True) to drop them")
            logger.info("%s: continuing (%d batches already done)", self.folder, len(self.done()))
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(found) as fh:
                json.dump(self.settings, fh, indent=1, sort_keys=True)

    def _path(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:06d}.jsonl"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.folder.glob("batch-*.jsonl")}

    def has(self, batch: int) -> bool:
        return self._path(batch).is_file()

    def put(self, batch: int, rows: list[dict[str, Any]]) -> None:
        with atomic_write(self._path(batch)) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def get(self, batch: int) -> list[dict[str, Any]]:
        return [obj for _, obj in iter_jsonl(self._path(batch))]

    def _ours(self) -> list[Path]:
        """The files a job writes here: the settings, the batches and killed writers' temporary files."""
        temps = (".batch-", f".{self.SETTINGS}.")
        return [p for p in self.folder.iterdir() if p.name == self.SETTINGS
                or (p.name.startswith("batch-") and p.suffix == ".jsonl")
                or (p.name.startswith(temps) and p.suffix == ".tmp")]

    def remove(self) -> None:
        """Delete the job's files, then the folder if nothing else is in it (what someone else put there stays)."""
        if not self.folder.is_dir():
            return
        # the settings last: a removal killed half-way leaves a folder that still says it is ours
        for path in sorted(self._ours(), key=lambda p: p.name == self.SETTINGS):
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            logger.warning("%s: left in place: it holds files this job did not write", self.folder)
