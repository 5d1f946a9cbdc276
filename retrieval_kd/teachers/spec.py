"""Teacher specs on the command line: ``KIND[:MODEL][,key=value...]``.

Examples::

    bm25
    bm25,k1=1.2,b=0.75
    bi-encoder:sentence-transformers/all-MiniLM-L6-v2
    cross-encoder:cross-encoder/ms-marco-MiniLM-L6-v2,max_length=256
    splade:rkd-local/splade-tiny
    llm-first:HuggingFaceTB/SmolLM2-135M-Instruct,window=20,stride=10
    llm-qlm:HuggingFaceTB/SmolLM2-135M-Instruct
    llm-yesno:HuggingFaceTB/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing

from retrieval_kd.errors import ConfigError
from retrieval_kd.teachers.base import Teacher

__all__ = ["parse_teacher", "TEACHER_KINDS"]

TEACHER_KINDS = ("bm25", "bi-encoder", "cross-encoder", "splade", "llm-first", "llm-qlm", "llm-yesno")

_CLASSES = {
    "bm25": ("retrieval_kd.teachers.bm25", "BM25Teacher"),
    "bi-encoder": ("retrieval_kd.teachers.bi_encoder", "BiEncoderTeacher"),
    "cross-encoder": ("retrieval_kd.teachers.cross_encoder", "CrossEncoderTeacher"),
    "splade": ("retrieval_kd.teachers.splade", "SpladeTeacher"),
    "llm": ("retrieval_kd.teachers.llm_reranker", "LLMRerankerTeacher"),
}
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _value(raw: str):
    """An option of a teacher whose constructor does not annotate it: int, float, bool or the text."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def _coerce(raw: str, hint, spec: str, key: str):
    """``raw`` as the type the constructor annotates ``key`` with (``int``, ``float``, ``bool``, ``str``, optional)."""
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return _value(raw)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    choices = [a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None)]
    if len(choices) < (len(typing.get_args(hint)) if union else 1) and raw.lower() in ("none", "null"):
        return None
    for kind in choices:
        if kind is bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
        elif kind is int:
            try:
                value = int(raw)
            except ValueError:
                continue
            if value < 1:  # every integer option of a teacher is a size (lengths, batch, window, stride)
                raise ConfigError(f"teacher spec {spec!r}: option {key}={raw!r} must be an integer >= 1")
            return value
        elif kind is float:
            try:
                return int(raw)  # "1" stays 1, as it always was (teacher fingerprints hold the value)
            except ValueError:
                pass
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
        elif kind is str:
            return raw
    names = " or ".join({bool: "true/false", int: "an integer", float: "a number"}.get(k, getattr(k, "__name__", str(k)))
                        for k in choices)
    raise ConfigError(f"teacher spec {spec!r}: option {key}={raw!r} must be {names}")


def parse_teacher(spec: str) -> Teacher:
    """Build a teacher from a spec string; no model is loaded.

    Errors (:class:`~retrieval_kd.errors.ConfigError`) name the spec and what to change: an unknown kind (with the
    accepted kinds), an option the teacher does not take (with the options it takes), a value of the wrong type
    (options are read as their constructor annotates them) or out of range.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"teacher spec {spec!r}: empty; use one of {', '.join(TEACHER_KINDS)}")
    head, *opts = spec.split(",")
    kind, colon, model = head.strip().partition(":")
    if kind not in TEACHER_KINDS:
        raise ConfigError(f"teacher spec {spec!r}: unknown kind {kind!r}; use one of {', '.join(TEACHER_KINDS)}")
    module, name = _CLASSES["llm" if kind.startswith("llm-") else kind]
    cls = getattr(importlib.import_module(module), name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "mode")]
    hints = typing.get_type_hints(cls.__init__)
    options = [p for p in params if p != "model"]
    kwargs = {}
    for opt in opts:
        key, sep, raw = opt.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"teacher spec {spec!r}: option {opt!r} is not key=value")
        if key not in options:
            accepted = f"its options: {', '.join(options)}" if options else "it takes no options"
            hint = "; the model goes after ':' (KIND:MODEL)" if key == "model" and "model" in params else ""
            raise ConfigError(f"teacher spec {spec!r}: {kind} has no option {key!r} ({accepted}){hint}")
        if key in kwargs:
            raise ConfigError(f"teacher spec {spec!r}: option {key!r} is given twice")
        kwargs[key] = _coerce(raw.strip(), hints.get(key, inspect.Parameter.empty), spec, key)
    if colon:
        if "model" not in params:
            raise ConfigError(f"teacher spec {spec!r}: {kind} takes no model (write {kind!r} alone)")
        if not model.strip():
            raise ConfigError(f"teacher spec {spec!r}: no model after ':' (write {kind}:ORG/NAME or {kind}:FOLDER)")
        kwargs["model"] = model.strip()
    try:
        return cls(mode=kind[4:], **kwargs) if kind.startswith("llm-") else cls(**kwargs)
    except ValueError as exc:  # the constructor's own checks (ranges, combinations)
        raise ConfigError(f"teacher spec {spec!r}: {exc}") from None
