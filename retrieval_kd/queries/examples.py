"""The few-shot part of a query-generation prompt: a task instruction and up to 8 (document, query) examples.

Promptagator (Dai et al. 2022) prompts an LLM with a handful (<= 8) of the target task's own (document, query)
pairs, so the generated queries take that task's intent and form (a claim, a question, a title-like phrase). A user
gives them as JSON lines ``{"document": ..., "query": ...}``; without a file a generic instruction and two generic
examples are used.

References:
    Dai, Z., et al. (2022). Promptagator: Few-shot Dense Retrieval From 8 Examples. ICLR 2023.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from retrieval_kd.data.formats import DataFormatError, iter_jsonl

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_PROMPT", "MAX_EXAMPLES", "Example", "prompt_sha256", "read_examples"]

MAX_EXAMPLES = 8

DEFAULT_PROMPT = ("Write one search query that the document answers: a short question or the keywords a person "
                  "would type to find it. Reply with the query only.")


@dataclass(frozen=True)
class Example:
    document: str
    query: str


DEFAULT_EXAMPLES = (
    Example("The Great Barrier Reef, off the coast of Queensland, Australia, is the world's largest coral reef "
            "system, made of over 2,900 individual reefs.", "largest coral reef system in the world"),
    Example("A meta-analysis of 20 cohort studies found that vitamin D deficiency is associated with a higher risk "
            "of hip fractures in adults over 65.", "does vitamin d deficiency increase fracture risk in older adults"),
)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Examples from a JSON-lines file ``{"document", "query"}`` (non-empty strings), at most :data:`MAX_EXAMPLES`.

    Raises:
        DataFormatError: a malformed line, a missing or empty field (naming file and line), no examples, or more
            than :data:`MAX_EXAMPLES`.
    """
    path = Path(path)
    examples = []
    for lineno, obj in iter_jsonl(path):
        bad = [k for k in ("document", "query") if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            raise DataFormatError(f"{path}:{lineno}: an example needs non-empty string fields 'document' and "
                                  f"'query'; {' and '.join(repr(k) for k in bad)} missing, empty or not a string "
                                  f"(keys: {sorted(obj)[:10]})")
        examples.append(Example(obj["document"].strip(), " ".join(obj["query"].split())))
    if not examples:
        raise DataFormatError(f"{path}: holds no examples; give 1 to {MAX_EXAMPLES} lines "
                              '{"document": ..., "query": ...}, or leave the file out for the generic default')
    if len(examples) > MAX_EXAMPLES:
        raise DataFormatError(f"{path}: holds {len(examples)} examples; a few-shot prompt takes at most "
                              f"{MAX_EXAMPLES} (Promptagator); keep the {MAX_EXAMPLES} most typical")
    return examples


def prompt_sha256(prompt: str, examples) -> str:
    """The hash of an instruction and its examples, recorded in the queries' provenance."""
    payload = {"prompt": prompt, "examples": [[e.document, e.query] for e in examples]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
