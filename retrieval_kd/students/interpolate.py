"""Weight-space interpolation of a trained student with the model it started from (WiSE-FT).

``weights = start_weight * start + (1 - start_weight) * trained``, tensor by tensor. Wortsman et al. 2022 ("Robust
fine-tuning of zero-shot models", WiSE-FT) show that the mix of a fine-tuned model with its zero-shot start keeps
most of the fine-tuning gain where the fine-tuning data matches the test data and much of the start's robustness
where it does not. Label-free distillation is the case where it may not: the teacher (BM25 + a bi-encoder, on
made-up queries) can be weaker than the start on a collection the start was trained for (all-MiniLM-L6-v2 on MS
MARCO), and nothing without labels says so in advance. ``start_weight`` keeps the student close to where it
started (issue 19).

Only floating-point tensors are mixed; integer buffers (position ids) are the trained model's. Both models must
have the same tensors (the student is a fine-tuned copy of its start); a mismatch is an error naming the tensor.

sentence-transformers 6 ships ``merge_models`` (mergekit-based, for merging different fine-tunes of one base); the mix
of a student with its own start needs only a state-dict loop, with errors naming the folders and the training record.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["apply_start_weight", "check_start_weight", "interpolate_state", "interpolate_student", "recorded_start",
           "snapshot", "start_reference"]


def check_start_weight(value: Any, where: str = "start_weight") -> float:
    """``value`` as a float in [0, 1]; else a :class:`ConfigError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise ConfigError(f"{where} must be a number in [0, 1] (0: the trained model as it is, 1: the starting "
                          f"model), got {value!r}")
    return float(value)


def snapshot(model) -> dict:
    """A detached CPU copy of ``model``'s state dict (the start, taken before training changes it in place; on the
    CPU so that it costs no accelerator memory and mixes with the model wherever the trainer moved it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def interpolate_state(start: dict, trained: dict, start_weight: float) -> dict:
    """``start_weight * start + (1 - start_weight) * trained`` for each floating-point tensor (computed in fp32,
    stored in the trained tensor's dtype); other tensors are the trained ones."""
    import torch

    start_weight = check_start_weight(start_weight)
    if set(start) != set(trained):
        only = sorted(set(start) ^ set(trained))
        raise ConfigError(f"the trained model and its start hold different tensors (e.g. {only[0]!r}): "
                          "start_weight mixes a student with the model it was trained from")
    out = {}
    for name, t in trained.items():
        s = start[name]
        if s.shape != t.shape:
            raise ConfigError(f"tensor {name!r}: shape {tuple(t.shape)} in the trained model, {tuple(s.shape)} "
                              "in its start")
        if not torch.is_floating_point(t):
            out[name] = t
            continue
        mixed = start_weight * s.detach().to(device=t.device, dtype=torch.float32, copy=True) \
            + (1.0 - start_weight) * t.detach().to(torch.float32)
        out[name] = mixed.to(t.dtype)
    return out


def apply_start_weight(model, start: dict, start_weight: float) -> None:
    """Load the mix of ``model``'s trained weights with ``start`` (:func:`snapshot`) into ``model``."""
    if not start_weight:
        return
    mixed = interpolate_state(start, model.state_dict(), start_weight)
    model.load_state_dict(mixed)
    logger.info("weights interpolated with the starting model (start_weight %.3g)", start_weight)


def start_reference(model: str) -> str:
    """What a training record names as a student's start: an existing folder as its absolute path (a relative path
    would be read against wherever the record is used later), anything else (a hub id) as given."""
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.is_dir() else str(model)


def _read_record(folder: Path) -> dict:
    record_file = folder / "rkd_training.json"
    if not record_file.exists():
        return {}
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{record_file}: unreadable training record ({exc})") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{record_file}: a training record is a JSON object")
    return record


def recorded_start(trained: str | Path) -> str:
    """The starting model the training record of the student folder ``trained`` names (``summary.start``, written
    since start_weight exists, else ``config.model``); a :class:`ConfigError` naming the record if it names none,
    or names a relative folder path that does not exist from here."""
    record_file = Path(trained) / "rkd_training.json"
    record = _read_record(Path(trained))
    summary, config = record.get("summary") or {}, record.get("config") or {}
    start = summary.get("start") if isinstance(summary, dict) else None
    start = start or (config.get("model") if isinstance(config, dict) else None)
    if not isinstance(start, str) or not start:
        raise ConfigError(f"{record_file}: no training record naming the starting model; pass it explicitly")
    if not Path(start).is_absolute() and (start.startswith(".") or start.count("/") > 1):
        if not Path(start).is_dir():
            raise ConfigError(f"{record_file}: names the starting model {start!r}, a relative path that does not "
                              "exist from here; pass the start explicitly")
    return start


def interpolate_student(start: str, trained: str | Path, start_weight: float, output_dir: str | Path,
                        overwrite: bool = False) -> Path:
    """Write a SentenceTransformer folder mixing the dense student ``trained`` with the model ``start`` it was
    trained from (hub id or folder), ``start_weight`` of the start. The folder is written atomically, as a dense
    student, with its ``rkd_training.json`` carrying the interpolation (start, weight and the SHA-256 of the trained
    weights); an ``output_dir`` whose record holds the same three is up to date and kept. Returns ``output_dir``.

    Refused, each with a :class:`ConfigError`: a folder that is not a dense student (a sparse student's query side
    is built from IDF and is mixed at training time, ``start_weight``), a student that is already a mix, an output
    that is the student or the start itself."""
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.models.resolve import resolve_model
    from retrieval_kd.utils.fs import atomic_folder, check_output_folder, folder_kind, sha256_file

    start_weight = check_start_weight(start_weight)
    trained, out = Path(trained), Path(output_dir)
    record_file = trained / "rkd_training.json"
    if not (trained / "modules.json").is_file():
        raise ConfigError(f"{trained}: not a SentenceTransformer folder (no modules.json); give a dense student "
                          "folder that `rkd train dense` wrote")
    if folder_kind(trained) == "sparse-student" or (trained / "router_config.json").exists():
        raise ConfigError(f"{trained}: a sparse student; its query side is built from IDF, so mix it while it "
                          "trains (start_weight in its config), not afterwards")
    record = _read_record(trained)
    config, summary = record.get("config") or {}, record.get("summary") or {}
    earlier = record.get("interpolation") or (config.get("start_weight") if isinstance(config, dict) else None) \
        or (summary.get("start_weight") if isinstance(summary, dict) else None)
    if earlier:
        raise ConfigError(f"{record_file}: this student is already a mix with its start ({earlier}); mix the "
                          "trained student it came from")
    if out.resolve() == trained.resolve() or (Path(str(start)).is_dir() and out.resolve() == Path(start).resolve()):
        raise ConfigError(f"{out}: is the {'student' if out.resolve() == trained.resolve() else 'start'} "
                          "itself; choose another output folder")
    weights = trained / "model.safetensors"
    stamp = {"start": start_reference(start), "start_weight": start_weight,
             "trained_sha256": sha256_file(weights) if weights.is_file() else None}
    if folder_kind(out) == "dense-student":
        done = _read_record(out).get("interpolation") or {}
        if stamp["trained_sha256"] and all(done.get(k) == v for k, v in stamp.items()):
            logger.info("%s: already %s mixed with %g of %s; kept", out, trained, start_weight, start)
            return out
    check_output_folder(out, "dense-student", overwrite)
    resolve_model(start, "starting model")
    model = SentenceTransformer(str(trained), device="cpu")
    base = SentenceTransformer(str(start), device="cpu")
    try:
        mixed = interpolate_state(base.state_dict(), model.state_dict(), start_weight)
    except ConfigError as exc:
        raise ConfigError(f"{trained} and its start {start}: {exc}") from None
    model.load_state_dict(mixed)
    record["interpolation"] = {**stamp, "trained": str(trained.resolve())}
    if isinstance(record.get("summary"), dict):
        record["summary"]["start_weight"] = start_weight
    with atomic_folder(out, "dense-student", overwrite=overwrite) as tmp:
        model.save(str(tmp))
        (tmp / "rkd_training.json").write_text(json.dumps(record, indent=1, default=str))
    logger.info("saved %s (%s mixed with %g of %s)", out, trained, start_weight, start)
    return out
