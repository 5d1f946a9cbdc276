"""A persistent, resumable store of teacher scores keyed by (teacher fingerprint, query id, doc id).

Why SQLite and not Parquet shards: a teacher run is killed at arbitrary moments (SIGKILL, pre-emption) and
must restart losing nothing and duplicating nothing. SQLite gives that for free: each query's scores and its
"done" mark are committed in one transaction, so after a kill a query is either fully stored or absent;
the primary key makes a duplicate impossible; point lookups by key need no index files of our own. Parquet
would need our own write-ahead manifest, atomic shard renames and compaction to offer the same. SQLite ships
with Python and its files open in any language.

Under ``torchrun`` each rank writes its own shard file (``scores.rank<R>.sqlite``), so no two processes write
one file (safe on network filesystems too); :meth:`ScoreStore.merge_shards` folds shards into the main file
with ``INSERT OR IGNORE`` and removes them.

What a stored score means depends on more than the teacher: the query's text, the corpus the passages come from
and, for listwise teachers, the whole candidate list. Each query's "done" mark therefore records a ``context`` key
(query text, corpus key, and for listwise teachers the ordered candidate list) and the key of its candidate set;
:func:`retrieval_kd.teachers.runner.score_candidates` compares both before it skips a query, rescores what no longer
matches and removes pairs that are no longer candidates, so the store always holds the scores of the candidates it
was last given, never stale ones.

Layout of a store folder: ``scores.sqlite`` with tables ``teachers`` (fingerprint -> spec and config),
``scores`` (fingerprint, qid, did, score) and ``done`` (fingerprint, qid, context, candidates).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["ScoreStore", "resolve_teacher_scores"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS teachers (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    fingerprint TEXT NOT NULL,
    qid TEXT NOT NULL,
    did TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (fingerprint, qid, did)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done (
    fingerprint TEXT NOT NULL,
    qid TEXT NOT NULL,
    context TEXT,
    candidates TEXT,
    PRIMARY KEY (fingerprint, qid)
) WITHOUT ROWID;
"""
_DONE_COLUMNS = ("context", "candidates")  # added in store version 2; a version-1 mark (NULL) counts as stale


class ScoreStore:
    """Teacher scores on disk.

    Args:
        path: the store folder (created if missing).
        shard: write to ``scores.rank<shard>.sqlite`` instead of the main file (distributed scoring).
    """

    MAIN = "scores.sqlite"

    def __init__(self, path: str | os.PathLike, shard: int | None = None):
        from retrieval_kd.errors import IntegrityError

        self.path = Path(path)
        if self.path.suffix == ".sqlite":
            raise ValueError(f"{self.path}: a score store is a folder; pass its folder, not the sqlite file")
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path}: a score store is a folder, and this is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        self.file = self.path / (self.MAIN if shard is None else f"scores.rank{shard}.sqlite")
        try:
            # a long busy timeout: two commands sharing a store wait for each other's transactions
            self._conn = sqlite3.connect(self.file, timeout=120, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(done)")}
            for column in _DONE_COLUMNS:
                if column not in columns:
                    self._conn.execute(f"ALTER TABLE done ADD COLUMN {column} TEXT")
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.file}: not a readable score store ({exc}); move it away and score "
                                 "again, or point --store at another folder") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------------
    def register(self, fingerprint: str, name: str, config: Mapping) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO teachers VALUES (?, ?, ?)",
            (fingerprint, name, json.dumps(dict(config), sort_keys=True, default=str)),
        )

    def put_query(self, fingerprint: str, qid: str, scores: Mapping[str, float], context: str | None = None,
                  candidates: str | None = None, replace: bool = False) -> None:
        """Store all scores of one query and mark it done, in one transaction (see :meth:`put_many`)."""
        self.put_many(fingerprint, {qid: scores}, {qid: (context, candidates)} if context else None,
                      replace={qid} if replace else ())

    def put_many(self, fingerprint: str, by_query: Mapping[str, Mapping[str, float]],
                 keys: Mapping[str, tuple[str | None, str | None]] | None = None, replace: Iterable[str] = (),
                 remove: Mapping[str, Iterable[str]] | None = None) -> None:
        """Store several queries at once, each marked done, in one transaction.

        Args:
            keys: ``{qid: (context, candidates)}`` recorded with each done mark (what the scores depend on).
            replace: queries whose stored scores are all deleted first (rescored from scratch).
            remove: ``{qid: doc ids}`` pairs deleted first (no longer candidates).

        Raises:
            ValueError: a score is not a finite number (NaN would be dropped by SQLite without a word).
        """
        import math

        keys = keys or {}
        rows = []
        for qid, scores in by_query.items():
            for did, s in scores.items():
                value = float(s)
                if not math.isfinite(value):
                    raise ValueError(f"teacher {fingerprint}: score {value} for query {qid!r}, doc {did!r} is not a "
                                     "finite number; nothing of this batch was stored")
                rows.append((fingerprint, qid, did, value))
        with self._transaction() as cur:
            for qid in replace:
                cur.execute("DELETE FROM scores WHERE fingerprint = ? AND qid = ?", (fingerprint, qid))
            for qid, dids in (remove or {}).items():
                cur.executemany("DELETE FROM scores WHERE fingerprint = ? AND qid = ? AND did = ?",
                                [(fingerprint, qid, d) for d in dids])
            cur.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
            cur.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)",
                            [(fingerprint, qid, *keys.get(qid, (None, None))) for qid in by_query])

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.cur = self.conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
            return self.cur

        def __exit__(self, exc_type, exc, tb):
            self.cur.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _transaction(self):
        return self._Tx(self._conn)

    # -- reading -----------------------------------------------------------------------------------------------
    def teachers(self) -> dict[str, dict]:
        rows = self._conn.execute("SELECT fingerprint, name, config FROM teachers").fetchall()
        return {fp: {"name": name, "config": json.loads(cfg)} for fp, name, cfg in rows}

    def done_queries(self, fingerprint: str) -> set[str]:
        rows = self._conn.execute("SELECT qid FROM done WHERE fingerprint = ?", (fingerprint,))
        return {r[0] for r in rows}

    def done_keys(self, fingerprint: str) -> dict[str, tuple[str | None, str | None]]:
        """``{qid: (context, candidates)}`` of the queries marked done for a teacher (``None`` for version-1 marks)."""
        rows = self._conn.execute("SELECT qid, context, candidates FROM done WHERE fingerprint = ?", (fingerprint,))
        return {q: (c, k) for q, c, k in rows}

    def get(self, fingerprint: str, qids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """Scores ``{qid: {did: score}}`` of one teacher (optionally only some queries)."""
        out: dict[str, dict[str, float]] = {}
        if qids is None:
            rows = self._conn.execute("SELECT qid, did, score FROM scores WHERE fingerprint = ?", (fingerprint,))
        else:
            qids = list(qids)
            rows = []
            for i in range(0, len(qids), 500):
                chunk = qids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._conn.execute(
                    f"SELECT qid, did, score FROM scores WHERE fingerprint = ? AND qid IN ({marks})",
                    (fingerprint, *chunk),
                ).fetchall()
        for qid, did, score in rows:
            out.setdefault(qid, {})[did] = score
        return out

    def count(self, fingerprint: str | None = None) -> int:
        if fingerprint is None:
            return self._conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM scores WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    def resolve(self, name_or_fingerprint: str) -> str:
        """A fingerprint from a fingerprint, a teacher name, or ``ensemble`` (the store's only ensemble)."""
        teachers = self.teachers()
        if name_or_fingerprint in teachers:
            return name_or_fingerprint
        if name_or_fingerprint == "ensemble":
            matches = [fp for fp in teachers if fp.startswith("ensemble-")]
        else:
            matches = [fp for fp, t in teachers.items() if t["name"] == name_or_fingerprint]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{t['name']} ({fp})" for fp, t in teachers.items())
        raise KeyError(f"{self.path}: no single teacher {name_or_fingerprint!r}; stored: {known or 'none'}")

    def import_teacher(self, other: str | os.PathLike, fingerprint: str) -> int:
        """Copy one teacher's scores (and done marks) from another store folder; returns the rows added.

        Fingerprints name the teacher's configuration, so scores of the same teacher on the same candidates are
        interchangeable between stores: an expensive teacher is scored once and shared. The done marks travel with
        their context keys, so scores imported for other query texts, another corpus or other candidates are
        rescored by :func:`~retrieval_kd.teachers.runner.score_candidates`, not trusted.
        """
        src = Path(other) / self.MAIN
        if not src.exists():
            raise FileNotFoundError(f"{other}: no score store")
        before = self.count(fingerprint)
        self._fold(src, fingerprint)
        added = self.count(fingerprint) - before
        logger.info("imported %d scores of %s from %s", added, fingerprint, other)
        return added

    def _fold(self, other_file: Path, fingerprint: str | None = None) -> None:
        """Copy another store file's queries (of one teacher, or all) into this one; a query it holds replaces
        this store's version of it whole (its scores and its done mark), so no stale pair survives."""
        where, args = ("WHERE fingerprint = ?", (fingerprint,)) if fingerprint else ("", ())
        self._conn.execute("ATTACH DATABASE ? AS other", (str(other_file),))
        try:
            columns = {row[1] for row in self._conn.execute("PRAGMA other.table_info(done)")}
            done_cols = "fingerprint, qid, " + ", ".join(c if c in columns else "NULL" for c in _DONE_COLUMNS)
            with self._transaction() as cur:
                cur.execute(f"INSERT OR IGNORE INTO teachers SELECT * FROM other.teachers {where}", args)
                cur.execute("DELETE FROM scores WHERE (fingerprint, qid) IN "
                            f"(SELECT fingerprint, qid FROM other.done {where})", args)
                cur.execute(f"INSERT OR REPLACE INTO scores SELECT * FROM other.scores {where}", args)
                cur.execute(f"INSERT OR REPLACE INTO done SELECT {done_cols} FROM other.done {where}", args)
        finally:
            self._conn.execute("DETACH DATABASE other")

    # -- distributed -------------------------------------------------------------------------------------------
    def merge_shards(self) -> int:
        """Fold every ``scores.rank*.sqlite`` of the folder into the main file; returns the rows added."""
        before = self.count()
        for shard in sorted(self.path.glob("scores.rank*.sqlite")):
            self._fold(shard)
            for suffix in ("", "-wal", "-shm"):
                Path(str(shard) + suffix).unlink(missing_ok=True)
        added = self.count() - before
        logger.info("merged shards into %s: %d rows added", self.file, added)
        return added


def resolve_teacher_scores(store_dir: str | os.PathLike, teacher: str, query_ids) -> tuple[str, dict]:
    """``(fingerprint, {qid: {did: score}})`` of one teacher in a score store."""
    if not Path(store_dir, ScoreStore.MAIN).exists():
        raise FileNotFoundError(f"{store_dir}: no score store; create it with `rkd teach ... --store {store_dir}`")
    with ScoreStore(store_dir) as store:
        fingerprint = store.resolve(teacher)
        return fingerprint, store.get(fingerprint, qids=list(query_ids))
