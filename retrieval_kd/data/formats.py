"""Low-level readers and writers for the file formats of the field.

* BEIR JSON lines (``corpus.jsonl``, ``queries.jsonl``), plain or gzipped;
* query TSV files (``qid<TAB>text``, MS MARCO / TREC topics);
* qrels as BEIR TSV (``query-id<TAB>corpus-id<TAB>score``, header optional) or TREC
  (``qid 0 docid rel``, whitespace separated);
* TREC run files (``qid Q0 docid rank score tag``), read and written, plain or gzipped.

Every reader accepts gzip (detected from the magic bytes, not the file name), a UTF-8 byte-order
mark and CRLF line endings. Malformed lines raise :class:`DataFormatError` naming the file and
the line; nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

__all__ = [
    "DataFormatError",
    "open_text",
    "iter_jsonl",
    "read_queries",
    "read_qrels",
    "read_run",
    "write_run",
    "write_qrels",
    "atomic_write",
]

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

_GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and, where it applies, the line."""


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, transparently un-gzipping it and dropping a UTF-8 BOM.

    Universal newlines are on, so CRLF files read like LF files.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw: IO[bytes] = gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")
    # utf-8-sig strips a BOM if present; newline=None maps \r\n and \r to \n.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline=None)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

    Raises:
        DataFormatError: a line is not valid JSON or not a JSON object.
    """
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return True
    if name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return False
    with open_text(path) as fh:
        first = fh.readline().lstrip()
    return first.startswith("{")


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read queries from BEIR ``queries.jsonl`` or a ``qid<TAB>text`` TSV file.

    Raises:
        DataFormatError: malformed line, missing ``_id``/``text``, or a duplicate query id.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    empty = 0

    def add(qid: str, text: str, lineno: int) -> None:
        nonlocal empty
        if qid in queries:
            raise DataFormatError(f"{path}:{lineno}: duplicate query id {qid!r}")
        if not text.strip():
            empty += 1
        queries[qid] = text

    if _is_jsonl(path):
        for lineno, obj in iter_jsonl(path):
            if "_id" not in obj or "text" not in obj:
                raise DataFormatError(f"{path}:{lineno}: a query needs '_id' and 'text' fields, got {sorted(obj)}")
            add(str(obj["_id"]), str(obj["text"] or ""), lineno)
    else:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                parts = line.split("\t", 1)
                if len(parts) != 2:
                    raise DataFormatError(f"{path}:{lineno}: expected 'qid<TAB>text', got {line[:80]!r}")
                add(parts[0].strip(), parts[1], lineno)
    if empty:
        logger.warning("%s: %d queries have empty text", path, empty)
    logger.debug("%s: read %d queries", path, len(queries))
    return queries


def read_qrels(path: str | os.PathLike) -> Qrels:
    """Read relevance judgements from a BEIR TSV (header optional) or a TREC qrels file.

    The format is detected per file: three tab-separated columns are BEIR
    (``query-id corpus-id score``), four whitespace-separated columns are TREC
    (``qid iteration docid rel``). A first line whose score column is not an integer is taken as a
    header. A pair judged twice keeps the last judgement and is counted in a warning.

    Raises:
        DataFormatError: a line with the wrong number of columns or a non-integer grade.
    """
    path = Path(path)
    qrels: Qrels = {}
    repeated = 0
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts]
            if len(parts) == 3:
                qid, did, rel = parts
            elif len(parts) == 4:
                qid, _, did, rel = parts
            else:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 3 columns (query-id corpus-id score) or 4 (qid 0 docid rel), "
                    f"got {len(parts)}: {line.strip()[:80]!r}"
                )
            try:
                grade = int(float(rel))
            except ValueError:
                if lineno == 1:
                    continue  # header line, e.g. "query-id corpus-id score"
                raise DataFormatError(f"{path}:{lineno}: relevance grade {rel!r} is not a number") from None
            judged = qrels.setdefault(qid, {})
            if did in judged:
                repeated += 1
            judged[did] = grade
    if repeated:
        logger.warning("%s: %d (query, doc) pairs are judged more than once; the last grade is kept", path, repeated)
    return qrels


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score tag``), plain or gzipped.

    Raises:
        DataFormatError: wrong number of columns, a non-numeric score, or a doc listed twice for a query.
    """
    path = Path(path)
    run: Run = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(
                    f"{path}:{lineno}: a TREC run line has 6 columns (qid Q0 docid rank score tag), got {len(parts)}"
                )
            qid, _, did, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: score {score!r} is not a number") from None
            ranked = run.setdefault(qid, {})
            if did in ranked:
                raise DataFormatError(f"{path}:{lineno}: doc {did!r} appears twice for query {qid!r}")
            ranked[did] = value
    return run


class atomic_write:  # noqa: N801 - used like open()
    """Context manager writing a file atomically: a temporary file in the same folder, renamed on success.

    A crash or kill leaves either the old file or the complete new one, never a torn file; the temporary file
    of a killed writer (``.<name>.<pid>.<random>.tmp``) is removed by the next write of the same file.
    ``gzip=True`` (or a ``.gz`` suffix) compresses.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", gzip_output: bool | None = None):
        self.path = Path(path)
        self.mode = mode
        self.gzip = self.path.suffix == ".gz" if gzip_output is None else gzip_output

    def __enter__(self):
        from retrieval_kd.utils.fs import sweep_stale_temps, temp_name

        self.path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.path)  # what killed writers of this file left behind
        self.tmp = str(temp_name(self.path))
        raw = open(self.tmp, "xb")
        self._raw = raw
        if self.gzip:
            # mtime=0 keeps gzip output byte-identical across runs
            self._gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
            target = self._gz
        else:
            self._gz = None
            target = raw
        self._fh = io.TextIOWrapper(target, encoding="utf-8", newline="\n") if "b" not in self.mode else target
        return self._fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if isinstance(self._fh, io.TextIOWrapper):
                self._fh.flush()
                self._fh.detach()
            if self._gz is not None:
                self._gz.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        except BaseException:
            os.unlink(self.tmp)
            raise
        if exc_type is not None:
            os.unlink(self.tmp)
            return False
        os.replace(self.tmp, self.path)
        return False


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "retrieval-kd") -> Path:
    """Write a run as a TREC run file, each query's docs sorted by descending score (ties by doc id).

    The file is written atomically; a ``.gz`` suffix compresses it.
    """
    path = Path(path)
    with atomic_write(path) as fh:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
    return path


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: str | os.PathLike) -> Path:
    """Write qrels in TREC format (``qid 0 docid rel``), atomically."""
    path = Path(path)
    with atomic_write(path) as fh:
        for qid in sorted(qrels):
            for did, rel in sorted(qrels[qid].items()):
                fh.write(f"{qid} 0 {did} {int(rel)}\n")
    return path
