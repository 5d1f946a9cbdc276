#!/usr/bin/env python3
"""Does retrieval-kd run from what pyproject.toml declares, and nothing else? (issue: undeclared dependencies)

``python .ci/deps_check.py`` builds a fresh virtual environment with the pinned CPU torch and ``pip install .``
alone (no dev extra, no model pack), then runs ``--inside`` there: every module of the package imports, and the
students' trainer arguments come up (transformers' Trainer needs accelerate without our code importing it).
Exit code 0 when all of it works; the failing import is named otherwise. ``make check-deps`` runs it; CI too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def inside() -> int:
    import retrieval_kd

    failures = []
    for mod in pkgutil.walk_packages(retrieval_kd.__path__, "retrieval_kd."):
        try:
            importlib.import_module(mod.name)
        except ImportError as exc:
            failures.append(f"{mod.name}: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
            from sentence_transformers.sparse_encoder.training_args import SparseEncoderTrainingArguments

            for cls in (SentenceTransformerTrainingArguments, SparseEncoderTrainingArguments):
                _ = cls(output_dir=tmp, use_cpu=True).device  # the Trainer's accelerate check runs here
        except ImportError as exc:
            failures.append(f"students' trainer arguments: {exc}")
    out = subprocess.run([sys.executable, "-m", "retrieval_kd.cli.main", "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        failures.append(f"rkd --help: {out.stderr.strip()[-500:]}")
    for line in failures:
        print(f"deps-check: {line}", file=sys.stderr)
    print(f"deps-check: {'FAILED' if failures else 'ok'}: every module imports from the declared dependencies"
          if not failures else "deps-check: FAILED")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inside", action="store_true", help="run the checks in the current environment")
    parser.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC", "torch==2.13.0"))
    args = parser.parse_args()
    if args.inside:
        return inside()
    with tempfile.TemporaryDirectory(prefix="rkd-deps-") as tmp:
        venv = Path(tmp) / "venv"
        py = venv / "bin" / "python"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *os.environ.get("PIP_TORCH_ARGS", "").split(), args.torch_spec], check=True)
        subprocess.run([*pip, str(ROOT)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run([str(py), str(Path(__file__).resolve()), "--inside"], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
