"""Per-epoch checkpoints of Distill-VQ training, so a killed run resumes where it stopped (bit-equal, given the
same inputs and thread count) instead of starting over.

A checkpoint is a folder ``epoch-<n>`` inside the checkpoint folder (``<output>-checkpoints`` for ``rkd vq train``):

* ``state.safetensors``: the module's parameters, Adam's moments, the hard assignments (lists, codes), the best
  epoch's parameters of the held-out selection, and torch's RNG state;
* ``state.json``: the epochs done, the history, the best epoch and its held-out recall, numpy's generator state,
  the sha256 of ``state.safetensors``, and the run key.

It is written aside (``.epoch.<pid>.<random>.tmp``) and renamed into place, so a ``kill -9`` leaves it whole or
absent; leftovers of killed writers are swept at the next save. Only the newest checkpoint is kept, and it is
still there when training returns (the caller has not saved its result yet): ``rkd vq train`` deletes the folder
once its index folder is in place (``--keep-checkpoints`` keeps it; a rerun then only re-exports). The run key
is everything the training depends on: the config, the sha256 of the document and of the query embeddings, of
the initial module when the caller gives one, and whatever the caller adds (the teacher of a ``teacher_fn``). A
checkpoint with another key, or one that does not read back (a damaged file), is skipped with a log line and never
reused.

Pickle-free: tensors in safetensors, everything else in JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["TrainingState", "run_key", "save_checkpoint", "load_checkpoint", "array_sha256"]

FORMAT = 1
_NAME = re.compile(r"^epoch-(\d+)$")
_TENSORS, _STATE = "state.safetensors", "state.json"


def array_sha256(a: np.ndarray | torch.Tensor) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def run_key(config: dict, docs: np.ndarray, queries: np.ndarray, module: torch.nn.Module | None = None,
            extra: dict | None = None) -> dict:
    """What a run depends on; a checkpoint resumes only a run of an equal key."""
    key = {"format": FORMAT, "config": config, "docs": array_sha256(docs), "queries": array_sha256(queries)}
    if module is not None:
        key["module"] = hashlib.sha256("".join(f"{k}:{array_sha256(v)}" for k, v in
                                               sorted(module.state_dict().items())).encode()).hexdigest()
    if extra:
        key["extra"] = extra
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # canonical: compares equal to its JSON


@dataclass
class TrainingState:
    """Everything the epoch loop carries from one epoch to the next."""

    epoch: int
    module: dict[str, torch.Tensor]
    optimizer: dict[int, dict]
    lists: torch.Tensor
    codes: torch.Tensor
    history: list[dict] = field(default_factory=list)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    numpy_rng: dict | None = None
    torch_rng: torch.Tensor | None = None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pack(state: TrainingState, code_dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"module.{k}": v.detach().clone().contiguous() for k, v in state.module.items()}
    scalars: dict[str, dict] = {}
    for idx, values in state.optimizer.items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["lists"] = state.lists.to(torch.int32).contiguous()
    tensors["codes"] = state.codes.to(code_dtype).contiguous()
    if state.best is not None:
        tensors.update({f"best.{k}": v.detach().clone().contiguous() for k, v in state.best[2].items()})
    if state.torch_rng is not None:
        tensors["torch_rng"] = state.torch_rng.clone()
    json_state = {"epoch": state.epoch, "history": state.history, "optimizer_scalars": scalars,
                  "best": None if state.best is None else {"recall": state.best[0], "epoch": state.best[1]},
                  "numpy_rng": state.numpy_rng}
    return tensors, json_state


def _unpack(tensors: dict[str, torch.Tensor], saved: dict) -> TrainingState:
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer: dict[int, dict] = {}
    for name, value in part("optimizer.").items():
        idx, _, key = name.partition(".")
        optimizer.setdefault(int(idx), {})[key] = value
    for idx, values in saved.get("optimizer_scalars", {}).items():
        optimizer.setdefault(int(idx), {}).update(values)
    best = saved.get("best")
    return TrainingState(
        epoch=int(saved["epoch"]), module=part("module."), optimizer=optimizer,
        lists=tensors["lists"].long(), codes=tensors["codes"].long(), history=saved["history"],
        best=None if best is None else (float(best["recall"]), int(best["epoch"]), part("best.")),
        numpy_rng=saved.get("numpy_rng"), torch_rng=tensors.get("torch_rng"))


def save_checkpoint(folder: str | os.PathLike, key: dict, state: TrainingState,
                    code_dtype: torch.dtype = torch.uint8) -> Path:
    """Write ``epoch-<state.epoch>`` into ``folder`` atomically; then delete every other checkpoint there.

    ``code_dtype`` stores the PQ codes compactly (``uint8`` up to 8 bits per code); they read back as ``long``.
    """
    from safetensors.torch import save_file

    from retrieval_kd.utils.fs import sha256_file, sweep_stale_temps, temp_name

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(folder / "epoch")
    dest = folder / f"epoch-{state.epoch}"
    tmp = temp_name(folder / "epoch")
    tmp.mkdir()
    try:
        tensors, json_state = _pack(state, code_dtype)
        save_file(tensors, str(tmp / _TENSORS))
        _fsync(tmp / _TENSORS)
        json_state.update(tensors_sha256=sha256_file(tmp / _TENSORS), key=key)
        (tmp / _STATE).write_text(json.dumps(json_state, indent=1), encoding="utf-8")
        _fsync(tmp / _STATE)
        if dest.exists():  # a checkpoint of another run (its key differed) or one that did not read back
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for other in folder.iterdir():
        if other != dest and _NAME.match(other.name) and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    logger.info("distill-vq: checkpoint %s", dest)
    return dest


def load_checkpoint(folder: str | os.PathLike, key: dict) -> TrainingState | None:
    """The newest checkpoint in ``folder`` of the run ``key`` (``None`` if there is none)."""
    from safetensors.torch import load_file

    from retrieval_kd.utils.fs import sha256_file

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()),
                   reverse=True)
    for _, path in found:
        try:
            saved = json.loads((path / _STATE).read_text(encoding="utf-8"))
            if saved.get("key") != key:
                logger.warning("%s: written by another run (different config or embeddings); not resuming from it",
                               path)
                continue
            if sha256_file(path / _TENSORS) != saved.get("tensors_sha256"):
                raise ValueError(f"{_TENSORS} does not match its recorded sha256")
            state = _unpack(load_file(str(path / _TENSORS)), saved)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: unreadable checkpoint (%s); skipping it", path, exc)
            continue
        logger.info("distill-vq: resuming from %s (%d epochs done)", path, state.epoch)
        return state
    return None
