"""``rkd serve``: real HTTP requests against a server on a free loopback port, over tiny real indexes (BM25, an
inference-free sparse student, a flat dense index of the tiny SentenceTransformer, and an RRF hybrid).

Results must equal :meth:`Retriever.search` on the same queries; every bad request gets a 4xx JSON error naming
what is wrong and the server answers afterwards; concurrent dense requests are micro-batched (fewer encoder calls
than requests, the same hits).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, WORDS, write_word_collection

K_MAX, MAX_QUERIES, MAX_CHARS, MAX_BODY = 50, 8, 200, 4096


# ------------------------------------------------------------------------------------------------ tiny indexes
def build_tiny_indexes(out: Path, dense_model: str, mlm_folder: str) -> dict[str, Path]:
    """A 40-document word collection and its BM25, sparse (inference-free, IDF query weights) and flat dense
    indexes; returns ``{"beir": folder, "bm25": ..., "sparse": ..., "dense": ...}``."""
    import scipy.sparse as sp

    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders import corpus_embeddings
    from retrieval_kd.index.dense import build_faiss_index, corpus_identity, save_index
    from retrieval_kd.index.sparse import SparseIndex
    from retrieval_kd.search import bm25_index_for
    from retrieval_kd.students.sparse import build_inference_free_model

    beir = out / "beir"
    write_word_collection(beir, np.random.default_rng(0), n_docs=40, doc_words=6, splits={"test": range(24)})
    collection = load_collection(str(beir))
    corpus = collection.corpus
    bm25_index_for(collection, index_dir=out / "bm25")
    meta = {"encoder": dense_model, "dataset": str(beir), "max_seq_length": 32, **corpus_identity(corpus)}
    emb = np.asarray(corpus_embeddings(dense_model, corpus, 32))
    save_index(build_faiss_index("flat", emb), out / "dense", corpus.ids, {"type": "flat", **meta})
    idf = {w: 1.0 + i / len(WORDS) for i, w in enumerate(WORDS)}
    model = build_inference_free_model(mlm_folder, idf, max_seq_length=32)
    model.save(str(out / "sparse-model"))
    vectors = model.encode_document([d["text"] for d in corpus], convert_to_sparse_tensor=True).coalesce()
    rows, cols = vectors.indices().numpy()
    matrix = sp.csr_matrix((vectors.values().numpy(), (rows, cols)), shape=tuple(vectors.shape))
    vocab = [t for t, _ in sorted(model.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    SparseIndex.build(matrix, corpus.ids, vocab=vocab).save(
        out / "sparse", {"encoder": str(out / "sparse-model"), "dataset": str(beir), **corpus_identity(corpus)})
    return {"beir": beir, "bm25": out / "bm25", "sparse": out / "sparse", "dense": out / "dense"}


@pytest.fixture(scope="module")
def tiny_indexes(tmp_path_factory, tiny_st_folder, tiny_mlm):
    base = tmp_path_factory.getbasetemp()  # the cache the autouse fixture gives every test
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RKD_CACHE_DIR", str(base / "cache"))
        mp.setenv("RKD_INDEX_DIR", str(base / "indexes"))
        yield build_tiny_indexes(tmp_path_factory.mktemp("serve"), str(tiny_st_folder), str(tiny_mlm[0]))


@pytest.fixture(scope="module")
def queries(tiny_indexes) -> list[str]:
    from retrieval_kd.data import load_collection

    return list(load_collection(str(tiny_indexes["beir"])).queries("test").values())


@pytest.fixture(scope="module")
def served(tiny_indexes):
    """``(server, retrievers)``: the four indexes (and an RRF hybrid) on a free port, small limits, a 100 ms
    batching window (wide enough that concurrent test requests share a batch on a loaded CPU)."""
    from retrieval_kd import Retriever
    from retrieval_kd.serve import BackgroundServer, HybridSpec, ServeConfig, create_app

    retrievers = {name: Retriever(tiny_indexes[name], cache_queries=False) for name in ("bm25", "sparse", "dense")}
    config = ServeConfig(max_k=K_MAX, max_queries=MAX_QUERIES, max_query_chars=MAX_CHARS, max_body_bytes=MAX_BODY,
                         batch_window_ms=100, max_batch=64)
    app = create_app(retrievers, {"mix": HybridSpec(("bm25", "dense"), normalization="rrf")}, config)
    with BackgroundServer(app) as server:
        yield server, retrievers


# ---------------------------------------------------------------------------------------------------- helpers
def call(url: str, body=None, method: str | None = None) -> tuple[int, dict]:
    """``(status, JSON body)`` of one request; ``body`` a JSON-able value or raw bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def as_json(hits, with_text: bool = False) -> list[dict]:
    keys = ("doc_id", "score", "title", "text") if with_text else ("doc_id", "score")
    return [{key: getattr(h, key) for key in keys} for h in hits]


def assert_same_ranking(got: list[dict], expected: list[dict], tol: float = 1e-5) -> None:
    """Equal scores position by position (within ``tol``: a query encoded in a batch differs in the last bits),
    and equal doc ids wherever the score is no tie."""
    assert len(got) == len(expected)
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=tol)
    for i, (g, e) in enumerate(zip(got, expected)):
        tied = any(abs(e["score"] - o["score"]) <= tol for j, o in enumerate(expected) if j != i)
        assert tied or g["doc_id"] == e["doc_id"], (i, got, expected)


def assert_alive(server) -> None:
    assert call(server.url + "/health")[0] == 200
    status, body = call(server.url + "/search", {"index": "bm25", "queries": ["fish pond"], "k": 2})
    assert status == 200 and len(body["results"][0]) <= 2


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", ["bm25", "sparse", "dense"])
def test_search_equals_the_library_retriever(served, queries, name):
    server, retrievers = served
    texts = queries[:3]
    status, body = call(server.url + "/search", {"index": name, "queries": texts, "k": 5})
    assert status == 200 and body["index"] == name and body["k"] == 5
    expected = retrievers[name].search(texts, k=5)
    assert body["results"] == [as_json(hits) for hits in expected]  # one search(list) call on both sides
    assert all(len(r) > 0 for r in body["results"])
    # GET with repeated q= gives the same as POST
    url = f"{server.url}/search?index={name}&k=5&" + "&".join("q=" + urllib.request.quote(t) for t in texts)
    status, got = call(url)
    assert status == 200 and got["results"] == body["results"]


def test_an_inference_free_index_opened_with_another_backend_answers_like_torch(tiny_indexes, queries):
    """Its queries are static token weights whatever the backend (the graph of another backend is the document
    side only): a --encoding torch-bf16 server once failed every sparse request with 'encode queries with torch'."""
    from retrieval_kd import Retriever

    texts = queries[:4]
    expected = Retriever(tiny_indexes["sparse"], cache_queries=False).search(texts, k=5)
    got = Retriever(tiny_indexes["sparse"], cache_queries=False, encoding="torch-bf16").search(texts, k=5)
    for g, e in zip(got, expected):
        assert_same_ranking(as_json(g), as_json(e), tol=0.0)


def test_rkd_query_encoding_on_an_inference_free_index_answers_like_torch(tiny_indexes, queries, capsys):
    from retrieval_kd import Retriever
    from retrieval_kd.cli.main import main

    assert main(["query", str(tiny_indexes["sparse"]), queries[0], "-k", "5", "--json", "--encoding",
                 "torch-bf16"]) == 0
    got = [{"doc_id": h["doc_id"], "score": h["score"]} for h in json.loads(capsys.readouterr().out)]
    expected = Retriever(tiny_indexes["sparse"], cache_queries=False).search(queries[0], k=5)
    assert_same_ranking(got, as_json(expected), tol=1e-6)


def test_hybrid_and_with_text_equal_the_library(served, queries, tiny_indexes):
    from retrieval_kd import HybridRetriever
    from retrieval_kd.data import load_collection

    server, retrievers = served
    texts = queries[3:5]
    status, body = call(server.url + "/search", {"index": "mix", "queries": texts, "k": 4, "with_text": True})
    assert status == 200
    expected = HybridRetriever([retrievers["bm25"], retrievers["dense"]], normalization="rrf").search(
        texts, k=4, with_text=True)
    assert body["results"] == [as_json(hits, with_text=True) for hits in expected]
    corpus = load_collection(str(tiny_indexes["beir"])).corpus
    first = body["results"][0][0]
    assert first["text"] == corpus[first["doc_id"]]["text"]


def test_indexes_health_stats_openapi_and_offline_docs(served):
    server, _ = served
    status, body = call(server.url + "/indexes")
    assert status == 200
    kinds = {i["name"]: i["kind"] for i in body["indexes"]}
    assert kinds == {"bm25": "bm25", "sparse": "sparse", "dense": "dense", "mix": "hybrid"}
    dense = next(i for i in body["indexes"] if i["name"] == "dense")
    assert dense["ntotal"] == 40 and dense["dim"] == 16
    status, body = call(server.url + "/health")
    assert status == 200 and body["status"] == "ok" and body["indexes"] == ["bm25", "sparse", "dense", "mix"]
    assert set(call(server.url + "/stats")[1]["indexes"]) == {"bm25", "sparse", "dense", "mix"}
    status, spec = call(server.url + "/openapi.json")
    assert status == 200 and {"/search", "/indexes", "/health"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/search"]["post"]
    with urllib.request.urlopen(server.url + "/docs") as response:
        page = response.read().decode()
    assert "//cdn" not in page and "https://" not in page  # nothing from the network
    script = page.split('<script src="')[1].split('"')[0]
    with urllib.request.urlopen(server.url + script) as response:
        assert response.status == 200 and b"SwaggerUIBundle" in response.read()


BAD_REQUESTS = [
    ({"index": "nope", "queries": ["fish"]}, 404, "unknown index 'nope'; this server serves bm25, sparse, dense, mix"),
    ({"index": "bm25", "queries": []}, 422, "queries: List should have at least 1 item"),
    ({"index": "bm25", "queries": ["fish"], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"index": "bm25", "queries": ["fish"], "k": -3}, 422, "k: Input should be greater than or equal to 1"),
    ({"index": "bm25", "queries": ["fish"], "k": K_MAX + 1}, 422, f"k: Input should be less than or equal to {K_MAX}"),
    ({"index": "bm25", "queries": ["fish"], "k": "5"}, 422, "k: Input should be a valid integer"),
    ({"index": "bm25", "queries": ["fish"], "k": 2.5}, 422, "k: Input should be a valid integer"),
    ({"index": "bm25", "queries": "fish"}, 422, "queries: Input should be a valid array"),
    ({"index": "bm25", "queries": [1, 2]}, 422, "queries.0: Input should be a valid string"),
    ({"index": 3, "queries": ["fish"]}, 422, "index: Input should be a valid string"),
    ({"index": "bm25", "queries": ["fish"], "with_text": "yes"}, 422, "with_text: Input should be a valid boolean"),
    ({"index": "bm25", "queries": ["fish"] * (MAX_QUERIES + 1)}, 422,
     f"queries: List should have at most {MAX_QUERIES} items"),
    ({"index": "bm25", "queries": ["x" * (MAX_CHARS + 1)]}, 422, f"queries.0: String should have at most {MAX_CHARS}"),
    ({"index": "bm25", "queries": ["   "]}, 422, "queries.0: a query needs at least one non-space character"),
    ({"index": "bm25", "queries": ["fish"], "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
    ({"queries": ["fish"]}, 422, "index: required when more than one index is served"),
    ({"index": "bm25"}, 422, "queries: required"),
    ([1, 2], 422, "Input should be an object"),
    (b'{"index": "bm25", "queries": ["fish"', 422, "the body is not valid JSON"),
    (b"", 422, "the body is not valid JSON"),
    (json.dumps({"index": "bm25", "queries": ["y" * MAX_BODY]}).encode(), 413,
     f"bytes is over the server's limit of {MAX_BODY} bytes; send fewer or shorter queries"),
]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS, ids=[m[:40] for _, _, m in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_that_says_what_is_wrong_and_the_server_goes_on(served, body, status, message):
    server, _ = served
    got_status, got = call(server.url + "/search", body)
    assert got_status == status and message in got["error"], got
    assert_alive(server)


@pytest.mark.parametrize("query,status,message", [
    ("index=bm25&k=3", 422, "q: required"),
    ("index=bm25&q=fish&k=abc", 422, "k: Input should be a valid integer"),
    ("index=bm25&q=fish&k=0", 422, "k: Input should be greater than or equal to 1"),
    ("index=bm25&q=%20", 422, "q.0: a query needs at least one non-space character"),
    ("index=zz&q=fish", 404, "unknown index 'zz'"),
])
def test_bad_get_searches(served, query, status, message):
    server, _ = served
    got_status, got = call(f"{server.url}/search?{query}")
    assert got_status == status and message in got["error"], got
    assert_alive(server)


def test_unknown_paths_and_methods_name_the_endpoints(served):
    server, _ = served
    status, body = call(server.url + "/serach")
    assert status == 404 and "the endpoints are POST and GET /search" in body["error"]
    status, body = call(server.url + "/health", method="DELETE")
    assert status == 405 and "DELETE /health" in body["error"]
    assert_alive(server)


def test_concurrent_dense_requests_are_micro_batched_with_the_same_results(served, queries):
    server, retrievers = served
    dense = retrievers["dense"]
    texts = queries[:16]
    alone = [as_json(dense.search([t], k=5)[0]) for t in texts]  # one query per encoder call
    model = dense._dense_model()
    encode, calls = model.encode, []

    def counting(sentences, *args, **kwargs):
        calls.append(len(sentences))
        return encode(sentences, *args, **kwargs)

    model.encode = counting
    try:
        before = call(server.url + "/stats")[1]["indexes"]["dense"]["search_calls"]
        barrier = threading.Barrier(len(texts))

        def one(text):
            barrier.wait()
            return call(server.url + "/search", {"index": "dense", "queries": [text], "k": 5})

        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(one, texts))
    finally:
        del model.encode
    assert all(status == 200 for status, _ in answers)
    for (_, body), expected in zip(answers, alone):
        assert_same_ranking(body["results"][0], expected)
    assert sum(calls) == len(texts) and len(calls) < len(texts) / 2, calls  # 16 requests, a few encoder calls
    stats = call(server.url + "/stats")[1]["indexes"]["dense"]
    assert stats["search_calls"] - before == len(calls) and stats["largest_batch"] > 1


def test_batcher_splits_results_groups_by_k_and_survives_a_failing_search():
    from retrieval_kd.serve import MicroBatcher

    seen = []

    def search(texts, k, with_text):
        seen.append((list(texts), k))
        if "boom" in texts:
            raise ValueError("boom")
        return [[f"{t}@{k}"] for t in texts]

    async def scenario():
        batcher = MicroBatcher(search, window_s=0.05, max_batch=4, name="t")
        await batcher.start()
        jobs = [batcher.search(["a", "b"], 1), batcher.search(["c"], 2), batcher.search(["d"], 1),
                batcher.search(["e", "f"], 1)]
        results = await asyncio.gather(*jobs)
        failed = await asyncio.gather(batcher.search(["boom"], 3), return_exceptions=True)
        after = await batcher.search(["g"], 3)
        await batcher.stop()
        return results, failed, after, batcher.stats

    results, failed, after, stats = asyncio.run(scenario())
    assert results == [[["a@1"], ["b@1"]], [["c@2"]], [["d@1"]], [["e@1"], ["f@1"]]]
    # first batch: a, b, c, d (4 queries, max_batch), one search per k; e, f make the next batch
    assert seen[:3] == [(["a", "b", "d"], 1), (["c"], 2), (["e", "f"], 1)]
    assert isinstance(failed[0], ValueError) and after == [["g@3"]]
    assert stats.search_calls == 4 and stats.queries == 7 and stats.largest_batch == 3


def test_cli_parses_index_and_hybrid_specs():
    import argparse

    from retrieval_kd.cli.main import build_parser
    from retrieval_kd.cli.serve_cmd import hybrid_arg, index_arg

    args = build_parser().parse_args(["serve", "indexes/bm25/scifact/", "dense=x/flat", "--hybrid",
                                      "both=scifact+dense,weights=0.3:0.7,normalization=zscore,depth=50"])
    assert args.indexes == [("scifact", Path("indexes/bm25/scifact/")), ("dense", Path("x/flat"))]
    name, spec = args.hybrid[0]
    assert name == "both" and spec.members == ("scifact", "dense") and spec.weights == (0.3, 0.7)
    assert spec.normalization == "zscore" and spec.depth == 50 and args.host == "127.0.0.1"
    for text, message in [("a b=x", "may hold letters"), ("d=", "give the index folder")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            index_arg(text)
    for text, message in [("h=a", "two or more"), ("h=a+b,weights=1", "1 weights for 2 members"),
                          ("h=a+b,normalization=max", "minmax, zscore, rrf"), ("h=a+b,size=3", "options are")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            hybrid_arg(text)


def test_rkd_serve_starts_answers_and_refuses_a_missing_folder(tiny_indexes, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "retrieval_kd.cli.main", "-q", "serve", f"lex={tiny_indexes['bm25']}", "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("rkd serve: lex (bm25) on http://127.0.0.1:"), (line, proc.stderr.read())
            url = line.split(" on ")[1].split()[0]
            for _ in range(200):
                try:
                    status, body = call(url + "/search", {"queries": ["fish pond"], "k": 3})  # the one index
                    break
                except urllib.error.URLError:
                    time.sleep(0.05)
            assert status == 200 and body["index"] == "lex" and len(body["results"][0]) == 3
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert main(["serve", str(tmp_path / "none"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "rkd serve: error: " in err and "no such index folder" in err, err


def test_dense_requests_leave_no_query_cache_files(served, queries):
    from retrieval_kd.paths import cache_dir

    server, _ = served
    folder = cache_dir() / "embeddings"
    before = set(folder.glob("queries-*"))
    status, _ = call(server.url + "/search", {"index": "dense", "queries": queries[20:23], "k": 3})
    assert status == 200 and set(folder.glob("queries-*")) == before  # Retriever(cache_queries=False)


def test_oversized_bodies_chunked_or_on_a_kept_alive_connection_get_413(served):
    import http.client

    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    good = json.dumps({"index": "bm25", "queries": ["fish pond"], "k": 1})
    connection.request("POST", "/search", json.dumps({"index": "bm25", "queries": ["z" * 3 * MAX_BODY]}), headers)
    response = connection.getresponse()
    assert response.status == 413 and "over the server's limit" in json.loads(response.read())["error"]
    connection.request("POST", "/search", good, headers)  # the same connection goes on
    response = connection.getresponse()
    assert response.status == 200 and len(json.loads(response.read())["results"][0]) == 1
    connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/search", iter([b"x" * 2000] * 3), headers, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "a chunked request body" in json.loads(response.read())["error"]
    connection.close()
    assert_alive(server)


def test_rkd_serve_encoding_takes_only_the_known_backends(tmp_path, capsys):
    from retrieval_kd.cli.main import main
    from retrieval_kd.encoders.backends import ENCODING_CHOICES

    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path), "--encoding", "torch-fp8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--encoding: invalid choice: 'torch-fp8'" in err and "torch-bf16-compile" in err, err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    assert "{" + ",".join(ENCODING_CHOICES) + "}" in text and "torch-bf16-compile,onnx" in text, text
