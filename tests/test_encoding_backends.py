"""Encoding backends (torch, torch-bf16, onnx, onnx-int8, openvino) against torch, on tiny random BERT models.

Tolerances (cosine of each row to torch fp32's): onnx fp32 within 1e-5 (and 1e-5 absolute on SPLADE weights);
torch-bf16 and openvino (bf16 where the CPU has AMX) within 1e-2; onnx-int8 within 3e-2 (dynamic int8 of the
weight matrices). Cache keys: the default ``torch`` encoding keeps the digests of earlier releases; every other
backend gets a file of its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_word_collection

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["fish pond water", "wifi bluetooth radio wireless phone war history", "gene", "cancer tumor vaccine virus",
         "sleep memory brain heart blood immune protein cell energy power solar battery"]
COS_TOL = {"onnx": 1e-5, "torch-bf16": 1e-2, "openvino": 1e-2, "onnx-int8": 3e-2}
BACKENDS = ["torch-bf16", "onnx", "onnx-int8",
            pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                              reason="openvino is not installed"))]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def tiny_sparse_folder(tiny_mlm, tmp_path_factory) -> Path:
    """The tiny masked LM as a siamese SPLADE SparseEncoder folder."""
    from retrieval_kd.encoders.sparse import siamese_splade

    folder = tmp_path_factory.mktemp("tiny-splade") / "splade"
    siamese_splade(str(tiny_mlm[0]), max_seq_length=32).save(str(folder))
    return folder


@pytest.fixture
def corpus(tmp_path):
    from retrieval_kd.data import load_collection

    write_word_collection(tmp_path / "beir", np.random.default_rng(3), n_docs=12, doc_words=9,
                          splits={"test": range(4)})
    return load_collection(str(tmp_path / "beir"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_backend_matches_torch(tiny_st_folder, backend):
    from retrieval_kd.encoders import load_encoder

    reference = load_encoder(str(tiny_st_folder), 32).encode(TEXTS, normalize_embeddings=True)
    encoder = load_encoder(str(tiny_st_folder), 32, encoding=backend)
    got = encoder.encode(TEXTS, batch_size=2, normalize_embeddings=True)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert encoder.rkd_encoding.backend == backend and encoder.rkd_encoding.isa
    assert _cosine(got, reference).min() >= 1 - COS_TOL[backend]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)
    # a single text gives its row; int8 scales activations per batch, so its rows move a little with the batch
    assert np.allclose(encoder.encode(TEXTS[1]), got[1], atol=1e-2 if backend == "onnx-int8" else 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_backend_matches_torch(tiny_sparse_folder, backend):
    from retrieval_kd.encoders.sparse import load_sparse_encoder, to_scipy

    reference = to_scipy(load_sparse_encoder(str(tiny_sparse_folder)).encode_document(TEXTS)).toarray()
    encoder = load_sparse_encoder(str(tiny_sparse_folder), encoding=backend)
    got = to_scipy(encoder.encode_document(TEXTS, batch_size=2)).toarray()
    assert got.shape == reference.shape
    assert _cosine(got, reference).min() >= 1 - COS_TOL[backend]
    if backend == "onnx":  # fused pooling is the same function: same weights, same non-zeros
        np.testing.assert_allclose(got, reference, atol=1e-5)
    queries = to_scipy(encoder.encode_query(TEXTS[:2])).toarray()  # siamese: queries take the document graph
    np.testing.assert_allclose(queries, got[:2], atol=1e-2 if backend == "onnx-int8" else 1e-5)


def test_fused_splade_pooling_equals_sentence_transformers():
    import torch
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from retrieval_kd.encoders.graphs import splade_pool

    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1, 1] + [0] * 5])
    for strategy in ("max", "sum"):
        for activation in ("relu", "log1p_relu"):
            want = SpladePooling(strategy, activation).eval()({"token_embeddings": logits.clone(),
                                                               "attention_mask": mask})["sentence_embedding"]
            assert torch.allclose(splade_pool(logits, mask, strategy, activation), want, atol=1e-6)


def _old_digest(model: str, fields: dict) -> str:
    """The corpus-cache digest as earlier releases computed it (no encoding fields)."""
    from retrieval_kd.models.revision import model_cache_id, model_revision

    key = json.dumps({"model": model_cache_id(model)[0], "revision": model_revision(model), **fields}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_dense_caches_keep_backends_apart_and_torch_keys_unchanged(tiny_st_folder, corpus):
    from retrieval_kd.encoders import corpus_embeddings, embedding_cache_path, query_embeddings
    from retrieval_kd.paths import cache_dir

    model = str(tiny_st_folder)
    paths = {b: embedding_cache_path(model, corpus.corpus, 32, True, b) for b in ("torch", "onnx", "onnx-int8")}
    assert len(set(paths.values())) == 3
    assert paths["torch"].name.endswith(_old_digest(model, {"max_seq_length": 32, "normalize": True,
                                                            "corpus": corpus.corpus.store_path.name}) + ".npy")
    torch_vectors = np.asarray(corpus_embeddings(model, corpus.corpus, 32))
    onnx_vectors = np.asarray(corpus_embeddings(model, corpus.corpus, 32, encoding="onnx"))
    assert paths["torch"].exists() and paths["onnx"].exists() and not paths["onnx-int8"].exists()
    assert _cosine(onnx_vectors, torch_vectors).min() >= 1 - 1e-5

    queries = corpus.queries("test")
    before = set((cache_dir() / "embeddings").glob("queries-*.npy"))
    query_embeddings(model, queries, 32)
    query_embeddings(model, queries, 32, encoding="onnx")
    new = set((cache_dir() / "embeddings").glob("queries-*.npy")) - before
    from retrieval_kd.models.revision import model_cache_id, model_revision

    old_key = json.dumps({"model": model_cache_id(model)[0], "revision": model_revision(model), "max_seq_length": 32,
                          "normalize": True, "prompt": None, "queries": list(queries.items())}, sort_keys=True)
    assert len(new) == 2
    assert cache_dir() / "embeddings" / f"queries-{hashlib.sha256(old_key.encode()).hexdigest()[:16]}.npy" in new


def test_sparse_cache_keeps_backends_apart_and_torch_key_unchanged(tiny_sparse_folder, corpus):
    from retrieval_kd.encoders.sparse import _cache_path, sparse_corpus_vectors

    model = str(tiny_sparse_folder)
    torch_path = _cache_path(model, corpus.corpus, 32)
    assert torch_path.name.endswith(_old_digest(model, {"max_seq_length": 32, "corpus": corpus.corpus.store_path.name,
                                                        "kind": "sparse-doc"}) + ".npz")
    reference = sparse_corpus_vectors(model, corpus.corpus, 32).toarray()
    int8 = sparse_corpus_vectors(model, corpus.corpus, 32, encoding="onnx-int8").toarray()
    int8_path = _cache_path(model, corpus.corpus, 32, encoding="onnx-int8")
    assert int8_path != torch_path and int8_path.exists() and torch_path.exists()
    assert _cosine(int8, reference).min() >= 1 - COS_TOL["onnx-int8"]


def test_an_encoder_and_a_contradicting_encoding_are_refused(tiny_st_folder, corpus):
    from retrieval_kd.encoders import corpus_embeddings, load_encoder

    with pytest.raises(ValueError, match="torch model"):
        corpus_embeddings(str(tiny_st_folder), corpus.corpus, 32, encoder=load_encoder(str(tiny_st_folder), 32),
                          encoding="onnx")


def test_export_is_cached_once_and_never_touches_the_source(tiny_st_folder, monkeypatch):
    from retrieval_kd.encoders import export

    before = _listing(tiny_st_folder)
    first = export.exported_model(str(tiny_st_folder), "dense", "onnx")
    int8 = export.exported_model(str(tiny_st_folder), "dense", "onnx-int8")
    assert int8 != first and (int8 / "model.onnx").stat().st_size < (first / "model.onnx").stat().st_size
    monkeypatch.setattr(export, "_write_export", lambda *a, **k: pytest.fail("exported twice"))
    assert export.exported_model(str(tiny_st_folder), "dense", "openvino") == first  # the same fp32 graph
    assert export.exported_model(str(tiny_st_folder), "dense", "onnx") == first
    assert _listing(tiny_st_folder) == before


def test_missing_backend_names_package_and_fallback(monkeypatch):
    from retrieval_kd.encoders.backends import resolve_encoding
    from retrieval_kd.errors import UnavailableError

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UnavailableError, match=r"needs the Python package 'openvino'.*pip install openvino.*"
                                               r"encoding 'torch'"):
        resolve_encoding("openvino")
    with pytest.raises(ValueError, match="unknown encoding 'fp8'"):
        resolve_encoding("fp8")


def test_auto_picks_by_cpu_capability_and_logs_why(monkeypatch, caplog):
    from retrieval_kd.encoders import backends

    amx = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    monkeypatch.setattr(backends, "cpu_flags", lambda: amx)
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    with caplog.at_level("INFO", logger="retrieval_kd.encoders.backends"):
        chosen = backends.resolve_encoding("auto", "dense", "some-model")
    assert (chosen.backend, chosen.isa) == ("torch-bf16", "amx-bf16") and "AMX" in chosen.reason
    assert "torch-bf16" in caplog.text and "AMX" in caplog.text and "OpenVINO" in chosen.reason
    assert chosen.cache_fields() == {"encoding": "torch-bf16", "isa": "amx-bf16"}
    assert backends.resolve_encoding("auto", "sparse").backend == "torch-bf16"
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert backends.resolve_encoding("auto", "dense").backend == "torch"
    assert backends.resolve_encoding("auto", "sparse").backend == "onnx"
    assert backends.resolve_encoding("torch").cache_fields() == {}
    assert backends.isa_target("onnx-int8", frozenset({"avx2"})) == "avx2"


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
@pytest.mark.parametrize("flags, unit", [({"avx512f", "avx512_bf16"}, "AVX-512 BF16"),
                                         ({"avx512f", "avx512_bf16", "amx_bf16"}, "AMX")])
def test_auto_takes_openvino_for_dense_and_sparse_where_the_cpu_has_bf16(monkeypatch, flags, unit):
    from retrieval_kd.encoders import backends

    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset(flags | {"avx2"}))
    dense, sparse = backends.resolve_encoding("auto", "dense"), backends.resolve_encoding("auto", "sparse")
    assert dense.backend == sparse.backend == "openvino" and unit in dense.reason
    assert dense.isa.endswith("-amx" if "amx_bf16" in flags else "-avx512")      # the vectors' target, for keys
    assert dense.cache_fields() == {"encoding": "openvino", "isa": dense.isa}
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))   # no bf16: unchanged
    assert [backends.resolve_encoding("auto", k).backend for k in ("dense", "sparse")] == ["torch", "onnx"]


def test_export_model_cli_dense_runs_in_plain_onnxruntime(tiny_st_folder, tmp_path, corpus):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from retrieval_kd.cli.main import main
    from retrieval_kd.encoders import corpus_embeddings, load_encoder

    out = tmp_path / "exported"
    before = _listing(tiny_st_folder)
    assert main(["export-model", str(tiny_st_folder), "--backend", "onnx-int8", "--output", str(out)]) == 0
    assert _listing(tiny_st_folder) == before
    meta = json.loads((out / "rkd_export.json").read_text())
    assert (meta["kind"], meta["backend"], meta["output"]) == ("dense", "onnx-int8", "sentence_embedding")
    # the README's five lines
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="np")
    (plain,) = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    # the folder is a model wherever one is taken; in one batch it gives the same rows (int8 activation scales
    # are per batch, so other batchings move the rows a little)
    np.testing.assert_allclose(load_encoder(str(out)).encode(TEXTS), plain, atol=1e-5)
    np.testing.assert_allclose(load_encoder(str(out)).encode(TEXTS, batch_size=2), plain, atol=1e-2)
    reference = load_encoder(str(tiny_st_folder), 32).encode(TEXTS, normalize_embeddings=True)
    assert _cosine(plain, reference).min() >= 1 - COS_TOL["onnx-int8"]
    assert main(["export-model", str(tiny_st_folder), "--backend", "onnx", "--output", str(out)]) == 0  # same kind
    assert json.loads((out / "rkd_export.json").read_text())["backend"] == "onnx"
    exported = np.asarray(corpus_embeddings(str(out), corpus.corpus, 32))  # the fp32 export, as a --model
    assert _cosine(exported, np.asarray(corpus_embeddings(str(tiny_st_folder), corpus.corpus, 32))).min() >= 1 - 1e-5


def test_export_model_cli_sparse_fuses_pooling(tiny_sparse_folder, tmp_path):
    import onnx
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from retrieval_kd.cli.main import main
    from retrieval_kd.encoders.sparse import load_sparse_encoder, to_scipy

    out = tmp_path / "sparse-onnx"
    assert main(["export-model", str(tiny_sparse_folder), "--backend", "onnx", "--output", str(out)]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["sparse_embedding"]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == len(tokenizer)  # (batch, vocab): no logits
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="np")
    (plain,) = ort.InferenceSession(str(out / "model.onnx")).run(None, {k: batch[k] for k in ("input_ids",
                                                                                               "attention_mask")})
    reference = to_scipy(load_sparse_encoder(str(tiny_sparse_folder)).encode_document(TEXTS)).toarray()
    np.testing.assert_allclose(plain, reference, atol=1e-5)
    loaded = to_scipy(load_sparse_encoder(str(out)).encode_document(TEXTS, batch_size=2)).toarray()
    np.testing.assert_allclose(loaded, reference, atol=1e-5)


def test_export_model_cli_refuses_a_folder_it_did_not_write(tiny_st_folder, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export-model", str(tiny_st_folder), "--backend", "onnx", "--output", str(tmp_path / "mine")]) == 2
    assert "was not written by retrieval-kd" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_teachers_take_an_encoding_and_torch_keeps_their_fingerprint(tiny_st_folder, tiny_sparse_folder):
    from retrieval_kd.teachers import parse_teacher
    from retrieval_kd.teachers.bi_encoder import BiEncoderTeacher
    from retrieval_kd.teachers.splade import SpladeTeacher

    ids, docs = ["a", "b", "c"], TEXTS[:3]
    torch_teacher = BiEncoderTeacher(str(tiny_st_folder), max_seq_length=32, full_corpus=False)
    onnx_teacher = parse_teacher(f"bi-encoder:{tiny_st_folder},max_seq_length=32,full_corpus=false,encoding=onnx")
    assert onnx_teacher.encoding == "onnx" and "encoding" not in torch_teacher.config()
    assert onnx_teacher.config()["encoding"] == "onnx" and onnx_teacher.config()["isa"]
    np.testing.assert_allclose(onnx_teacher.score(TEXTS[3], ids, docs), torch_teacher.score(TEXTS[3], ids, docs),
                               atol=1e-5)
    splade = SpladeTeacher(str(tiny_sparse_folder), max_seq_length=32)
    splade_onnx = SpladeTeacher(str(tiny_sparse_folder), max_seq_length=32, encoding="onnx")
    assert "encoding" not in splade.config() and splade_onnx.config()["encoding"] == "onnx"
    np.testing.assert_allclose(splade_onnx.score(TEXTS[3], ids, docs), splade.score(TEXTS[3], ids, docs), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_torch_bf16_compile_matches_torch(tiny_st_folder):
    from retrieval_kd.encoders import load_encoder

    reference = load_encoder(str(tiny_st_folder), 32).encode(TEXTS, normalize_embeddings=True)
    encoder = load_encoder(str(tiny_st_folder), 32, encoding="torch-bf16-compile")
    got = encoder.encode(TEXTS, batch_size=2, normalize_embeddings=True)  # batches of two lengths: one graph
    assert _cosine(got, reference).min() >= 1 - COS_TOL["torch-bf16"]


def test_compile_without_a_compiler_names_the_fallback(monkeypatch):
    from retrieval_kd.encoders import backends
    from retrieval_kd.errors import UnavailableError

    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    with pytest.raises(UnavailableError, match="C\\+\\+ compiler.*encoding 'torch-bf16'"):
        backends.resolve_encoding("torch-bf16-compile")


def test_index_build_and_search_take_encoding(tiny_st_folder, tiny_sparse_folder, tmp_path, capsys):
    from retrieval_kd.cli.main import main
    from retrieval_kd.data import read_run

    write_word_collection(tmp_path / "beir", np.random.default_rng(4), n_docs=10, doc_words=7,
                          splits={"test": range(3)})
    beir, model = str(tmp_path / "beir"), str(tiny_st_folder)
    assert main(["index", "build", "--type", "flat", "--dataset", beir, "--model", model, "--encoding", "onnx",
                 "--output", str(tmp_path / "flat")]) == 0
    for encoding in ("torch", "onnx"):
        out = tmp_path / f"{encoding}.run"
        assert main(["search", "dense", "--model", model, "--dataset", beir, "--split", "test", "--encoding",
                     encoding, "--max-seq-length", "32", "--output", str(out)]) == 0
    torch_run, onnx_run = read_run(tmp_path / "torch.run"), read_run(tmp_path / "onnx.run")
    assert {q: max(d, key=d.get) for q, d in torch_run.items()} == {q: max(d, key=d.get) for q, d in onnx_run.items()}
    assert main(["index", "build", "sparse", "--model", str(tiny_sparse_folder), "--dataset", beir, "--encoding",
                 "onnx", "--output", str(tmp_path / "sparse")]) == 0
    sidecar = json.loads((tmp_path / "sparse" / "rkd_index.json").read_text())
    assert sidecar["encoding"]["backend"] == "onnx"
    assert main(["search", "dense", "--index", str(tmp_path / "flat"), "--dataset", beir, "--split", "test",
                 "--encoding", "onnx", "--output", str(tmp_path / "x.run")]) == 2
    assert "--encoding is for exact search" in capsys.readouterr().err
