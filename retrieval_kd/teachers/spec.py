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

from retrieval_kd.teachers.base import Teacher

__all__ = ["parse_teacher", "TEACHER_KINDS"]

TEACHER_KINDS = ("bm25", "bi-encoder", "cross-encoder", "splade", "llm-first", "llm-qlm", "llm-yesno")


def _value(raw: str):
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def parse_teacher(spec: str) -> Teacher:
    """Build a teacher from a spec string; errors name the spec and the accepted kinds."""
    head, *opts = spec.split(",")
    kind, _, model = head.partition(":")
    kwargs = {}
    for opt in opts:
        key, sep, raw = opt.partition("=")
        if not sep:
            raise ValueError(f"teacher spec {spec!r}: option {opt!r} is not key=value")
        kwargs[key.strip()] = _value(raw.strip())
    if model:
        kwargs["model"] = model
    try:
        if kind == "bm25":
            from retrieval_kd.teachers.bm25 import BM25Teacher

            return BM25Teacher(**kwargs)
        if kind == "bi-encoder":
            from retrieval_kd.teachers.bi_encoder import BiEncoderTeacher

            return BiEncoderTeacher(**kwargs)
        if kind == "cross-encoder":
            from retrieval_kd.teachers.cross_encoder import CrossEncoderTeacher

            return CrossEncoderTeacher(**kwargs)
        if kind == "splade":
            from retrieval_kd.teachers.splade import SpladeTeacher

            return SpladeTeacher(**kwargs)
        if kind.startswith("llm-"):
            from retrieval_kd.teachers.llm_reranker import LLMRerankerTeacher

            return LLMRerankerTeacher(mode=kind[4:], **kwargs)
    except TypeError as exc:
        raise ValueError(f"teacher spec {spec!r}: {exc}") from None
    raise ValueError(f"teacher spec {spec!r}: unknown kind {kind!r}; use one of {', '.join(TEACHER_KINDS)}")
