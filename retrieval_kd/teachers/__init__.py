"""Teachers score query-passage pairs; scores land in a persistent, resumable store.

Each teacher has one interface (:meth:`Teacher.score`) and a fingerprint that keys the store. Heavy models
load lazily on first use.
"""

from __future__ import annotations

from retrieval_kd.teachers.base import Teacher
from retrieval_kd.teachers.bi_encoder import BiEncoderTeacher
from retrieval_kd.teachers.bm25 import BM25Teacher
from retrieval_kd.teachers.candidates import mine_candidates
from retrieval_kd.teachers.cross_encoder import CrossEncoderTeacher
from retrieval_kd.teachers.ensemble import EnsembleTeacher, combine_runs, fit_weights, normalize_scores
from retrieval_kd.teachers.ict_weights import fit_weights_ict
from retrieval_kd.teachers.llm_reranker import LLMRerankerTeacher
from retrieval_kd.teachers.runner import score_candidates
from retrieval_kd.teachers.spec import parse_teacher
from retrieval_kd.teachers.splade import SpladeTeacher
from retrieval_kd.teachers.store import ScoreStore

__all__ = [
    "BM25Teacher",
    "BiEncoderTeacher",
    "CrossEncoderTeacher",
    "EnsembleTeacher",
    "LLMRerankerTeacher",
    "ScoreStore",
    "SpladeTeacher",
    "Teacher",
    "combine_runs",
    "fit_weights",
    "fit_weights_ict",
    "mine_candidates",
    "normalize_scores",
    "parse_teacher",
    "score_candidates",
]
