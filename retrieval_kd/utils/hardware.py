"""What a benchmark ran on: CPU, cores, threads, library versions (recorded next to every number)."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["hardware_info"]


def _cpuinfo(*fields: str) -> dict[str, str]:
    """The first CPU's ``fields`` in /proc/cpuinfo (empty where there is none)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in fields and key.strip() not in found:
                    found[key.strip()] = value.strip()
                if len(found) == len(fields):
                    break
    except OSError:
        pass
    return found


def _cpu_model() -> str:
    return _cpuinfo("model name").get("model name") or platform.processor() or "unknown"


def _cpu_generation() -> str | None:
    """``family F model M`` (a virtual machine's model name may say only "AMD EPYC": Zen 4 and Zen 5 differ in
    bf16 speed by half)."""
    info = _cpuinfo("cpu family", "model")
    return f"family {info['cpu family']} model {info['model']}" if len(info) == 2 else None


def hardware_info(packages: tuple[str, ...] = ("retrieval-kd", "torch", "sentence-transformers", "faiss-cpu",
                                                "bm25s", "ranx", "numpy")) -> dict:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info = {
        "cpu": _cpu_model(),
        "cpu_generation": _cpu_generation(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info
