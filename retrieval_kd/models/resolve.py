"""A model reference (a local folder or a Hugging Face hub id), checked before any library loads it.

Loaded offline (``HF_HUB_OFFLINE=1``), a hub id that is not in the local Hugging Face cache makes
sentence-transformers and transformers fail deep inside ``huggingface_hub`` with a message about connecting to
the hub. :func:`resolve_model` says instead which model is missing and how to get it, and removes what the failed
lookup left in the cache (only folders without any file, never a real snapshot). Every place that loads a model
(encoders, teachers, students) calls it first.

Without ``HF_HUB_OFFLINE`` on a machine that cannot reach the hub, ``huggingface_hub`` retries every file request
of a cached model with back-off: minutes per model load (3 min 57 s for all-MiniLM-L6-v2 on the project's offline
machine). So the first hub id :func:`resolve_model` sees, when neither ``HF_HUB_OFFLINE`` nor
``TRANSFORMERS_OFFLINE`` is in the environment, costs one request to the hub's endpoint (a few seconds at most,
through the proxies ``huggingface_hub`` uses); when that fails the process goes offline, as if ``HF_HUB_OFFLINE=1``
were set, with one warning (:func:`offline_when_unreachable`). Set either variable (``0`` included) to skip the check.
:func:`embedding_dimension` reads a locally available model's output
dimension from its files, without loading it (the pipeline's dry run checks PQ sizes with it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

from retrieval_kd.errors import UnavailableError
from retrieval_kd.models.offline_pack import OFFLINE_MODELS, hub_cache_dir, snapshot_path

logger = logging.getLogger(__name__)

__all__ = ["embedding_dimension", "hf_offline", "model_folder", "offline_when_unreachable", "resolve_model", "same_model"]

# A hub id: ``NAME`` or ``ORG/NAME`` of letters, digits, ``_ . -`` (huggingface_hub's rule, without ``--`` / ``..``).
_HUB_ID = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
_TRUE = {"1", "on", "yes", "true"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: seconds the reachability check waits for the hub
HUB_CHECK_TIMEOUT = 5.0
_hub_checked = False
_hub_lock = threading.Lock()


def hf_offline() -> bool:
    """Whether the Hugging Face libraries may not reach the hub (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in _OFFLINE_VARS):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable() -> str | None:
    """Why the hub's endpoint cannot be reached (one request, no retry), or None when it answers at all."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure to connect (DNS, refused, timeout, TLS) means unreachable
        return f"{type(exc).__name__}: {exc}"
    return None


def offline_when_unreachable() -> bool:
    """Go offline (as ``HF_HUB_OFFLINE=1``) when the hub cannot be reached; returns whether the process is offline.

    Checked once per process, and only when neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE`` is in the
    environment (a value the user set is theirs). Going offline sets the variable (child processes inherit it) and
    ``huggingface_hub.constants.HF_HUB_OFFLINE``, which ``huggingface_hub``, transformers and sentence-transformers
    read at each call, so cached models load at once instead of after minutes of retries.
    """
    global _hub_checked
    with _hub_lock:  # a second thread waits for the first one's answer
        offline = hf_offline()
        if offline or _hub_checked or any(v in os.environ for v in _OFFLINE_VARS):
            return offline
        _hub_checked = True
        why = _hub_unreachable()
        if why is None:
            return False
        from huggingface_hub import constants

        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
    logger.warning("the Hugging Face hub (%s) is not reachable (%s): models load from the local cache only, as "
                   "with HF_HUB_OFFLINE=1 (set HF_HUB_OFFLINE to 1 or 0 to skip this check)", constants.ENDPOINT, why)
    return True


def _cached_snapshot(hub_id: str) -> Path | None:
    """The snapshot ``refs/main`` points at, else any cached snapshot that holds a file (a pinned revision)."""
    snap = snapshot_path(hub_id)
    if snap is not None:
        return snap
    snapshots = hub_cache_dir() / ("models--" + hub_id.replace("/", "--")) / "snapshots"
    if snapshots.is_dir():
        for candidate in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if candidate.is_dir() and any(p.is_file() for p in candidate.rglob("*")):
                return candidate
    return None


def model_folder(ref: str | os.PathLike) -> Path | None:
    """The folder holding a model's files here: ``ref`` itself when it is a folder, else its cached hub snapshot."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if _HUB_ID.fullmatch(str(ref)):
        return _cached_snapshot(str(ref))
    return None


def _leftover(path: Path, repo: Path) -> bool:
    """A folder, or one of the empty "file not on the hub" markers huggingface_hub keeps under ``.no_exist``."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return True
    return path.relative_to(repo).parts[0] == ".no_exist" and path.stat().st_size == 0


def _remove_empty_leftovers(hub_id: str) -> None:
    """Remove the cache folders a failed lookup of ``hub_id`` left, when they hold no file (but empty markers)."""
    cache = hub_cache_dir()
    name = "models--" + hub_id.replace("/", "--")
    for folder in (cache / name, cache / ".locks" / name):
        if not folder.is_dir() or not all(_leftover(p, folder) for p in folder.rglob("*")):
            continue  # absent, or real content: never touched
        for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir() if sub.is_dir() else sub.unlink()
        folder.rmdir()
        logger.info("removed the empty cache folder %s left by the lookup of %s", folder, hub_id)


def resolve_model(ref: str | os.PathLike, what: str = "model") -> str:
    """Check that a model can be loaded here; returns ``ref`` unchanged (as a string).

    A local folder is used as it is. A hub id is fine when it is in the local Hugging Face cache, or when the hub
    may be reached (it is downloaded on load); the first hub id of a process may take it offline
    (:func:`offline_when_unreachable`). Offline and not cached, it raises
    :class:`~retrieval_kd.errors.UnavailableError` naming the id, where the cache is, and how to get the model;
    an empty folder that a lookup left in the cache is removed first.

    Args:
        ref: a folder or a hub id (``ORG/NAME``).
        what: what the model is for, in the message (``"teacher model"``, ``"student"``).
    """
    text = str(ref).strip()
    if not text:
        raise UnavailableError(f"{what}: no model named (an empty model id)")
    path = Path(text).expanduser()
    if path.is_dir():
        return text
    if path.exists():
        raise UnavailableError(f"{what} {text!r}: {path} is a file; give a model folder or a Hugging Face hub id")
    if not _HUB_ID.fullmatch(text):
        raise UnavailableError(f"{what} {text!r}: no such folder, and not a Hugging Face hub id (ORG/NAME)")
    offline = offline_when_unreachable()
    if _cached_snapshot(text) is not None or not offline:
        return text
    _remove_empty_leftovers(text)
    if text in OFFLINE_MODELS:
        how = "run `make models` (rkd models pull-offline) to put it there from the offline model pack"
    else:
        how = ("download it once with a network (unset HF_HUB_OFFLINE), or use a folder or a model of the offline "
               f"pack (`make models`: {', '.join(OFFLINE_MODELS)})")
    raise UnavailableError(f"{what} {text!r} is not a local folder and not in the local Hugging Face cache "
                           f"({hub_cache_dir()}), and HF_HUB_OFFLINE is set: {how}")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pooling_dimension(cfg: dict) -> int | None:
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    if not isinstance(dim, int):
        return None
    modes = cfg.get("pooling_mode")
    if modes is None:  # the legacy pooling_mode_* booleans
        modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    n = 1 if isinstance(modes, str) else max(1, len(modes))
    return dim * n


def embedding_dimension(ref: str | os.PathLike) -> int | None:
    """A model's embedding dimension read from its files, or None when the model is not here or it cannot tell.

    A sentence-transformers folder: the last ``Dense`` module's ``out_features``, else its ``Pooling`` module's
    dimension (times the number of pooling modes); a plain transformers folder: ``hidden_size`` (``d_model``,
    ``dim``) of ``config.json``. Nothing is loaded or downloaded.
    """
    folder = model_folder(ref)
    if folder is None:
        return None
    modules = folder / "modules.json"
    dim = None
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text())
        except (OSError, ValueError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            cfg = _read_json(folder / str(entry.get("path", "")) / "config.json")
            kind = str(entry.get("type", ""))
            if isinstance(cfg.get("out_features"), int):
                dim = cfg["out_features"]
            elif kind.endswith("Pooling"):
                dim = _pooling_dimension(cfg) or dim
    if dim is None:
        cfg = _read_json(folder / "config.json")
        for key in ("hidden_size", "d_model", "dim"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return dim


def same_model(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two model references name the same model: equal ids, or folders that resolve to one path."""
    if str(a) == str(b):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
