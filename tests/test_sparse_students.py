"""Inference-free sparse students: IDF, FLOPS, the IDF-aware matching function, the inverted index, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from retrieval_kd.encoders.sparse import load_sparse_encoder
from retrieval_kd.index.sparse import QueryTokenizer, SparseIndex, prune_top_k
from retrieval_kd.students.idf import bm25_idf, compute_idf, load_idf, save_idf
from retrieval_kd.students.sparse import build_inference_free_model, flops

from .conftest import WORDS, write_word_collection


def test_idf_equals_hand_computed_values(tiny_mlm, tmp_path):
    _, tok = tiny_mlm
    docs = ["fish pond fish", "pond water", "wifi radio"]
    idf = compute_idf(iter(docs), tok, batch_size=2)
    n = 3
    # df: fish 1, pond 2, water 1, wifi 1, radio 1, gene 0 (repeats in a document count once)
    assert idf["pond"] == pytest.approx(np.log(1 + (n - 2 + 0.5) / (2 + 0.5)))
    assert idf["fish"] == pytest.approx(np.log(1 + (n - 1 + 0.5) / 1.5))
    assert idf["gene"] == pytest.approx(np.log(1 + (n + 0.5) / 0.5))
    assert idf["fish"] == pytest.approx(float(bm25_idf(1, 3)))
    path = save_idf(idf, tmp_path / "idf.json")
    assert load_idf(path) == pytest.approx(idf)
    (tmp_path / "bad.json").write_text(json.dumps({"fish": -1}))
    with pytest.raises(ValueError, match=r"bad.json: token 'fish' has IDF -1"):
        load_idf(tmp_path / "bad.json")


def test_flops_equals_hand_computed_values():
    docs = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 0, 3]]))
    # share of documents where each token is non-zero: [0.5, 0, 1]
    assert flops(docs) == pytest.approx(0.5**2 + 1**2)
    queries = sp.csr_matrix(np.array([[1.0, 1, 0]]))
    assert flops(docs, queries) == pytest.approx(0.5 * 1 + 0 * 1 + 1 * 0)


def test_prune_to_flops_drops_the_smallest_weights_down_to_the_target():
    from retrieval_kd.students.sparse import prune_to_flops

    docs = sp.csr_matrix(np.array([[3, 1, 0, 0], [2, 0, 0.5, 0], [0, 0, 0, 4]], dtype=np.float32))
    queries = sp.csr_matrix(np.ones((2, 4), dtype=np.float32))
    assert flops(docs, queries) == pytest.approx(5 / 3)          # p_d = 2/3, 1/3, 1/3, 1/3; p_q = 1
    pruned, threshold, value = prune_to_flops(docs, queries, target=1.0)
    assert threshold == 2.0 and value == pytest.approx(1.0)      # 1 and 0.5 go: p_d = 2/3, 0, 0, 1/3
    assert pruned.toarray().tolist() == [[3, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 4]]
    pruned, threshold, value = prune_to_flops(docs, queries, target=1.2)   # at most the target
    assert threshold == 2.0 and value == pytest.approx(1.0)
    same, threshold, value = prune_to_flops(docs, queries, target=2.0)     # already cheaper: unchanged
    assert threshold == 0.0 and (same != docs).nnz == 0 and value == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="positive"):
        prune_to_flops(docs, queries, target=0)


def test_flops_regulariser_equals_hand_computed_value():
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    emb = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    # sum over tokens of (mean |w|)^2 = 0.5^2 + 0 + 2.5^2
    assert float(FlopsLoss(model=None).compute_loss_from_embeddings(emb)) == pytest.approx(0.25 + 6.25)


def test_idf_aware_matching_and_no_query_forward_pass(tiny_mlm, monkeypatch):
    folder, tok = tiny_mlm
    idf = {w: float(i + 1) for i, w in enumerate(WORDS)}
    model = build_inference_free_model(str(folder), idf, max_seq_length=32, idf_aware=True)
    doc = model.encode_document(["fish pond water grow"], convert_to_tensor=True).to_dense()[0]
    # a query is tokens x IDF: no transformer runs (the document transformer is made to fail)
    transformer = model[0].sub_modules["document"][0]
    monkeypatch.setattr(transformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward")))
    query = model.encode_query(["pond fish fish"], convert_to_tensor=True).to_dense()[0]
    fish, pond = tok.convert_tokens_to_ids(["fish", "pond"])
    assert query[fish] == idf["fish"] and query[pond] == idf["pond"] and int((query != 0).sum()) == 2
    # matching function: sum over query tokens of idf(t) * w_d(t)
    score = float(model.similarity(query[None], doc[None])[0, 0])
    assert score == pytest.approx(idf["fish"] * float(doc[fish]) + idf["pond"] * float(doc[pond]), rel=1e-5)
    # the index's query side gives the same weights, from the tokenizer alone
    ids, weights = QueryTokenizer.from_sparse_encoder(model).encode("pond fish fish")
    assert sorted(ids.tolist()) == sorted([fish, pond]) and sorted(weights.tolist()) == [idf["fish"], idf["pond"]]
    plain = build_inference_free_model(str(folder), None, max_seq_length=32, idf_aware=False)
    q = plain.encode_query(["pond fish"], convert_to_tensor=True).to_dense()[0]
    assert q[fish] == 1.0 and q[pond] == 1.0


def test_index_search_equals_brute_force_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    docs = sp.random(300, 50, density=0.1, random_state=1, format="csr", dtype=np.float32)
    ids = [f"d{i}" for i in range(300)]
    index = SparseIndex.build(docs, ids, vocab=[f"t{j}" for j in range(50)])
    pruned = SparseIndex.build(docs, ids, prune=3)
    reference = prune_top_k(docs, 3).toarray()
    assert np.all((reference != 0).sum(axis=1) <= 3)
    for _ in range(20):
        q_ids = np.unique(rng.integers(0, 50, 4))
        q_w = rng.uniform(0.5, 2.0, len(q_ids)).astype(np.float32)
        for idx, dense in ((index, docs.toarray()), (pruned, reference)):
            brute = dense[:, q_ids] @ q_w
            top = [(ids[i], brute[i]) for i in np.lexsort((np.arange(300), -brute))[:10] if brute[i] > 0]
            got = idx.search(q_ids, q_w, k=10)
            assert [d for d, _ in got] == [d for d, _ in top]
            assert np.allclose([s for _, s in got], [s for _, s in top], atol=1e-5)
    index.save(tmp_path / "idx", {"encoder": "test"})
    loaded, meta = SparseIndex.load(tmp_path / "idx")
    assert meta["encoder"] == "test" and meta["n_docs"] == 300
    assert (loaded.postings != index.postings).nnz == 0 and loaded.doc_ids == ids
    assert index.export_rank_features(tmp_path / "rf.jsonl") == 300
    first = json.loads((tmp_path / "rf.jsonl").read_text().splitlines()[0])
    row = docs.getrow(0)
    assert first["id"] == "d0" and first["sparse_embedding"] == pytest.approx(
        {f"t{j}": float(v) for j, v in zip(row.indices, row.data)}, abs=1e-5)
    index.export_anserini(tmp_path / "anserini.jsonl", scale=100)
    vec = json.loads((tmp_path / "anserini.jsonl").read_text().splitlines()[0])
    assert vec["contents"] == "" and all(isinstance(v, int) and v > 0 for v in vec["vector"].values())
    with pytest.raises(FileNotFoundError, match="not a sparse index folder"):
        SparseIndex.load(tmp_path)


def test_tiny_sparse_student_trains_and_loads_as_sparse_encoder(tiny_mlm, tiny_distill, tmp_path):
    from sentence_transformers import SparseEncoder

    from retrieval_kd.students import load_sparse_config, train_sparse

    folder, _ = tiny_mlm
    values = dict(tiny_distill, model=str(folder), output_dir=str(tmp_path / "sparse"))
    values["loss"] = {"name": "margin-mse", "idf_aware": True, "document_regularizer_weight": 1e-3}
    values["sampler"] = dict(values["sampler"])
    config = load_sparse_config(values, {"training.max_steps": 4})
    summary = train_sparse(config)
    assert summary["steps"] == 4 and summary["fused_pooling"]       # trained on the fused projection + max
    model = SparseEncoder(str(tmp_path / "sparse"))
    q = model.encode_query(["fish pond"], convert_to_tensor=True).to_dense()[0]
    idf = load_idf(tmp_path / "sparse-idf.json")
    fish = QueryTokenizer.from_sparse_encoder(model).tokenizer.convert_tokens_to_ids("fish")
    assert float(q[fish]) == pytest.approx(idf["fish"])            # the saved query side is IDF
    assert "Inference-free sparse distillation" in (tmp_path / "sparse" / "README.md").read_text()


def test_query_weights_stay_idf_unless_given_a_learning_rate_then_only_seen_tokens_move(tiny_mlm, tiny_distill,
                                                                                         tmp_path):
    from retrieval_kd.data import load_collection
    from retrieval_kd.students import load_sparse_config, train_sparse

    folder, tok = tiny_mlm
    values = dict(tiny_distill, model=str(folder), output_dir=str(tmp_path / "sparse"))
    values["loss"] = {"name": "margin-mse", "idf_aware": True, "document_regularizer_weight": 1e-3}
    values["sampler"] = dict(values["sampler"])
    config = load_sparse_config(values, {"training.max_steps": 4, "query_learning_rate": 0.5,
                                         "training.learning_rate": 1e-9})
    train_sparse(config)
    idf = load_idf(tmp_path / "sparse-idf.json")
    learned = QueryTokenizer.from_sparse_encoder(load_sparse_encoder(str(tmp_path / "sparse"))).weights
    seen = {t for q in load_collection(values["data"]["dataset"]).queries("train").values() for t in q.split()}
    vocab = tok.get_vocab()
    moved = {t for t in idf if t in vocab and abs(float(learned[vocab[t]]) - idf[t]) > 1e-3}
    assert moved and moved <= seen                  # only tokens of training queries moved ...
    assert max(abs(float(learned[vocab[t]]) - idf[t]) for t in moved) > 0.1   # ... by the query learning rate
    unseen = [t for t in idf if t in vocab and t not in seen]
    assert unseen and all(float(learned[vocab[t]]) == pytest.approx(idf[t]) for t in unseen)


def test_windowed_document_vectors_are_the_max_over_their_windows(tiny_mlm, tmp_path):
    """A document longer than max_seq_length becomes consecutive windows whose SPLADE vectors are max-pooled; a
    short one is encoded as one piece, exactly as without windows."""
    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders.sparse import max_pool_rows, siamese_splade, sparse_corpus_vectors, window_texts

    folder, tok = tiny_mlm
    rng = np.random.default_rng(3)
    data = tmp_path / "words"
    data.mkdir()
    write_word_collection(data, rng, n_docs=6, doc_words=40, splits={"test": range(2)})
    # document d0 short (fits one 16-token window), the others 40 words -> three windows of 14 words
    lines = (data / "corpus.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"_id": "d0", "title": "", "text": "fish pond water"})
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    collection = load_collection(str(data))
    texts = collection.corpus.texts()
    pieces, owners = window_texts(tok, texts, max_seq_length=16, max_windows=5)
    assert owners.tolist() == [0] + [i for i in range(1, 6) for _ in range(3)]
    assert pieces[0] == texts[0]
    words = texts[1].split()
    assert pieces[1:4] == [" ".join(words[:14]), " ".join(words[14:28]), " ".join(words[28:])]
    assert window_texts(tok, texts, 16, 2)[1].tolist() == [0] + [i for i in range(1, 6) for _ in range(2)]

    model = siamese_splade(str(folder), max_seq_length=16)
    got = sparse_corpus_vectors(str(folder), collection.corpus, 16, encoder=model, windows=5).toarray()
    each = model.encode_document(pieces, convert_to_tensor=True).to_dense().numpy()
    expected = np.stack([each[owners == i].max(axis=0) for i in range(6)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    truncated = sparse_corpus_vectors(str(folder), collection.corpus, 16, encoder=model).toarray()
    np.testing.assert_allclose(got[0], truncated[0], rtol=1e-5, atol=1e-6)  # the short document is unchanged
    np.testing.assert_allclose(truncated[1:], each[[1, 4, 7, 10, 13]], rtol=1e-5, atol=1e-6)  # = first window
    assert (got[1:] >= truncated[1:] - 1e-6).all() and (got[1:] > truncated[1:] + 1e-6).any()

    # max pooling of sparse rows, against dense numpy (explicit zeros and empty owners included)
    m = sp.csr_matrix(np.array([[0, 2, 0], [1, 0, 3], [0, 5, 1], [0, 0, 0]], dtype=np.float32))
    pooled = max_pool_rows(m, np.array([0, 0, 2, 2]), 3).toarray()
    np.testing.assert_array_equal(pooled, [[1, 2, 3], [0, 0, 0], [0, 5, 1]])
    with pytest.raises(ValueError, match="windows must be >= 1"):
        sparse_corpus_vectors(str(folder), collection.corpus, 16, encoder=model, windows=0)

    # the CLI builds the same windowed index, and records how it encoded
    from retrieval_kd.cli.main import main

    out = tmp_path / "idx"
    assert main(["-q", "index", "build", "sparse", "--model", str(folder), "--dataset", str(data),
                 "--max-seq-length", "16", "--windows", "5", "--output", str(out)]) == 0
    built, meta = SparseIndex.load(out)
    assert meta["windows"] == 5 and meta["max_seq_length"] == 16
    q_ids = np.arange(5, got.shape[1])
    q_w = np.random.default_rng(0).uniform(0.5, 2.0, len(q_ids)).astype(np.float32)
    np.testing.assert_allclose(built.scores(q_ids, q_w), got[:, q_ids] @ q_w, rtol=1e-5)
    assert not np.allclose(built.scores(q_ids, q_w), truncated[:, q_ids] @ q_w, rtol=1e-3)


def test_a_copied_model_folder_finds_the_vectors_cached_under_its_old_name(tiny_mlm, tmp_path):
    import shutil

    from retrieval_kd.data import load_collection
    from retrieval_kd.encoders.sparse import siamese_splade, sparse_corpus_vectors

    folder, _ = tiny_mlm
    data = tmp_path / "words"
    data.mkdir()
    write_word_collection(data, np.random.default_rng(5), n_docs=5, doc_words=8, splits={"test": range(2)})
    corpus = load_collection(str(data)).corpus
    original = tmp_path / "student"
    shutil.copytree(folder, original)                       # copy2: names, sizes and mtimes kept
    first = sparse_corpus_vectors(str(original), corpus, 16, encoder=siamese_splade(str(original), 16))
    moved = tmp_path / "student-e4"
    shutil.copytree(original, moved)

    class NoEncoding:
        def __getattr__(self, name):
            raise AssertionError(f"the copy was encoded again ({name})")

    again = sparse_corpus_vectors(str(moved), corpus, 16, encoder=NoEncoding())
    assert (again != first).nnz == 0
    (moved / "extra.txt").write_text("changed")             # another file listing: a new key, encoded again
    with pytest.raises(AssertionError, match="encoded again"):
        sparse_corpus_vectors(str(moved), corpus, 16, encoder=NoEncoding())


def _document_route(tiny_mlm, activation="relu", pooling="max"):
    from sentence_transformers.sentence_transformer.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    folder, _ = tiny_mlm
    torch.manual_seed(1)
    doc = Transformer(str(folder), max_seq_length=32, transformer_task="fill-mask")
    with torch.no_grad():   # a random bias, so that some word pieces are active and some are not
        doc.auto_model.get_output_embeddings().bias.normal_()
    doc.train()
    return doc, SpladePooling(pooling_strategy=pooling, activation_function=activation)


@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_fused_splade_pooling_gives_the_library_values_and_gradients(tiny_mlm, activation, monkeypatch):
    from retrieval_kd.students import fused_splade
    from retrieval_kd.students.fused_splade import fused_splade_pooling

    monkeypatch.setattr(fused_splade, "TOKEN_CHUNK", 3)     # several slices: the max is merged across them
    doc, pool = _document_route(tiny_mlm, activation)
    pool.train()
    long = " ".join(WORDS[:12])
    texts = ["fish pond", long, "tiger forest river bridge fish", "apple"]   # unequal lengths: padding is masked

    def run():
        doc.auto_model.zero_grad()
        torch.manual_seed(2)        # the same dropout masks on both paths
        features = doc.preprocess(texts)
        out = pool(doc(features))["sentence_embedding"]
        (out * torch.linspace(0.5, 2.0, out.shape[1])).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in doc.auto_model.named_parameters() if p.grad is not None}

    keys = set(doc.auto_model.state_dict())
    expected, expected_grads = run()
    with fused_splade_pooling(doc, pool) as fused:
        assert fused and set(doc.auto_model.state_dict()) == keys      # a checkpoint saved meanwhile is unchanged
        got, grads = run()
    assert (expected > 0).any() and (expected == 0).any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # put back as it was, also when training fails: the library's modules and path
    with pytest.raises(RuntimeError, match="interrupted"), fused_splade_pooling(doc, pool):
        raise RuntimeError("interrupted")
    assert type(doc.auto_model.get_output_embeddings()) is torch.nn.Linear and "forward" not in vars(pool)
    torch.testing.assert_close(run()[0], expected)


def test_sum_pooling_keeps_the_library_path(tiny_mlm):
    from retrieval_kd.students.fused_splade import fused_splade_pooling

    doc, pool = _document_route(tiny_mlm, pooling="sum")
    with fused_splade_pooling(doc, pool) as fused:
        assert not fused and "forward" not in vars(pool)
