"""Which runtime encodes with a model: the ``encoding`` setting, the CPU's instruction sets, and ``auto``.

* ``torch``: sentence-transformers in fp32, as before; cache keys are those of earlier releases.
* ``torch-bf16``: the same modules under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (AMX / AVX-512 BF16
  matrix units); SPLADE pooling fused (max over positions first, then log(1 + ReLU)).
* ``torch-bf16-compile``: the same, ``torch.compile``-d (dynamic shapes, fused elementwise kernels): about a third
  faster than ``torch-bf16`` on a corpus, after a compilation of tens of seconds (needs a C++ compiler); for a
  few hundred queries it does not pay.
* ``onnx``: an exported ONNX graph in onnxruntime, fp32, graph optimisations that keep exact GELU.
* ``onnx-int8``: the same graph with dynamic int8 quantisation of the weight matrices (VNNI / AMX-INT8).
* ``openvino``: the fp32 ONNX graph compiled by OpenVINO (which computes in bf16 where the CPU has AMX or AVX-512 BF16).
* ``auto``: where the CPU has AMX or AVX-512 BF16, ``openvino`` when it is installed (the fastest measured for
  dense and SPLADE encoders alike: ``benchmarks/results/encoding.json``), else ``torch-bf16``; without bf16
  instructions ``onnx`` for SPLADE (the fused graph, exact) and ``torch`` for dense encoders; logged with the
  reason.

Vectors are cached per :class:`Encoding`: its backend and the instruction-set target they were computed for
(:meth:`Encoding.cache_fields`), so caches never mix int8, bf16 and fp32 vectors, and the ``torch`` backend adds
nothing to a key. A backend whose package is missing raises :class:`~retrieval_kd.errors.UnavailableError`
naming the package and the fallback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from retrieval_kd.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)

__all__ = ["ENCODINGS", "ENCODING_CHOICES", "Encoding", "cpu_flags", "isa_target", "require", "resolve_encoding",
           "encoding_of"]

ENCODINGS = ("torch", "torch-bf16", "torch-bf16-compile", "onnx", "onnx-int8", "openvino")
TORCH_BF16 = ("torch-bf16", "torch-bf16-compile")
ENCODING_CHOICES = ("auto", *ENCODINGS)
#: the Python module each backend needs, and the pip package that provides it
_NEEDS = {"onnx": [("onnxruntime", "onnxruntime")], "onnx-int8": [("onnxruntime", "onnxruntime")],
          "openvino": [("openvino", "openvino")]}
_EXPORT_NEEDS = [("onnx", "onnx"), ("onnxscript", "onnxscript")]


@dataclass(frozen=True)
class Encoding:
    """A resolved ``encoding`` setting.

    Args:
        backend: one of :data:`ENCODINGS`.
        isa: the instruction-set target its vectors were computed for (``amx-bf16``, ``avx512-vnni``, ...).
        reason: why ``auto`` chose it (empty when it was asked for by name).
    """

    backend: str
    isa: str = ""
    reason: str = ""

    def cache_fields(self) -> dict:
        """What this encoding adds to a cache key: nothing for ``torch`` (today's keys stay valid)."""
        return {} if self.backend == "torch" else {"encoding": self.backend, "isa": self.isa}

    def describe(self) -> dict:
        return {"backend": self.backend, "isa": self.isa, **({"reason": self.reason} if self.reason else {})}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where they cannot be read (then nothing is assumed)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _first(flags: frozenset[str], pairs: list[tuple[str, str]], default: str) -> str:
    return next((name for flag, name in pairs if flag in flags), default)


def isa_target(backend: str, flags: frozenset[str] | None = None) -> str:
    """The instruction set a backend's arithmetic runs on here (part of cache keys: results differ across them)."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine().lower() or "unknown"
    if backend == "torch":
        return ""
    if backend in TORCH_BF16:
        return _first(flags, [("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512-bf16")], "bf16-emulated")
    if backend == "onnx":
        return _first(flags, [("avx512f", "avx512"), ("avx2", "avx2")], machine)
    if backend == "onnx-int8":
        return _first(flags, [("amx_int8", "amx-int8"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                              ("avx2", "avx2")], machine)
    if backend == "openvino":
        return f"{_openvino_precision()}-{_first(flags, [('amx_bf16', 'amx'), ('avx512f', 'avx512'), ('avx2', 'avx2')], machine)}"
    raise ConfigError(f"unknown encoding {backend!r}; choose one of {', '.join(ENCODING_CHOICES)}")


@functools.lru_cache(maxsize=1)
def _openvino_precision() -> str:
    """The precision OpenVINO's CPU plugin computes in by default here (bf16 on AMX machines, else f32)."""
    ov = require("openvino", "openvino")
    value = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def require(module: str, backend: str, package: str | None = None):
    """Import ``module`` for ``backend`` or raise :class:`UnavailableError` saying what to install and the fallback."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnavailableError(
            f"encoding {backend!r} needs the Python package {package or module!r}, which cannot be imported here "
            f"({exc}); install it (pip install {package or module}) or use encoding 'torch' (the default, "
            "sentence-transformers in fp32)") from None


def _check_installed(backend: str, export: bool) -> None:
    if backend == "torch-bf16-compile" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise UnavailableError("encoding 'torch-bf16-compile' needs a C++ compiler for torch.compile (none of c++, "
                               "g++, clang++ is on PATH); install one (apt-get install g++) or use encoding "
                               "'torch-bf16'")
    for module, package in _NEEDS.get(backend, []) + (_EXPORT_NEEDS if export else []):
        require(module, backend, package)


def _exported_meta(model: str) -> dict | None:
    from retrieval_kd.encoders.export import read_export_meta

    return read_export_meta(model) if Path(model).is_dir() else None


def resolve_encoding(encoding: str | Encoding | None = "torch", kind: str = "dense", model: str | None = None,
                     check: bool = True) -> Encoding:
    """The :class:`Encoding` to use for ``kind`` (``dense`` or ``sparse``) encoding with ``model``.

    ``auto`` picks by the CPU's instruction sets and logs which and why. A folder written by ``rkd export-model``
    runs its own graph: ``torch`` and ``auto`` mean its backend there. ``check`` imports the backend's packages
    (``UnavailableError`` naming the fallback when one is missing).
    """
    if isinstance(encoding, Encoding):
        return encoding
    encoding = (encoding or "torch").lower()
    if encoding not in ENCODING_CHOICES:
        raise ConfigError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODING_CHOICES)}")
    meta = _exported_meta(model) if model else None
    if meta is not None:  # the graph decides fp32 or int8; only the runtime can be chosen (onnxruntime, OpenVINO)
        if encoding in TORCH_BF16:
            raise ConfigError(f"{model}: an exported {meta['backend']} graph cannot run with encoding {encoding!r}; "
                              "give the original model folder, or encoding 'onnx' / 'openvino'")
        if encoding == "openvino":
            backend = "openvino"
        elif encoding in ("onnx", "onnx-int8"):
            backend = "onnx-int8" if meta.get("graph") == "onnx-int8" else "onnx"
        else:
            backend = meta["backend"]
        if check:
            _check_installed(backend, export=False)
        return Encoding(backend, isa_target(backend), f"the graph exported to {model}")
    if encoding == "auto":
        chosen = _auto(kind)
        logger.info("encoding=auto for %s (%s): %s, because %s", model or "the model", kind, chosen.backend,
                    chosen.reason)
        return chosen
    if check and encoding != "torch":
        _check_installed(encoding, export=encoding not in TORCH_BF16)
    if encoding in TORCH_BF16 and isa_target(encoding) == "bf16-emulated":
        logger.warning("encoding %s: this CPU has no bf16 instructions (AMX or AVX-512 BF16); bf16 is emulated "
                       "and slower than fp32", encoding)
    return Encoding(encoding, isa_target(encoding))


def openvino_installed() -> bool:
    """Whether the ``openvino`` package (the ``openvino`` extra; ``make install`` installs it) can be imported."""
    return importlib.util.find_spec("openvino") is not None


def _auto(kind: str, flags: frozenset[str] | None = None) -> Encoding:
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        unit = "AMX" if "amx_bf16" in flags else "AVX-512 BF16"
        if openvino_installed():
            return Encoding("openvino", isa_target("openvino", flags),
                            f"the CPU has {unit} and OpenVINO is installed (its bf16 run of the exported graph: "
                            "the fastest backend measured for dense and SPLADE encoders, benchmarks/results/encoding*.json)")
        return Encoding("torch-bf16", isa_target("torch-bf16", flags),
                        f"the CPU has {unit} (bf16 matrix arithmetic, 2.4-3.6x fp32 for BERT-sized encoders); "
                        "OpenVINO, faster still, is not installed (pip install 'retrieval-kd[openvino]')")
    if kind == "sparse":
        try:
            _check_installed("onnx", export=True)
            return Encoding("onnx", isa_target("onnx", flags),
                            "no bf16 instructions on this CPU; the ONNX graph fuses SPLADE pooling (fp32, exact)")
        except UnavailableError as exc:
            return Encoding("torch", "", f"no bf16 instructions on this CPU and no onnxruntime ({exc})")
    return Encoding("torch", "", "no bf16 instructions (AMX or AVX-512 BF16) on this CPU")


def encoding_of(encoder, encoding: str | Encoding | None, kind: str, model: str) -> Encoding:
    """The encoding vectors from ``encoder`` (already loaded, or None) are computed in, for cache keys.

    An encoder built by :mod:`retrieval_kd.encoders.runtime` carries its own; any other encoder is a torch
    sentence-transformers model, which a non-torch ``encoding`` contradicts.
    """
    from retrieval_kd.encoders.runtime import GraphEncoder

    carried = encoder.rkd_encoding if isinstance(encoder, GraphEncoder) else None  # nothing else is asked of it
    if carried is not None:
        asked = encoding.backend if isinstance(encoding, Encoding) else (encoding or "torch")
        if asked not in ("torch", "auto", carried.backend):
            raise ValueError(f"the encoder given runs {carried.backend!r}, not the encoding {asked!r} asked for")
        return carried
    if encoder is not None:
        asked = encoding.backend if isinstance(encoding, Encoding) else (encoding or "torch")
        if asked not in ("torch", "auto"):
            raise ValueError(f"the encoder given is a torch model; load it with encoding {asked!r} "
                             "(load_encoder / load_sparse_encoder) or leave encoding at 'torch'")
        return Encoding("torch")
    return resolve_encoding(encoding, kind, model)
