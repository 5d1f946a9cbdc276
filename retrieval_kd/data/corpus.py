"""A corpus that streams from its JSON-lines file and looks documents up from a memory-mapped Arrow store.

Iterating a corpus reads the source file line by line, so 8.8M MS MARCO passages never sit in memory at once.
Random access (``corpus["doc-id"]``, :meth:`Corpus.texts`) goes through an Arrow IPC file built once in one
streaming pass next to the dataset cache and memory-mapped afterwards; ids are found by binary search in a
sorted byte-string array, so no Python dict of texts (or of ids) is ever built. The Arrow table is also what
:meth:`Corpus.to_hf_dataset` hands to Hugging Face ``datasets`` without a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from retrieval_kd.data.formats import DataFormatError, _field, atomic_write, iter_jsonl
from retrieval_kd.utils.fs import sha256_memo

logger = logging.getLogger(__name__)

__all__ = ["Corpus"]

_BATCH = 10_000
_STORE_VERSION = 1


_DIGESTS = "source-digests.json"


def _source_key(path: Path, store_dir: Path) -> str:
    """A key of the file's bytes (and the store format), not of its path or modification time.

    Every cache keyed by a corpus (its Arrow store, then the dense and sparse encodings named after the store)
    follows this key, so a mirror that is copied or touched again (same bytes, new mtime) keeps its caches. The
    bytes are hashed once per (path, size, mtime): the digest is remembered in ``<store_dir>/source-digests.json``
    (an 8.8M-passage MS MARCO file is not read again on every start).
    """
    digest = sha256_memo(path, store_dir / _DIGESTS)
    raw = f"{digest}|{path.stat().st_size}|v{_STORE_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Corpus:
    """A BEIR-layout corpus (``{"_id", "title", "text"}`` per line, plain or gzipped).

    Args:
        path: the corpus file.
        store_dir: folder for the Arrow store used by random access; defaults to ``data/cache/corpus-stores``.

    Iteration yields dicts with ``_id``, ``title`` and ``text``. Random access builds the store on first use.
    Malformed input (a bad line, bytes that are not UTF-8, a corrupt gzip stream, an id that is not a string or
    integer, a duplicate id, no documents at all) raises :class:`DataFormatError` naming the file and line.
    """

    def __init__(self, path: str | os.PathLike, store_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"corpus file not found: {self.path}")
        if store_dir is None:
            from retrieval_kd.paths import cache_dir

            store_dir = cache_dir() / "corpus-stores"
        self.store_dir = Path(store_dir)
        self._table = None
        self._sorted_ids: np.ndarray | None = None
        self._order: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r})"

    # -- streaming ---------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        n = 0
        for lineno, obj in iter_jsonl(self.path):
            n += 1
            yield self._document(obj, lineno)
        if not n:
            raise DataFormatError(f"{self.path}: holds no documents (the file is empty); a corpus needs at least one")

    def _document(self, obj: dict, lineno: int) -> dict:
        if "_id" not in obj:
            raise DataFormatError(f"{self.path}:{lineno}: a document needs an '_id' field, got {sorted(obj)[:10]}")
        return {"_id": _field(self.path, lineno, obj, "_id", "document"),
                "title": _field(self.path, lineno, obj, "title", "document"),
                "text": _field(self.path, lineno, obj, "text", "document")}

    # -- the Arrow store ---------------------------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.store_dir / f"{self.path.name}.{_source_key(self.path, self.store_dir)}.arrow"

    def _build_store(self) -> None:
        import pyarrow as pa

        from retrieval_kd.utils.progress import progress

        target = self.store_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        schema = pa.schema([("_id", pa.large_string()), ("title", pa.large_string()), ("text", pa.large_string())])
        n_docs = n_empty = 0
        batch: dict[str, list[str]] = {"_id": [], "title": [], "text": []}
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for doc in progress(iter(self), desc=f"indexing {self.path.name}", unit="doc"):
                    for key in batch:
                        batch[key].append(doc[key])
                    n_docs += 1
                    if not doc["text"].strip() and not doc["title"].strip():
                        n_empty += 1
                    if len(batch["_id"]) >= _BATCH:
                        writer.write_batch(pa.record_batch(batch, schema=schema))
                        batch = {k: [] for k in batch}
                if batch["_id"]:
                    writer.write_batch(pa.record_batch(batch, schema=schema))
            ids = _read_ids(tmp)
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
            if dup.size:
                first = sorted_ids[dup[0]].decode()
                raise DataFormatError(
                    f"{self.path}: duplicate document id {first!r} ({dup.size} duplicate ids in all); ids must be unique"
                )
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        if n_empty:
            logger.warning("%s: %d of %d documents have empty title and text", self.path, n_empty, n_docs)
        meta = {"source": str(self.path.resolve()), "documents": n_docs, "empty": n_empty}
        with atomic_write(target.with_suffix(".json")) as out:
            json.dump(meta, out, indent=1)
        logger.info("built corpus store %s (%d documents)", target, n_docs)

    def _load(self):
        if self._table is not None:
            return self._table
        import pyarrow as pa

        if not self.store_path.exists():
            self._build_store()
        source = pa.memory_map(str(self.store_path), "r")
        self._table = pa.ipc.open_file(source).read_all()
        ids = _encode_ids(self._table.column("_id").to_pylist())
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        return self._table

    def validate(self) -> int:
        """Read the whole corpus once (building the store): raises on malformed lines or duplicate ids.

        Returns the number of documents.
        """
        return len(self)

    def __len__(self) -> int:
        return self._load().num_rows

    @property
    def ids(self) -> list[str]:
        """Document ids in file order."""
        return self._load().column("_id").to_pylist()

    def __contains__(self, doc_id: str) -> bool:
        return self._row(doc_id, missing_ok=True) is not None

    def has(self, doc_ids: Iterable[str]) -> np.ndarray:
        """A boolean mask: which of many ids are in the corpus (one vectorised search, no Python loop)."""
        return self._lookup(_encode_ids(str(d) for d in doc_ids))[1]

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._load()
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        pos = np.minimum(np.searchsorted(self._sorted_ids, keys), len(self._sorted_ids) - 1)
        return pos, self._sorted_ids[pos] == keys

    def _row(self, doc_id: str, missing_ok: bool = False) -> int | None:
        self._load()
        key = np.bytes_(str(doc_id).encode())
        pos = int(np.searchsorted(self._sorted_ids, key))
        if pos < len(self._sorted_ids) and self._sorted_ids[pos] == key:
            return int(self._order[pos])
        if missing_ok:
            return None
        raise KeyError(f"document id {doc_id!r} is not in {self.path}")

    def rows(self, doc_ids: Iterable[str]) -> np.ndarray:
        """Row positions (file order) of many ids at once; raises KeyError naming the first missing id."""
        keys = _encode_ids(str(d) for d in doc_ids)
        pos, found = self._lookup(keys)
        if not found.all():
            missing = keys[~found][0].decode()
            raise KeyError(f"document id {missing!r} is not in {self.path} ({int((~found).sum())} ids missing)")
        return self._order[pos]

    def __getitem__(self, doc_id: str) -> dict:
        table = self._load()
        row = self._row(doc_id)
        return {name: table.column(name)[row].as_py() for name in ("_id", "title", "text")}

    def texts(self, doc_ids: Iterable[str] | None = None, with_title: bool = True) -> list[str]:
        """Texts for encoders and rerankers: ``title + " " + text`` (BEIR's convention) or the text alone."""
        table = self._load()
        if doc_ids is not None:
            table = table.take(self.rows(doc_ids))
        texts = table.column("text").to_pylist()
        if not with_title:
            return texts
        titles = table.column("title").to_pylist()
        return [f"{t} {x}".strip() if t else x for t, x in zip(titles, texts)]

    def to_hf_dataset(self):
        """The corpus as a Hugging Face ``datasets.Dataset`` (zero-copy over the Arrow store)."""
        import datasets

        return datasets.Dataset(self._load())


def _encode_ids(ids: Iterable[str]) -> np.ndarray:
    """UTF-8 byte strings in a fixed-width numpy array: compact, sortable, searchable."""
    encoded = [i.encode("utf-8") for i in ids]
    return np.asarray(encoded, dtype=np.bytes_) if encoded else np.zeros(0, dtype="S1")


def _read_ids(path: Path) -> np.ndarray:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        return _encode_ids(pa.ipc.open_file(source).read_all().column("_id").to_pylist())
