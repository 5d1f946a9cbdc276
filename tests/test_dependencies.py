"""Every package the library imports is a declared dependency (core, or an extra), so `make install` alone runs it.

The static check below reads every ``import`` of ``retrieval_kd/`` and maps it to its distribution. What a
dependency needs at run time without importing it by name here (transformers' Trainer needs accelerate) is checked
by ``.ci/deps_check.py`` in a virtual environment built from pyproject.toml alone (``make check-deps``, run by CI).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata

from .conftest import ROOT

# imported under another name than their distribution's, where packages_distributions() cannot tell
_ALIASES = {"faiss": "faiss-cpu", "Stemmer": "PyStemmer", "yaml": "pyyaml"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_normalise(re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0]) for s in specs}


def imported_modules() -> dict[str, str]:
    """``{top-level module: first file importing it}`` of every absolute import in the package."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "retrieval_kd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def undeclared(modules: dict[str, str]) -> list[str]:
    """The third-party modules of ``modules`` whose distribution pyproject.toml does not declare."""
    dists = metadata.packages_distributions()
    allowed = declared() | {"retrieval-kd"}
    missing = []
    for module, where in modules.items():
        if module in sys.stdlib_module_names or module in ("retrieval_kd", "__future__"):
            continue
        names = {_normalise(d) for d in dists.get(module, [])}
        if module in _ALIASES:
            names.add(_normalise(_ALIASES[module]))
        if not names & allowed:
            missing.append(f"{module} (imported by {where}; distribution {sorted(names) or 'unknown'})")
    return missing


def test_every_imported_package_is_declared():
    missing = undeclared(imported_modules())
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_the_check_reports_what_is_not_declared():
    # pytest is only a dev extra's; a made-up module is declared nowhere; numpy and json (stdlib) are fine
    assert undeclared({"numpy": "a.py", "json": "b.py", "pytest": "c.py"}) == []
    assert undeclared({"surely_not_a_dependency": "d.py"}) == [
        "surely_not_a_dependency (imported by d.py; distribution unknown)"]
    assert "accelerate" in declared()  # needed by transformers' Trainer without being imported here
