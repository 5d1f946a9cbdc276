"""What an index folder says it is: its kind, the encoder that embeds its queries, and the corpus it was built on.

Every index folder's ``rkd_index.json`` carries, besides its own parameters, the keys a reader needs to query it
without being told anything else (:func:`source_record` fills them when the folder is written):

* ``encoder``: the hub id, or the absolute path of a local model folder; ``null`` when the index was built from
  bare ``--embeddings`` (nobody said which model made them: a reader must name one);
  ``encoder_revision``: the hub snapshot's commit, or ``local-<hash>`` of a folder's files
  (:func:`retrieval_kd.models.revision.model_revision`); ``encoder_path``: a local model folder relative to the
  index folder, so an experiment folder holding both can be moved or copied whole;
* ``query_prompt``: the prompt (prefix) put before each query (``null``: none); ``normalize``: whether query and
  document vectors are L2-normalised; ``similarity``: ``cosine`` (inner product of normalised vectors), ``ip``,
  ``dot`` (sparse vectors) or ``bm25``;
* ``dataset``: the dataset reference (registered name, ``irds:`` id, or the absolute path of a BEIR folder) and
  ``dataset_path`` (a BEIR folder relative to the index folder); ``corpus_key``: the key of the corpus file's
  bytes (:func:`retrieval_kd.index.dense.corpus_identity`), ``null`` for bare ``--embeddings``.

Older sidecars without these keys still open: :func:`resolve_encoder` and :func:`resolve_dataset` read what is
there, and a dense index without ``normalize``/``similarity`` is taken as normalised, cosine (the encoders here
are cosine models).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["INDEX_KINDS", "index_kind", "source_record", "resolve_encoder", "resolve_dataset", "check_encoder"]

#: folder marker kind -> what :func:`index_kind` calls it
INDEX_KINDS = {"dense-index": "dense", "sparse-index": "sparse", "bm25-index": "bm25"}
_SIMILARITY = {"sparse": "dot", "bm25": "bm25"}
_UNKNOWN = (None, "", "unknown")


def index_kind(folder: str | os.PathLike) -> str:
    """``dense``, ``sparse`` or ``bm25``: the kind of index folder retrieval-kd wrote at ``folder``.

    Raises :class:`~retrieval_kd.errors.ConfigError` for a missing folder or one that holds no index.
    """
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.utils.fs import FOLDER_KINDS, folder_kind

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such index folder; give a folder written by rkd index build, rkd vq train "
                          "or rkd search bm25")
    kind = folder_kind(folder)
    if kind not in INDEX_KINDS:
        what = f"holds {FOLDER_KINDS.get(kind, kind)}" if kind else "holds no rkd_index.json"
        raise ConfigError(f"{folder}: not an index folder (it {what}); give a folder written by rkd index build, "
                          "rkd vq train or rkd search bm25")
    return INDEX_KINDS[kind]


def _relative(target: str, folder: Path) -> str:
    return os.path.relpath(Path(target).resolve(), Path(folder).resolve(strict=False))


def source_record(meta: Mapping, folder: str | os.PathLike, kind: str) -> dict:
    """The sidecar keys of the module docstring for an index of ``kind`` written to ``folder``, from ``meta``.

    ``meta`` holds what the writer knows: ``encoder`` (model id or folder; absent or ``None``: unknown),
    ``query_prompt``, ``normalize`` and ``dataset``; the rest is derived. A BM25 index records no encoder.
    """
    from retrieval_kd.models.revision import model_revision

    folder = Path(folder)
    record: dict = {}
    if kind != "bm25":
        encoder = meta.get("encoder")
        encoder = None if encoder in _UNKNOWN else str(encoder)
        local = encoder is not None and Path(encoder).is_dir()
        normalize = bool(meta.get("normalize", kind == "dense"))
        record.update(
            encoder=str(Path(encoder).resolve()) if local else encoder,
            encoder_revision=model_revision(encoder) if encoder else None,
            encoder_path=_relative(encoder, folder) if local else None,
            query_prompt=meta.get("query_prompt"),
            normalize=normalize,
            similarity=_SIMILARITY.get(kind, "cosine" if normalize else "ip"),
        )
    else:
        record["similarity"] = "bm25"
    dataset = meta.get("dataset")
    local = isinstance(dataset, str) and Path(dataset).is_dir()
    record.update(dataset=str(Path(dataset).resolve()) if local else dataset,
                  dataset_path=_relative(dataset, folder) if local else None,
                  corpus_key=meta.get("corpus_key"))
    return record


def _beside(meta: Mapping, folder: Path, key: str) -> str | None:
    """``meta[key]`` (a path relative to ``folder``) when that folder exists, else None."""
    relative = meta.get(key)
    if isinstance(relative, str) and (folder / relative).is_dir():
        return os.path.normpath(folder / relative)
    return None


def resolve_encoder(meta: Mapping, folder: str | os.PathLike, override: str | None = None) -> str | None:
    """The model that embeds ``folder``'s queries: ``override``, else the sidecar's (its folder-relative path
    first), else None (built from bare embeddings, or an older sidecar that names none)."""
    if override:
        return str(override)
    return _beside(meta, Path(folder), "encoder_path") or (None if meta.get("encoder") in _UNKNOWN
                                                            else str(meta["encoder"]))


def resolve_dataset(meta: Mapping, folder: str | os.PathLike, override: str | None = None) -> str | None:
    """The dataset reference of the corpus ``folder`` was built on: ``override``, else the sidecar's (a BEIR folder
    relative to the index first), else None."""
    if override:
        return str(override)
    dataset = meta.get("dataset")
    return _beside(meta, Path(folder), "dataset_path") or (str(dataset) if dataset else None)


def check_encoder(meta: Mapping, folder: str | os.PathLike, encoder: str) -> None:
    """Warn when ``encoder`` is the sidecar's model but its revision changed since the index was built (a model
    retrained into the same folder, another hub snapshot): its query vectors no longer match the documents'."""
    from retrieval_kd.models.revision import model_revision

    recorded = meta.get("encoder_revision")
    if recorded in _UNKNOWN or resolve_encoder(meta, folder) != encoder:
        return
    now = model_revision(encoder)
    if now not in _UNKNOWN and now != recorded:
        logger.warning("%s: the encoder %s is at revision %s, the index was built with %s; rebuild the index if its "
                       "weights changed", folder, encoder, now, recorded)
