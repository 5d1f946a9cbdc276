"""Query any index: Retriever and `rkd query` return what `rkd search` writes, for every index kind; hybrid fusion
against hand-computed values; queries files; reranking a run; bad input; the lazy front door."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval_kd.cli.main import main
from retrieval_kd.data import load_collection, read_run
from retrieval_kd.errors import ConfigError
from retrieval_kd.search import HybridRetriever, Retriever, fuse_runs
from retrieval_kd.search.base import SearcherBase
from tests.conftest import ROOT, write_word_collection

TOL = 1e-4
KINDS = ("bm25", "sparse", "flat", "hnsw", "ivfpq", "distill-vq")


def rkd(*argv) -> int:
    return main(["-q", *map(str, argv)])


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tiny_st_folder, tiny_mlm):
    """A 300-document collection and one index folder of every kind over it (built once for the module)."""
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("retriever")
    with pytest.MonkeyPatch.context() as mp:  # what conftest's per-test fixture sets, for this module's builds
        mp.setenv("RKD_CACHE_DIR", str(base / "cache"))
        mp.setenv("RKD_INDEX_DIR", str(base / "indexes"))
        data = root / "beir"
        write_word_collection(data, np.random.default_rng(0), n_docs=300, doc_words=8,
                              splits={"test": range(12), "train": range(12, 60)})
        out = {"data": data}
        for kind in ("flat", "hnsw", "ivfpq"):
            out[kind] = root / kind
            assert rkd("index", "build", "--type", kind, "--dataset", data, "--model", tiny_st_folder, "--nlist", 4,
                       "--m", 4, "--output", out[kind]) == 0
        out["distill-vq"] = root / "dvq"
        assert rkd("vq", "train", "--dataset", data, "--split", "train", "--model", tiny_st_folder, "--nlist", 4,
                   "--m", 4, "--epochs", 1, "--pseudo-queries", 0, "--output", out["distill-vq"]) == 0
        out["sparse"] = root / "sparse"
        assert rkd("index", "build", "sparse", "--model", tiny_mlm[0], "--dataset", data, "--output",
                   out["sparse"]) == 0
        out["bm25"] = root / "bm25"
        assert rkd("search", "bm25", "--dataset", data, "--split", "test", "--index", out["bm25"], "--output",
                   root / "bm25.run") == 0
        yield out


def _search_cli(kind: str, folder: Path, tmp_path: Path, *extra) -> dict:
    """The run `rkd search` writes for the index (its own dataset's test queries, top 10)."""
    verb = {"bm25": "bm25", "sparse": "sparse"}.get(kind, "dense")
    run = tmp_path / f"{kind}.run"
    assert rkd("search", verb, "--index", folder, "--split", "test", "--top-k", 10, *extra, "--output", run) == 0
    return read_run(run)


def assert_same_ranking(hits: list, expected: dict[str, float], k: int = 10) -> None:
    """Same ranked ids and scores within TOL; ids may differ only where their scores tie within TOL."""
    ranked = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    assert len(hits) == len(ranked)
    for hit, (doc_id, score) in zip(hits, ranked):
        assert abs(hit.score - score) <= TOL, (hit, doc_id, score)
        if hit.doc_id != doc_id:  # a tie: the other document has the same score in the expected run
            assert abs(expected.get(hit.doc_id, ranked[-1][1]) - score) <= TOL, (hit, doc_id, score)


@pytest.mark.parametrize("kind", KINDS)
def test_retriever_and_rkd_query_return_what_rkd_search_writes(kind, indexes, tmp_path, capsys):
    folder = indexes[kind]
    nprobe = ("--nprobe", 2) if kind in ("ivfpq", "distill-vq") else ()
    expected = _search_cli(kind, folder, tmp_path, *nprobe)
    queries = load_collection(str(indexes["data"])).queries("test")
    retriever = Retriever(folder, nprobe=2 if nprobe else None)
    assert retriever.kind == {"bm25": "bm25", "sparse": "sparse"}.get(kind, "dense")
    hits = retriever.search(list(queries.values()), k=10)
    assert len(hits) == len(queries) == len(expected)
    for qid, row in zip(queries, hits):
        assert_same_ranking(row, expected[qid])
    qid, text = next(iter(queries.items()))
    one = retriever.search(text, k=10, with_text=True)  # one string: one list
    assert_same_ranking(one, expected[qid])
    corpus = load_collection(str(indexes["data"])).corpus
    assert all(h.text == corpus[h.doc_id]["text"] for h in one)
    capsys.readouterr()
    assert rkd("query", folder, text, "-k", 10, "--json", *nprobe) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [set(h) for h in printed] == [{"doc_id", "score", "title", "text"}] * len(printed)
    assert_same_ranking([type(one[0])(h["doc_id"], h["score"]) for h in printed], expected[qid])
    assert rkd("query", folder, text, "-k", 3, *nprobe) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [int(line[0]) for line in lines] == [1, 2, 3]
    assert_same_ranking([type(one[0])(line[1], float(line[2])) for line in lines], expected[qid], k=3)
    info = retriever.describe()
    json.dumps(info)
    assert info["kind"] == retriever.kind and info["ntotal"] == 300 and info["corpus_key"] == corpus.store_path.name


def test_sidecars_name_encoder_and_corpus_and_older_ones_still_open(indexes, tiny_st_folder, tmp_path):
    meta = json.loads((indexes["flat"] / "rkd_index.json").read_text())
    assert meta["encoder"] == str(Path(tiny_st_folder).resolve())
    assert (indexes["flat"] / meta["encoder_path"]).resolve() == Path(tiny_st_folder).resolve()
    assert meta["encoder_revision"].startswith("local-") and meta["query_prompt"] is None
    assert meta["normalize"] is True and meta["similarity"] == "cosine"
    assert meta["dataset"] == str(indexes["data"].resolve()) and meta["corpus_key"]
    sparse = json.loads((indexes["sparse"] / "rkd_index.json").read_text())
    assert sparse["similarity"] == "dot" and sparse["encoder_revision"]
    bm25 = json.loads((indexes["bm25"] / "rkd_index.json").read_text())
    assert bm25["similarity"] == "bm25" and "encoder" not in bm25
    # a sidecar of an older version (no encoder, prompt, normalisation, similarity or dataset keys) still opens
    old = tmp_path / "old"
    shutil.copytree(indexes["flat"], old)
    legacy = {k: v for k, v in meta.items() if k not in ("encoder_path", "encoder_revision", "query_prompt",
                                                         "normalize", "similarity", "dataset_path")}
    (old / "rkd_index.json").write_text(json.dumps(legacy))
    text = "fish pond water"
    new_hits, old_hits = Retriever(indexes["flat"]).search(text), Retriever(old).search(text)
    assert [(h.doc_id, round(h.score, 5)) for h in new_hits] == [(h.doc_id, round(h.score, 5)) for h in old_hits]
    assert Retriever(old).describe()["similarity"] == "cosine"


def test_an_encoder_beside_the_index_is_found_after_the_folder_moves(tiny_beir, tiny_st_folder, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_st_folder, exp / "model")
    assert rkd("index", "build", "--type", "flat", "--dataset", tiny_beir, "--model", exp / "model", "--output",
               exp / "indexes" / "flat") == 0
    before = Retriever(exp / "indexes" / "flat").search("goldfish pond", k=3)
    moved = tmp_path / "moved"
    exp.rename(moved)
    retriever = Retriever(moved / "indexes" / "flat")
    assert Path(retriever.encoder).resolve() == (moved / "model").resolve()
    assert [h.doc_id for h in retriever.search("goldfish pond", k=3)] == [h.doc_id for h in before]


def test_an_index_of_bare_embeddings_needs_an_encoder(tiny_beir, tiny_st_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    corpus = load_collection(str(tiny_beir)).corpus
    emb = SentenceTransformer(str(tiny_st_folder)).encode(corpus.texts(), normalize_embeddings=True)
    np.save(tmp_path / "emb.npy", emb)
    (tmp_path / "ids.json").write_text(json.dumps(corpus.ids))
    folder = tmp_path / "bare"
    assert rkd("index", "build", "--type", "flat", "--embeddings", tmp_path / "emb.npy", "--doc-ids",
               tmp_path / "ids.json", "--output", folder) == 0
    meta = json.loads((folder / "rkd_index.json").read_text())
    assert meta["encoder"] is None and meta["corpus_key"] is None and meta["encoder_revision"] is None
    with pytest.raises(ConfigError, match="names no encoder"):
        Retriever(folder)
    assert rkd("query", folder, "goldfish") == 2
    retriever = Retriever(folder, encoder=str(tiny_st_folder))
    hits = retriever.search("goldfish pond", k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    with pytest.raises(ConfigError, match="names no dataset"):
        retriever.documents(["d1"])
    assert Retriever(folder, encoder=str(tiny_st_folder), dataset=str(tiny_beir)).documents(["d1"])[0]["_id"] == "d1"


# -------------------------------------------------------------------------------------------------------- hybrid
A = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
B = {"q": {"b": 10.0, "d": 4.0}}


def test_minmax_fusion_equals_hand_computed_values_and_missing_documents_count_as_the_minimum():
    # A normalised: a 1, b 0.5, c 0; B: b 1, d 0. a and c are missing from B (B's minimum: 0), d from A (0)
    fused = fuse_runs([A, B], weights=[0.25, 0.75], normalization="minmax")["q"]
    assert list(fused) == ["b", "a", "c", "d"]
    assert np.allclose([fused[d] for d in "bacd"], [0.25 * 0.5 + 0.75, 0.25, 0.0, 0.0])
    equal = fuse_runs([A, B])["q"]  # default weights: equal, summing to 1 (the ensemble teacher's)
    assert np.allclose([equal[d] for d in "bacd"], [0.75, 0.5, 0.0, 0.0])


def test_zscore_fusion_equals_hand_computed_values():
    # A: mean 2, std sqrt(2/3): a +sqrt(1.5), b 0, c -sqrt(1.5); B: mean 7, std 3: b +1, d -1
    z = math.sqrt(1.5)
    fused = fuse_runs([A, B], weights=[0.25, 0.75], normalization="zscore")["q"]
    expected = {"b": 0.75, "a": 0.25 * z - 0.75, "c": -0.25 * z - 0.75, "d": -0.25 * z - 0.75}
    assert list(fused) == ["b", "a", "c", "d"]  # c and d tie: by doc id
    assert all(abs(fused[d] - v) < 1e-12 for d, v in expected.items())


def test_rrf_equals_hand_computed_values():
    fused = fuse_runs([A, B], normalization="rrf", rrf_k=60)["q"]
    expected = {"b": 1 / 62 + 1 / 61, "a": 1 / 61, "d": 1 / 62, "c": 1 / 63}
    assert list(fused) == list(expected) and all(abs(fused[d] - v) < 1e-12 for d, v in expected.items())
    weighted = fuse_runs([A, B], weights=[2, 1], normalization="rrf", rrf_k=0)["q"]
    assert abs(weighted["b"] - (2 / 2 + 1 / 1)) < 1e-12 and abs(weighted["c"] - 2 / 3) < 1e-12


class _Fixed(SearcherBase):
    """A member that returns a fixed run (and records the depth it was asked for)."""

    kind = "fixed"

    def __init__(self, name: str, run: dict):
        self.name, self.run, self.asked = name, run, []

    def search_run(self, queries, k=1000):
        self.asked.append(k)
        return {q: dict(list(self.run.get(text, {}).items())[:k]) for q, text in queries.items()}

    def documents(self, doc_ids):
        return [{"_id": d, "title": "", "text": d.upper()} for d in doc_ids]

    def describe(self):
        return {"name": self.name, "corpus_key": "same"}


def test_hybrid_retriever_fuses_its_members_to_depth():
    a, b = _Fixed("a", A), _Fixed("b", {**B, "only-a": {}})
    hybrid = HybridRetriever([a, b], weights=[0.25, 0.75], depth=3)
    hits = hybrid.search("q", k=2, with_text=True)
    assert [(h.doc_id, h.text) for h in hits] == [("b", "B"), ("a", "A")]
    assert abs(hits[0].score - 0.875) < 1e-12 and a.asked == [3] and b.asked == [3]
    # depth 2: A returns a 3, b 2 (z-scores +1, -1), B returns b 10, d 4 (+1, -1); c is never seen; a is missing
    # from B's list and d from A's: each counts as that list's minimum, -1
    shallow = HybridRetriever([_Fixed("a", A), _Fixed("b", B)], weights=[0.25, 0.75], normalization="zscore",
                              depth=2).search_run({"x": "q"}, k=2)["x"]
    assert shallow == pytest.approx({"b": -0.25 + 0.75, "a": 0.25 - 0.75})
    deeper = HybridRetriever([_Fixed("a", A), _Fixed("b", B)], weights=[0.25, 0.75], normalization="zscore",
                             depth=2).search_run({"x": "q"}, k=3)["x"]  # k > depth: k documents are asked for
    assert set(deeper) == {"b", "a", "c"}
    assert HybridRetriever([_Fixed("a", A), _Fixed("b", B)], normalization="rrf").search(["q"], k=1)[0][0].doc_id == "b"
    with pytest.raises(ConfigError, match="weights"):
        HybridRetriever([a, b], weights=[1.0])
    with pytest.raises(ConfigError, match="normalization"):
        HybridRetriever([a, b], normalization="max")


def test_hybrid_of_real_indexes_and_rkd_search_hybrid(indexes, tmp_path):
    members = [Retriever(indexes["bm25"]), Retriever(indexes["flat"])]
    hybrid = HybridRetriever(members, weights=[0.4, 0.6], normalization="zscore", depth=20)
    queries = load_collection(str(indexes["data"])).queries("test")
    expected = fuse_runs([m.search_run(queries, 20) for m in members], [0.4, 0.6], "zscore")
    run = tmp_path / "hybrid.run"
    assert rkd("search", "hybrid", "--index", indexes["bm25"], "--index", indexes["flat"], "--weights", 0.4, 0.6,
               "--normalization", "zscore", "--depth", 20, "--split", "test", "--top-k", 10, "--output", run) == 0
    written = read_run(run)
    for qid, hits in zip(queries, hybrid.search(list(queries.values()), k=10)):
        assert_same_ranking(hits, expected[qid])
        assert_same_ranking(hits, written[qid])


# -------------------------------------------------------------------------------------------------- queries files
def test_search_a_queries_file_tsv_and_jsonl(indexes, tmp_path):
    queries = load_collection(str(indexes["data"])).queries("test")
    tsv = tmp_path / "q.tsv"
    tsv.write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    for verb, kind, file in (("bm25", "bm25", tsv), ("dense", "flat", jsonl), ("sparse", "sparse", tsv)):
        split_run = _search_cli(kind, indexes[kind], tmp_path)
        run = tmp_path / f"{kind}-file.run"
        assert rkd("search", verb, "--index", indexes[kind], "--queries", file, "--top-k", 10, "--output", run) == 0
        from_file = read_run(run)
        assert from_file.keys() == split_run.keys()
        for qid in split_run:
            assert from_file[qid].keys() == split_run[qid].keys()
            assert all(abs(from_file[qid][d] - s) <= TOL for d, s in split_run[qid].items())
    # the dataset may still be named: it is checked against the index
    assert rkd("search", "dense", "--index", indexes["flat"], "--dataset", indexes["data"], "--queries", tsv,
               "--output", tmp_path / "x.run") == 0
    with pytest.raises(SystemExit) as exc:  # --split or --queries, not both
        rkd("search", "dense", "--index", indexes["flat"], "--split", "test", "--queries", tsv, "--output",
            tmp_path / "y.run")
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------------------- rerank
def test_rerank_with_the_bm25_teacher_equals_scoring_the_top_depth_directly(indexes, tmp_path, monkeypatch):
    from retrieval_kd.search import top_of_run
    from retrieval_kd.teachers import BM25Teacher

    monkeypatch.setenv("RKD_INDEX_DIR", str(tmp_path / "indexes"))  # the teacher's own BM25 index: not shared
    first = tmp_path / "dense.run"
    assert rkd("search", "dense", "--index", indexes["flat"], "--split", "test", "--top-k", 20, "--output",
               first) == 0
    out = tmp_path / "reranked.run"
    assert rkd("rerank", "--run", first, "--teacher", "bm25", "--dataset", indexes["data"], "--split", "test",
               "--depth", 8, "--output", out) == 0
    reranked = read_run(out)
    collection = load_collection(str(indexes["data"]))
    queries = collection.queries("test")
    teacher = BM25Teacher()
    teacher.prepare(collection)
    top = top_of_run(read_run(first), 8)
    assert reranked.keys() == top.keys()
    for qid, docs in top.items():
        ids = list(docs)
        scores = teacher.score(queries[qid], ids, collection.corpus.texts(ids))
        expected = dict(zip(ids, map(float, scores)))
        assert reranked[qid].keys() == expected.keys()
        assert all(abs(reranked[qid][d] - s) <= TOL for d, s in expected.items())
    # a kept store, a queries file, and several teachers only as an ensemble
    tsv = tmp_path / "q.tsv"
    tsv.write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    assert rkd("rerank", "--run", first, "--teacher", "bm25", "--dataset", indexes["data"], "--queries", tsv,
               "--depth", 8, "--store", tmp_path / "store", "--output", tmp_path / "again.run") == 0
    assert read_run(tmp_path / "again.run") == reranked and (tmp_path / "store" / "scores.sqlite").exists()
    assert rkd("rerank", "--run", first, "--teacher", "bm25", "--teacher", "bm25,k1=1.2", "--dataset",
               indexes["data"], "--output", tmp_path / "two.run") == 2


# ------------------------------------------------------------------------------------------------------ bad input
def test_bad_input_gives_the_projects_errors_and_exit_code_2(indexes, tmp_path):
    with pytest.raises(ConfigError, match="no such index folder"):
        Retriever(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not an index folder"):
        Retriever(tmp_path / "empty")
    retriever = Retriever(indexes["bm25"])
    for bad in ("", "   ", ["fish", ""]):
        with pytest.raises(ConfigError, match="empty"):
            retriever.search(bad)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k="):
            retriever.search("fish", k=k)
    with pytest.raises(ConfigError, match="nprobe"):
        Retriever(indexes["flat"], nprobe=0)
    assert Retriever(indexes["bm25"], nprobe=4).search("fish") == retriever.search("fish")  # no lists: ignored
    assert retriever.search([]) == []
    assert rkd("query", tmp_path / "nowhere", "fish") == 2
    assert rkd("query", indexes["bm25"], "  ") == 2
    with pytest.raises(SystemExit) as exc:
        rkd("query", indexes["bm25"], "fish", "-k", 0)
    assert exc.value.code == 2
    assert rkd("search", "hybrid", "--index", indexes["bm25"], "--index", tmp_path / "empty", "--split", "test",
               "--output", tmp_path / "h.run") == 2


# ------------------------------------------------------------------------------------------------------ front door
def test_import_retrieval_kd_loads_neither_torch_nor_faiss():
    code = ("import sys, retrieval_kd; names = retrieval_kd.__all__; "
            "assert 'Retriever' in dir(retrieval_kd) and 'HybridRetriever' in names; "
            "retrieval_kd.Retriever, retrieval_kd.HybridRetriever, retrieval_kd.load_collection; "
            "heavy = [m for m in ('torch', 'faiss', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    import retrieval_kd

    with pytest.raises(AttributeError):
        retrieval_kd.no_such_name  # noqa: B018
    for name in retrieval_kd.__all__:
        assert getattr(retrieval_kd, name) is not None
