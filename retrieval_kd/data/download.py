"""Downloads with checksum verification, written atomically into the cache.

A download streams to a temporary file next to its target, is hashed on the way (over the uncompressed
content when the URL is gzipped), and is renamed into place only when the checksum matches. An interrupted
download leaves nothing behind that could be mistaken for the real file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from retrieval_kd.data.formats import atomic_write
from retrieval_kd.errors import IntegrityError
from retrieval_kd.utils.fs import sha256_file

logger = logging.getLogger(__name__)

__all__ = ["ChecksumError", "download", "extract_zip", "sha256_of_content"]

_CHUNK = 1 << 20


class ChecksumError(IntegrityError, OSError):
    """A downloaded file does not have the checksum its manifest promises."""


def sha256_of_content(path: str | os.PathLike) -> str:
    """sha256 of a file's content, un-gzipped if it is gzipped (manifests record uncompressed checksums)."""
    return sha256_file(path, gunzip=True)


def _hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    gunzip: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` into ``dest``, verifying a checksum, atomically.

    Args:
        url: http(s) or file URL.
        dest: final path.
        sha256: expected sha256 of the stored (uncompressed) content.
        md5: expected md5 of the downloaded bytes (BEIR publishes md5 sums of its zips).
        gunzip: decompress while storing; defaults to True when the URL ends in ``.gz`` and ``dest`` does not.

    Raises:
        urllib.error.URLError: the URL could not be reached.
        ChecksumError: the content's checksum differs; nothing is stored.
    """
    from retrieval_kd.utils.progress import progress

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if gunzip is None:
        gunzip = url.endswith(".gz") and dest.suffix != ".gz"
    tmp_raw = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    logger.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp_raw, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            bar = progress(iter(lambda: response.read(_CHUNK), b""), desc=f"download {dest.name}", total=(
                (total + _CHUNK - 1) // _CHUNK if total else None), unit="MiB")
            for chunk in bar:
                out.write(chunk)
        if md5 and _hash(tmp_raw, "md5") != md5.lower():
            raise ChecksumError(f"{url}: md5 {_hash(tmp_raw, 'md5')} differs from the expected {md5}")
        if gunzip:
            try:
                with gzip.open(tmp_raw, "rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise ChecksumError(f"{url}: the downloaded gzip data is truncated or corrupt ({exc}); "
                                    "nothing is stored, run again to download it anew") from None
            tmp_raw.unlink()
        else:
            os.replace(tmp_raw, tmp)
        if sha256:
            got = sha256_of_content(tmp)
            if got != sha256.lower():
                raise ChecksumError(f"{url}: sha256 {got} differs from the expected {sha256}; not stored")
        else:
            logger.warning("%s: no checksum in the manifest; stored without verification", url)
        os.replace(tmp, dest)
    finally:
        for leftover in (tmp_raw, tmp):
            if leftover.exists():
                leftover.unlink()
    return dest


def extract_zip(archive: str | os.PathLike, dest_dir: str | os.PathLike, member_prefix: str = "") -> list[Path]:
    """Extract the members under ``member_prefix`` of a zip into ``dest_dir`` (prefix stripped), each atomically."""
    dest_dir = Path(dest_dir)
    try:
        return _extract(archive, dest_dir, member_prefix)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ChecksumError(f"{archive}: the zip archive is truncated or corrupt ({exc}); delete it and run again "
                            "to download it anew") from None


def _extract(archive: str | os.PathLike, dest_dir: Path, member_prefix: str) -> list[Path]:
    written = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(member_prefix):
                continue
            rel = info.filename[len(member_prefix):]
            target = (dest_dir / rel).resolve()
            if dest_dir.resolve() not in target.parents:
                raise IntegrityError(f"{archive}: member {info.filename!r} would extract outside {dest_dir}; "
                                     "the archive is not the official one, delete it")
            with zf.open(info) as src, atomic_write(target, "wb", gzip_output=False) as out:
                shutil.copyfileobj(src, out, _CHUNK)
            written.append(target)
    return written


URLError = urllib.error.URLError
