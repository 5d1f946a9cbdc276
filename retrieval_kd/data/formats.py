"""Low-level readers and writers for the file formats of the field.

* BEIR JSON lines (``corpus.jsonl``, ``queries.jsonl``), plain or gzipped;
* query TSV files (``qid<TAB>text``, MS MARCO / TREC topics);
* qrels as BEIR TSV (``query-id<TAB>corpus-id<TAB>score``, header optional) or TREC
  (``qid 0 docid rel``, whitespace separated);
* TREC run files (``qid Q0 docid rank score tag``), read and written, plain or gzipped.

Every reader accepts gzip (detected from the magic bytes, not the file name), a UTF-8 byte-order
mark and CRLF line endings; all of them read through :func:`iter_lines`. Malformed input raises
:class:`DataFormatError` naming the file and the line (or the query and doc id), never a raw exception:
bytes that are not UTF-8, a truncated or corrupt gzip stream, a non-finite score, a fractional or
non-finite relevance grade, an id that is empty or not a string, and an empty file where content is
required. Nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from retrieval_kd.errors import RkdError
from retrieval_kd.utils.fs import atomic_write  # re-exported: most writers import it from here

logger = logging.getLogger(__name__)

__all__ = [
    "DataFormatError",
    "open_text",
    "iter_lines",
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


class DataFormatError(RkdError, ValueError):
    """A data file (or a run or qrels in memory) is malformed; the message names the file and line, or the ids."""


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


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text file, without the line ending; gzip, BOM and CRLF/CR as above.

    Raises:
        DataFormatError: bytes that are not UTF-8 (naming the line), or a truncated or corrupt gzip stream.
    """
    path = Path(path)
    lineno = 0
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == _GZIP_MAGIC
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            for raw in fh:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        f"{path}:{lineno + 1}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                        "of the line); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                if lineno == 0 and text.startswith("\ufeff"):
                    text = text[1:]
                if "\r" in text:  # universal newlines: CRLF and a lone CR end a line
                    pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                    if pieces[-1] == "":
                        pieces.pop()
                    for piece in pieces:
                        lineno += 1
                        yield lineno, piece
                    continue
                lineno += 1
                yield lineno, text[:-1] if text.endswith("\n") else text
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataFormatError(
            f"{path}: the gzip data is truncated or corrupt {f'after line {lineno}' if lineno else 'at its start'} "
            f"({exc}); copy or download the file again (gzip -t checks it)"
        ) from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

    Raises:
        DataFormatError: a line is not valid JSON (``NaN``/``Infinity`` included), not a JSON object, or holds
            an unpaired UTF-16 surrogate escape (text that cannot be written as UTF-8).
    """
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = _JSON.decode(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except ValueError as exc:  # NaN / Infinity
            raise DataFormatError(f"{path}:{lineno}: malformed JSON ({exc})") from None
        except RecursionError:
            raise DataFormatError(f"{path}:{lineno}: malformed JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if _SURROGATE_ESCAPE.search(line):
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except (UnicodeEncodeError, RecursionError):
                raise DataFormatError(
                    f"{path}:{lineno}: a string holds an unpaired UTF-16 surrogate escape (\\udXXX), which is "
                    "not text; fix the line"
                ) from None
        yield lineno, obj


def _field(path: Path, lineno: int, obj: dict, key: str, what: str) -> str:
    """A string field of a JSON line: ids may be strings or integers, texts strings or null."""
    value = obj.get(key)
    if key == "_id":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataFormatError(f"{path}:{lineno}: {what} id must be a string or an integer, got {value!r}"[:300])
        value = str(value)
        if not value.strip():
            raise DataFormatError(f"{path}:{lineno}: {what} id is empty")
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{lineno}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return True
    if name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return False
    for _, line in iter_lines(path):
        if line.strip():
            return line.lstrip().startswith("{")
    return False


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read queries from BEIR ``queries.jsonl`` or a ``qid<TAB>text`` TSV file.

    Raises:
        DataFormatError: malformed line, missing ``_id``/``text``, an empty id, a duplicate query id, or no
            queries at all.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    empty = 0

    def add(qid: str, text: str, lineno: int) -> None:
        nonlocal empty
        if not qid:
            raise DataFormatError(f"{path}:{lineno}: empty query id")
        if qid in queries:
            raise DataFormatError(f"{path}:{lineno}: duplicate query id {qid!r}")
        if not text.strip():
            empty += 1
        queries[qid] = text

    if _is_jsonl(path):
        for lineno, obj in iter_jsonl(path):
            if "_id" not in obj or "text" not in obj:
                raise DataFormatError(f"{path}:{lineno}: a query needs '_id' and 'text' fields, got {sorted(obj)}")
            add(_field(path, lineno, obj, "_id", "query"), _field(path, lineno, obj, "text", "query"), lineno)
    else:
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2:
                raise DataFormatError(f"{path}:{lineno}: expected 'qid<TAB>text', got {line[:80]!r}")
            add(parts[0].strip(), parts[1], lineno)
    if not queries:
        raise DataFormatError(f"{path}: holds no queries (the file is empty); a queries file needs at least one")
    if empty:
        logger.warning("%s: %d queries have empty text", path, empty)
    logger.debug("%s: read %d queries", path, len(queries))
    return queries


_MAX_GRADE = 1 << 31


def _grade(rel: str) -> int | None:
    """An integer relevance grade (``1.0`` counts as 1); None when ``rel`` is not a number at all (a header)."""
    try:
        grade = int(rel)
    except ValueError:
        try:
            value = float(rel)
        except ValueError:
            return None
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"relevance grade {rel!r} is not an integer") from None
        grade = int(value)
    if abs(grade) >= _MAX_GRADE:
        raise ValueError(f"relevance grade {rel!r} is out of range")
    return grade


def read_qrels(path: str | os.PathLike) -> Qrels:
    """Read relevance judgements from a BEIR TSV (header optional) or a TREC qrels file.

    The format is detected per file: three tab-separated columns are BEIR
    (``query-id corpus-id score``), four whitespace-separated columns are TREC
    (``qid iteration docid rel``). A first line whose score column is not a number is taken as a
    header. Grades are integers (negative TREC grades included; ``1.0`` reads as 1). A pair judged
    twice keeps the last judgement and is counted in a warning.

    Raises:
        DataFormatError: a line with the wrong number of columns, an empty id, a grade that is not a finite
            integer (``0.9``, ``inf``, ``nan``), or no judgements at all.
    """
    path = Path(path)
    qrels: Qrels = {}
    repeated = 0
    first = True
    for lineno, line in iter_lines(path):
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
            grade = _grade(rel)
        except ValueError as exc:
            raise DataFormatError(f"{path}:{lineno}: {exc}; grades are integers such as 0, 1, 2 or -1") from None
        if grade is None:
            if first:
                first = False
                continue  # header line, e.g. "query-id corpus-id score"
            raise DataFormatError(f"{path}:{lineno}: relevance grade {rel[:40]!r} is not a number")
        first = False
        if not qid or not did:
            raise DataFormatError(f"{path}:{lineno}: empty {'query' if not qid else 'doc'} id")
        judged = qrels.setdefault(qid, {})
        if did in judged:
            repeated += 1
        judged[did] = grade
    if not qrels:
        raise DataFormatError(f"{path}: holds no judgements (the file is empty or only a header)")
    if repeated:
        logger.warning("%s: %d (query, doc) pairs are judged more than once; the last grade is kept", path, repeated)
    return qrels


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score tag``), plain or gzipped.

    Raises:
        DataFormatError: wrong number of columns, a score that is not a finite number (``nan`` and ``inf``
            would silently reorder the results), a doc listed twice for a query, or no lines at all.
    """
    path = Path(path)
    run: Run = {}
    for lineno, line in iter_lines(path):
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
            raise DataFormatError(f"{path}:{lineno}: score {score[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise DataFormatError(f"{path}:{lineno}: score {score[:40]!r} is not a finite number; fix the system "
                                  "that wrote the run (a NaN or infinite score has no rank)")
        ranked = run.setdefault(qid, {})
        if did in ranked:
            raise DataFormatError(f"{path}:{lineno}: doc {did!r} appears twice for query {qid!r}")
        ranked[did] = value
    if not run:
        raise DataFormatError(f"{path}: holds no results (the file is empty); a run file needs at least one line")
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "retrieval-kd") -> Path:
    """Write a run as a TREC run file, each query's docs sorted by descending score (ties by doc id).

    The file is written atomically; a ``.gz`` suffix compresses it.

    Raises:
        DataFormatError: a score that is not finite, or an id that is empty or holds whitespace (the file could
            not be read back), naming the query and doc; nothing is written.
    """
    path = Path(path)
    _check_ids(path, run, "query")
    if len(str(tag).split()) != 1 or str(tag).strip() != str(tag):
        raise DataFormatError(f"{path}: cannot write run tag {tag!r}: a TREC run tag is one word; rename it")
    if not any(run.values()):
        logger.warning("%s: the run holds no results; the file is empty (read_run refuses it)", path)
    with atomic_write(path) as fh:
        for qid in sorted(run):
            docs = run[qid]
            _check_ids(path, docs, "doc", qid)
            _check_scores(path, qid, docs)
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
    return path


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: str | os.PathLike) -> Path:
    """Write qrels in TREC format (``qid 0 docid rel``), atomically.

    Raises:
        DataFormatError: a grade that is not an integer, or an id that is empty or holds whitespace.
    """
    path = Path(path)
    _check_ids(path, qrels, "query")
    with atomic_write(path) as fh:
        for qid in sorted(qrels):
            _check_ids(path, qrels[qid], "doc", qid)
            for did, rel in sorted(qrels[qid].items()):
                fh.write(f"{qid} 0 {did} {integral_grade(rel, path, qid, did)}\n")
    return path


def _check_ids(path: Path, ids, what: str, qid: str | None = None) -> None:
    """Ids written to a whitespace-separated file must be non-empty and free of whitespace (checked in bulk)."""
    names = [str(i) for i in ids]
    if len(" ".join(names).split()) == len(names):
        return
    bad = next(i for i in names if not i or len(i.split()) != 1 or i.strip() != i)
    where = f" of query {qid!r}" if qid is not None else ""
    raise DataFormatError(f"{path}: cannot write {what} id {bad!r}{where}: ids in a TREC file must be non-empty "
                          "and hold no whitespace; rename it")


def _check_scores(path: Path, qid: str, docs: Mapping[str, float]) -> None:
    try:
        if math.isfinite(sum(docs.values())):  # fast path: a NaN or inf anywhere makes the sum non-finite
            return
    except OverflowError:
        pass
    for did, score in docs.items():
        if not math.isfinite(score):
            raise DataFormatError(f"{path}: query {qid!r}, doc {did!r} has score {score}; a run needs finite "
                                  "scores (check the model or the fusion that produced it); nothing is written")


def integral_grade(rel, where, qid: str, did: str) -> int:
    """A relevance grade as an int; a fractional (0.9) or non-finite one is an error naming ``where`` and the pair
    (it would be truncated, or crash ranx)."""
    try:
        value = float(rel)
        if math.isfinite(value) and value == int(value):
            return int(value)
    except (TypeError, ValueError):
        pass
    raise DataFormatError(f"{where}: query {qid!r}, doc {did!r} has grade {rel!r}; grades are integers")
