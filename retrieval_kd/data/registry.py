"""Registered datasets: one YAML manifest per collection in ``data/manifests/``.

A manifest names the official download (URL and checksum), the license, the citation, where each file lies in
a BEIR-layout folder, and the collection's evaluation conventions (TREC DL passage: binary measures count
grade >= 2). Manifests are read lazily, like ir_datasets' registry; :func:`register` adds one from code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from retrieval_kd.errors import ConfigError
from retrieval_kd.paths import manifests_dir

logger = logging.getLogger(__name__)

__all__ = ["FileSpec", "Conventions", "Manifest", "list_datasets", "get_manifest", "register"]


@dataclass(frozen=True)
class FileSpec:
    """One file of a collection: its path in a BEIR-layout folder, and where to get it officially."""

    path: str
    url: str | None = None
    sha256: str | None = None  # of the uncompressed content
    alternative: str | None = None  # e.g. an ir_datasets id to use online instead

    @classmethod
    def parse(cls, raw: dict | str | None) -> FileSpec | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            return cls(path=raw)
        return cls(**{k: raw.get(k) for k in ("path", "url", "sha256", "alternative")})


@dataclass(frozen=True)
class Conventions:
    """How a collection is evaluated by the field.

    Args:
        relevance_level: minimum grade that binary measures (MRR, MAP, Recall, P) count as relevant.
        ignore_identical_ids: drop a query's own id from its results (BEIR does this for ArguAna and Quora, whose
            queries are documents of their corpus). None: decide from the data
            (:meth:`~retrieval_kd.data.collection.Collection.conventions_for`), as for a BEIR folder loaded by path.
        metrics: the measures reported by default, in ranx names.
    """

    relevance_level: int = 1
    ignore_identical_ids: bool | None = False
    metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")


@dataclass(frozen=True)
class Manifest:
    name: str
    description: str = ""
    homepage: str | None = None
    license: str | None = None
    citation: str | None = None
    mirror_folder: str | None = None
    archive: dict | None = None  # {url, md5 | sha256, member_prefix}
    corpus: FileSpec | None = None
    queries: FileSpec | None = None
    qrels: dict[str, FileSpec] = field(default_factory=dict)
    conventions: Conventions = field(default_factory=Conventions)
    source: Path | None = None

    @property
    def splits(self) -> list[str]:
        return list(self.qrels)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a valid YAML manifest ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{path}: a dataset manifest is a YAML mapping with at least 'name'")
        try:
            return cls._from_mapping(raw, path)
        except (TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed dataset manifest ({exc}); see data/manifests/scifact.yaml") from None

    @classmethod
    def _from_mapping(cls, raw: dict, path: Path) -> Manifest:
        files = raw.get("files") or {}
        conv = raw.get("conventions") or {}
        if "metrics" in conv:
            conv = {**conv, "metrics": tuple(conv["metrics"])}
        return cls(
            name=raw["name"],
            description=str(raw.get("description", "")).strip(),
            homepage=raw.get("homepage"),
            license=raw.get("license"),
            citation=raw.get("citation"),
            mirror_folder=raw.get("mirror_folder", raw["name"]),
            archive=raw.get("archive"),
            corpus=FileSpec.parse(files.get("corpus")),
            queries=FileSpec.parse(files.get("queries")),
            qrels={split: FileSpec.parse(spec) for split, spec in (files.get("qrels") or {}).items()},
            conventions=Conventions(**conv),
            source=path,
        )


_REGISTRY: dict[str, Manifest] = {}
_LOADED = False


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    folder = manifests_dir()
    for path in sorted(folder.glob("*.yaml")):
        manifest = Manifest.from_yaml(path)
        _REGISTRY.setdefault(manifest.name, manifest)
    _LOADED = True
    logger.debug("loaded %d dataset manifests from %s", len(_REGISTRY), folder)


def register(manifest: Manifest) -> None:
    """Register a dataset from code (overrides a manifest of the same name)."""
    _load_all()
    _REGISTRY[manifest.name] = manifest


def list_datasets() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_manifest(name: str) -> Manifest:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"no registered dataset named {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
