"""Files and folders that are never torn, never mixed up and never someone else's: one helper for each job.

* :class:`atomic_write` writes a file like ``open()``, through a temporary file renamed in on success.
* :func:`atomic_folder` writes an output folder (an index, a student, an exported dataset) aside and swaps it in:
  build in ``.<name>.<pid>.<rand>.tmp``, rename the old folder away, rename the new one in, delete the old. A
  crash at any point leaves the old folder or the new one whole (a crash between the two renames leaves the old
  one under its ``.old`` name, which the next write or :func:`recover_folder` puts back).
* It replaces only what retrieval-kd wrote, of the same kind: each folder carries a marker, ``rkd_folder.json``
  (``{"kind": ...}``). An existing folder without it, or of another kind (a student folder is not an index), is
  refused with :class:`~retrieval_kd.errors.FolderExistsError` unless the caller passes ``overwrite=True``
  (``--overwrite`` on the command line). Folders written before markers existed are recognised by their sidecar
  (``rkd_index.json``, ``rkd_training.json``).
* :func:`file_lock` keeps two processes from writing the same thing: writers of a folder refuse at once
  (:class:`~retrieval_kd.errors.LockedError`, naming the other process), cache builders wait for each other.
  Lock files live under ``<cache>/locks/``, never beside the user's files.
* :func:`sweep_stale_temps` removes the temporary files and folders of writers that were killed (their process
  no longer exists), so a ``kill -9`` leaves nothing behind for long.
* :func:`sha256_file` is the one file hash (optionally over the un-gzipped content, as manifests record it).
  :func:`sha256_memo` remembers it by (path, size, mtime), so a large file is hashed once.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from retrieval_kd.errors import FolderExistsError, LockedError

logger = logging.getLogger(__name__)

__all__ = ["MARKER", "FOLDER_KINDS", "atomic_folder", "atomic_write", "check_output_folder", "folder_kind", "recover_folder",
           "file_lock", "sweep_stale_temps", "temp_name", "sha256_file", "sha256_memo"]

MARKER = "rkd_folder.json"
#: what each kind of folder is (the marker's ``kind``); a folder is only ever replaced by one of the same kind
FOLDER_KINDS = {
    "dense-index": "a FAISS index folder (rkd index build, rkd vq train)",
    "sparse-index": "a sparse inverted index folder (rkd index build sparse)",
    "bm25-index": "a BM25 index folder (rkd search bm25)",
    "dense-student": "a dense student (rkd train dense)",
    "sparse-student": "a sparse student (rkd train sparse)",
    "teacher-dataset": "teacher-scored pairs as a Hugging Face dataset (rkd teach export --format hf)",
    "exported-model": "an encoder exported to ONNX (rkd export-model)",
}
_CHUNK = 1 << 20


# -- files -------------------------------------------------------------------------------------------------------
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
        if self.path.is_dir():  # refused before anything is written (os.replace would fail at the end)
            raise IsADirectoryError(21, "Is a directory", str(self.path))
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
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.unlink(self.tmp)
            raise
        return False


# -- hashing -----------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, gunzip: bool = False) -> str:
    """sha256 of a file's bytes; with ``gunzip``, of its un-gzipped content when it is gzipped (magic bytes)."""
    h = hashlib.sha256()
    path = Path(path)
    opener = open
    if gunzip:
        with open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                opener = gzip.open
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# -- temporary names and leftovers -------------------------------------------------------------------------------
def temp_name(target: Path, suffix: str = ".tmp") -> Path:
    """``.<name>.<pid>.<random><suffix>`` beside ``target``: unique, and its writer's pid is readable from it."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(target: str | os.PathLike, suffixes: tuple[str, ...] = (".tmp", ".part")) -> int:
    """Delete ``.<name>.<pid>.*<suffix>`` leftovers of ``target`` whose writing process is gone; returns the count.

    Only names of this exact pattern are touched, so nothing a user made is removed.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return 0
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]*({'|'.join(map(re.escape, suffixes))})$")
    removed = 0
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
        logger.info("removed %s, left by a writer that was killed", entry)
    return removed


# -- locks -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(target: str | os.PathLike, what: str = "", wait: bool = False,
              timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` inside the block.

    ``wait=False``: another holder means :class:`LockedError` at once, naming its pid. ``wait=True``: block until
    it is free (``timeout`` seconds at most, then :class:`LockedError`). The lock is an ``flock`` on a file under
    ``<cache>/locks/`` named after the target's absolute path (nothing is added beside the user's files); it dies
    with its process, so a ``kill -9`` never leaves anything locked.
    """
    import fcntl

    from retrieval_kd.paths import cache_dir

    target = Path(target)
    where = str(target.absolute().resolve(strict=False))
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock_path = locks / f"{hashlib.sha256(where.encode()).hexdigest()[:20]}-{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)[-40:]}.lock"
    fh = open(lock_path, "a+")
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    raise LockedError(f"{target}: {what or 'it'} is being written by {holder}; wait for it to "
                                      "finish (or stop it), then run again") from None
                if not announced:
                    logger.info("%s: waiting for %s, which is writing it", target, holder)
                    announced = True
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


# -- output folders ----------------------------------------------------------------------------------------------
def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of folder retrieval-kd wrote at ``folder`` (its marker, or a legacy sidecar), else ``None``."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        kind = marker.get("kind") if isinstance(marker, dict) else None
        if isinstance(kind, str):
            return kind
    except (OSError, ValueError):
        pass
    # folders written before markers existed: their sidecar says what they are
    try:
        sidecar = json.loads((folder / "rkd_index.json").read_text(encoding="utf-8"))
        kind = sidecar.get("type") if isinstance(sidecar, dict) else None
        return {"bm25": "bm25-index", "sparse-inverted": "sparse-index"}.get(kind, "dense-index")
    except (OSError, ValueError):
        pass
    if (folder / "rkd_training.json").is_file():
        return "sparse-student" if (folder / "router_config.json").exists() else "dense-student"
    return None


def _old_copies(dest: Path) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.\d+\.[0-9a-f]*\.old$")
    return sorted(p for p in dest.parent.iterdir() if pattern.match(p.name)) if dest.parent.is_dir() else []


def recover_folder(dest: str | os.PathLike) -> bool:
    """Put back a folder that a crash left under its ``.old`` name (between the two renames of a swap)."""
    dest = Path(dest)
    olds = [p for p in _old_copies(dest) if not _pid_alive(int(p.name.rsplit(".", 3)[-3]))]
    if dest.exists() or not olds:
        return False
    os.replace(olds[-1], dest)
    logger.warning("%s: restored the previous folder that an interrupted write had moved aside", dest)
    return True


def check_output_folder(dest: str | os.PathLike, kind: str, overwrite: bool = False) -> None:
    """Raise :class:`FolderExistsError` unless ``dest`` is absent, or a folder retrieval-kd wrote of ``kind``.

    Call it before long work (training, encoding) so a refused output fails at once, not after an hour.
    """
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    dest = Path(dest)
    recover_folder(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if overwrite:
        return
    if not dest.is_dir() or dest.is_symlink():
        raise FolderExistsError(f"{dest}: exists and is not a folder; choose another output path "
                                "(or pass --overwrite to replace it)")
    found = folder_kind(dest)
    if found == kind:
        return
    if found is None and not any(dest.iterdir()):
        return  # an empty folder holds nothing to lose
    what = f"holds {FOLDER_KINDS.get(found, found)}" if found else "was not written by retrieval-kd"
    raise FolderExistsError(f"{dest}: exists and {what}, not {FOLDER_KINDS[kind]}; choose another output "
                            "folder, or pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, kind: str, overwrite: bool = False,
                  meta: dict | None = None) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``dest`` whole (see the module docstring).

    ``dest`` is checked first (:func:`check_output_folder`) and locked for the whole write: a second writer of
    the same folder gets :class:`LockedError`. On an exception the temporary folder is removed and ``dest`` is
    untouched.
    """
    from retrieval_kd import __version__

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest, what=FOLDER_KINDS.get(kind, kind)):
        check_output_folder(dest, kind, overwrite)
        sweep_stale_temps(dest)
        for old in _old_copies(dest):
            shutil.rmtree(old, ignore_errors=True)
        tmp = temp_name(dest)
        tmp.mkdir()
        try:
            yield tmp
            marker = {"kind": kind, "writer": f"retrieval-kd {__version__}",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(meta or {})}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
            _fsync_tree(tmp)
            old = None
            if dest.exists() or dest.is_symlink():
                if dest.is_dir() and not dest.is_symlink():
                    old = temp_name(dest, ".old")
                    os.replace(dest, old)
                else:  # a file or link, only reached with overwrite=True
                    dest.unlink()
            os.replace(tmp, dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def sha256_memo(path: str | os.PathLike, memo_file: str | os.PathLike, gunzip: bool = False) -> str:
    """:func:`sha256_file`, remembered by (resolved path, size, mtime_ns) in the small JSON file ``memo_file``.

    An 8.8M-passage corpus is hashed once, not on every start; a file that is rewritten (new size or mtime) is
    hashed again and its older entries are dropped. A memo that is absent, torn or not writable only costs a hash.
    """
    path = Path(path)
    st = path.stat()
    where = f"{path.resolve()}|"
    stamp = f"{where}{st.st_size}|{st.st_mtime_ns}" + ("|content" if gunzip else "")
    memo_file = Path(memo_file)
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    digest = memo.get(stamp)
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    if st.st_size > 1 << 26:
        logger.info("%s: computing its sha256 (%d MiB; remembered in %s)", path, st.st_size >> 20, memo_file)
    digest = sha256_file(path, gunzip=gunzip)
    memo = {k: v for k, v in memo.items() if not (k.startswith(where) and k.endswith("|content") == gunzip)}
    memo[stamp] = digest
    try:
        with atomic_write(memo_file) as out:
            json.dump(memo, out, indent=0)
    except OSError as exc:  # a read-only cache: the digest is still right, only not remembered
        logger.debug("%s: cannot remember the digest (%s)", memo_file, exc)
    return digest
