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

sentence-transformers has no such function (it saves and loads whole models); a state-dict loop is all it takes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from retrieval_kd.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["apply_start_weight", "check_start_weight", "interpolate_state", "interpolate_student", "snapshot"]


def check_start_weight(value: Any, where: str = "start_weight") -> float:
    """``value`` as a float in [0, 1]; else a :class:`ConfigError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise ConfigError(f"{where} must be a number in [0, 1] (0: the trained model as it is, 1: the starting "
                          f"model), got {value!r}")
    return float(value)


def snapshot(model) -> dict:
    """A detached copy of ``model``'s state dict (the start, taken before training changes it in place)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
        mixed = start_weight * s.detach().to(torch.float32, copy=True) \
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


def interpolate_student(start: str, trained: str | Path, start_weight: float, output_dir: str | Path,
                        overwrite: bool = False) -> Path:
    """Write a SentenceTransformer folder mixing the dense student ``trained`` with the model ``start`` it was
    trained from (hub id or folder), ``start_weight`` of the start. The folder is written atomically, as a dense
    student, with its ``rkd_training.json`` carrying the interpolation. Returns ``output_dir``."""
    import json

    from sentence_transformers import SentenceTransformer

    from retrieval_kd.models.resolve import resolve_model
    from retrieval_kd.utils.fs import atomic_folder, check_output_folder

    start_weight = check_start_weight(start_weight)
    if not (Path(trained) / "modules.json").is_file():
        raise ConfigError(f"{trained}: not a SentenceTransformer folder (no modules.json); give a dense student "
                          "folder that `rkd train dense` wrote")
    out = Path(output_dir)
    check_output_folder(out, "dense-student", overwrite)
    resolve_model(start, "starting model")
    model = SentenceTransformer(str(trained), device="cpu")
    base = SentenceTransformer(str(start), device="cpu")
    model.load_state_dict(interpolate_state(base.state_dict(), model.state_dict(), start_weight))
    record_file = Path(trained) / "rkd_training.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    record["interpolation"] = {"start": str(start), "trained": str(trained), "start_weight": start_weight}
    with atomic_folder(out, "dense-student", overwrite=overwrite) as tmp:
        model.save(str(tmp))
        (tmp / "rkd_training.json").write_text(json.dumps(record, indent=1, default=str))
    logger.info("saved %s (%s mixed with %g of %s)", out, trained, start_weight, start)
    return out
