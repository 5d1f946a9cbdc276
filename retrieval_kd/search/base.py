"""What every retriever answers with: ranked :class:`Hit` lists, from one ``search_run`` each retriever implements.

:class:`SearcherBase` holds what :class:`~retrieval_kd.search.Retriever` and
:class:`~retrieval_kd.search.HybridRetriever` share: checking the queries and ``k``, turning a run
``{qid: {doc_id: score}}`` into ``Hit`` lists, best first, and attaching titles and texts from the corpus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["Hit", "SearcherBase", "check_k", "ranked"]

Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its id and score, and (``with_text=True``) its title and text from the corpus."""

    doc_id: str
    score: float
    title: str | None = None
    text: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_k(k, name: str = "k") -> int:
    """``k`` as an int >= 1, else :class:`~retrieval_kd.errors.ConfigError` naming it."""
    from retrieval_kd.errors import ConfigError

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name}={k!r}: must be an integer >= 1 (the number of documents to return)")
    return int(k)


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` best first; equal scores keep the order the engine gave them."""
    return sorted(docs.items(), key=lambda kv: -kv[1])


def _check_queries(queries) -> list[str]:
    from retrieval_kd.errors import ConfigError

    if isinstance(queries, (bytes, Mapping)) or not isinstance(queries, (str, Sequence)):
        raise ConfigError(f"queries must be a string or a list of strings, got {type(queries).__name__}")
    texts = [queries] if isinstance(queries, str) else list(queries)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"query {i}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise ConfigError(f"query {i}: empty text; give the words to search for")
    return texts


class SearcherBase(ABC):
    """Search by text: :meth:`search` returns ``Hit`` lists; subclasses implement :meth:`search_run`."""

    kind: str
    name: str

    @abstractmethod
    def search_run(self, queries: Mapping[str, str], k: int = 1000) -> Run:
        """A run ``{qid: {doc_id: score}}`` of the top-``k`` documents of each ``{qid: text}`` (what ``rkd search``
        writes)."""

    @abstractmethod
    def documents(self, doc_ids: Sequence[str]) -> list[dict]:
        """``{"_id", "title", "text"}`` of each document, from the corpus the index was built on."""

    @abstractmethod
    def describe(self) -> dict:
        """What this retriever searches, as a JSON-able dict."""

    def search(self, queries: str | Sequence[str], k: int = 10, with_text: bool = False):
        """The top-``k`` :class:`Hit` of each query, best first: a list per query, or one list for one string.

        Raises :class:`~retrieval_kd.errors.ConfigError` for an empty query, a query that is no string, or
        ``k < 1``. ``with_text`` attaches each hit's title and text from the corpus.
        """
        k = check_k(k)
        texts = _check_queries(queries)
        run = self.search_run({str(i): t for i, t in enumerate(texts)}, k) if texts else {}
        hits = [[Hit(d, float(s)) for d, s in ranked(run.get(str(i), {}))[:k]] for i in range(len(texts))]
        if with_text:
            ids = list(dict.fromkeys(h.doc_id for row in hits for h in row))
            docs = dict(zip(ids, self.documents(ids)))
            hits = [[Hit(h.doc_id, h.score, docs[h.doc_id].get("title"), docs[h.doc_id].get("text")) for h in row]
                    for row in hits]
        return hits[0] if isinstance(queries, str) else hits

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.kind!r})"
