"""Dense indexes through the CLI: build, save with sidecar, search; Distill-VQ training writes a FAISS index."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np

from retrieval_kd.cli.main import main
from retrieval_kd.data import read_run
from retrieval_kd.index.dense import build_faiss_index, load_index
from tests.conftest import hub_model


def test_flat_index_search_equals_exact_model_search(tiny_beir, tmp_path, caplog):
    hub_model("sentence-transformers/all-MiniLM-L6-v2")
    idx = tmp_path / "flat"
    assert main(["-q", "index", "build", "--type", "flat", "--dataset", str(tiny_beir), "--output", str(idx)]) == 0
    index, doc_ids, meta = load_index(idx)
    assert meta["type"] == "flat" and meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert sorted(doc_ids) == ["d1", "d2", "d3", "d4", "d5"] and meta["bytes_per_vector"] == 384 * 4
    assert main(["-q", "search", "dense", "--index", str(idx), "--dataset", str(tiny_beir), "--split", "test",
                 "--top-k", "3", "--output", str(tmp_path / "a.run")]) == 0
    assert main(["-q", "search", "dense", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--dataset",
                 str(tiny_beir), "--split", "test", "--top-k", "3", "--output", str(tmp_path / "b.run")]) == 0
    a, b = read_run(tmp_path / "a.run"), read_run(tmp_path / "b.run")
    assert a == b
    assert max(a["q1"], key=a["q1"].get) == "d1"
    # --gpu: the same run from the GPU clone, or from the CPU index after a warning where no GPU FAISS exists
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "search", "dense", "--index", str(idx), "--dataset", str(tiny_beir), "--split", "test",
                     "--top-k", "3", "--gpu", "0", "--output", str(tmp_path / "c.run")]) == 0
    c = read_run(tmp_path / "c.run")
    assert c.keys() == a.keys() and all(c[q].keys() == a[q].keys() for q in a)
    assert all(abs(c[q][d] - a[q][d]) < 1e-4 for q in a for d in a[q])
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        assert "no GPU FAISS here" in caplog.text and "searching on CPU" in caplog.text


def test_vq_train_from_embeddings_writes_a_faiss_index(tmp_path):
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(1200, 32)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    np.save(tmp_path / "docs.npy", docs)
    np.save(tmp_path / "queries.npy", docs[:100])
    (tmp_path / "ids.json").write_text(json.dumps([f"doc{i}" for i in range(1200)]))
    out = tmp_path / "dvq"
    assert main(["-q", "vq", "train", "--embeddings", str(tmp_path / "docs.npy"), "--doc-ids", str(tmp_path / "ids.json"),
                 "--queries", str(tmp_path / "queries.npy"), "--nlist", "8", "--m", "8", "--epochs", "1",
                 "--pseudo-queries", "0", "--output", str(out)]) == 0
    index, doc_ids, meta = load_index(out)
    assert meta["type"] == "distill-vq" and meta["bytes_per_vector"] == 8 and len(meta["history"]) == 1
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFPQ) and index.ntotal == 1200
    assert (out / "distill_vq.safetensors").exists()
    copy = tmp_path / "copy"
    assert main(["-q", "index", "build", "--type", "distill-vq", "--vq", str(out), "--output", str(copy)]) == 0
    assert faiss.read_index(str(copy / "index.faiss")).ntotal == 1200


def test_baselines_have_the_asked_code_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    from retrieval_kd.index.dense import bytes_per_vector

    for kind in ("ivfpq", "opq-ivfpq", "pq"):
        assert bytes_per_vector(build_faiss_index(kind, x, nlist=8, m=8)) == 8
    assert bytes_per_vector(build_faiss_index("flat", x)) == 32 * 4


def test_cache_keys_do_not_depend_on_how_a_local_model_path_is_spelt(tiny_st_folder, tiny_beir, monkeypatch):
    """A model folder named relatively (as the pipeline does) and absolutely (as a script may) shares one cache
    entry; a retrained folder (new files) gets a new one."""
    import os

    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders.embeddings import embedding_cache_path
    from retrieval_kd.encoders.sparse import _cache_path

    corpus = load_collection(str(tiny_beir)).corpus
    monkeypatch.chdir(tiny_st_folder.parent)
    relative = os.path.relpath(tiny_st_folder)
    assert relative != str(tiny_st_folder)
    assert embedding_cache_path(relative, corpus, 32, True) == embedding_cache_path(str(tiny_st_folder), corpus, 32, True)
    assert _cache_path(relative, corpus, 32) == _cache_path(str(tiny_st_folder.resolve()), corpus, 32)
    before = embedding_cache_path(relative, corpus, 32, True)
    (tiny_st_folder / "extra.json").write_text("{}")
    try:
        assert embedding_cache_path(relative, corpus, 32, True) != before
    finally:
        (tiny_st_folder / "extra.json").unlink()
