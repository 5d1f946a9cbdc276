"""Teachers: each against a direct computation, FIRST's single forward pass and window merging, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval_kd.teachers import (
    BM25Teacher,
    EnsembleTeacher,
    LLMRerankerTeacher,
    combine_runs,
    fit_weights,
    normalize_scores,
    parse_teacher,
)
from retrieval_kd.teachers.llm_reranker import sliding_windows
from tests.conftest import hub_model

PASSAGES = ["Goldfish grow larger in big ponds.", "Bluetooth pairs a phone with headphones.",
            "The first world war began in 1914.", "A pond is a small body of still water."]


# -- normalisation and ensembles ---------------------------------------------------------------------------------
def test_normalize_hand_computed():
    assert np.allclose(normalize_scores([2.0, 4.0, 3.0], "minmax"), [0.0, 1.0, 0.5])
    z = normalize_scores([1.0, 2.0, 3.0], "zscore")
    assert np.allclose(z, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert np.allclose(normalize_scores([5.0, 5.0], "minmax"), [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_scores([1.0], "softmax")


def test_combine_runs_hand_computed():
    a = {"q": {"d1": 10.0, "d2": 0.0, "d3": 5.0}}
    b = {"q": {"d1": 0.0, "d2": 1.0, "d3": 0.5, "d4": 9.0}}  # d4 unscored by a: dropped
    out = combine_runs([a, b], weights=[0.75, 0.25], scale=2.0)
    assert out["q"] == pytest.approx({"d1": 2 * 0.75, "d2": 2 * 0.25, "d3": 2 * (0.75 * 0.5 + 0.25 * 0.5)})


def test_fit_weights_prefers_the_informative_member():
    qrels = {f"q{i}": {"good": 1} for i in range(10)}
    informative = {q: {"good": 2.0, "x": 1.0, "y": 0.0} for q in qrels}
    misleading = {q: {"good": 0.0, "x": 2.0, "y": 1.0} for q in qrels}  # equal weights rank "good" 2nd
    weights, value = fit_weights([informative, misleading], qrels, step=0.25)
    assert weights[0] > weights[1]
    assert value == pytest.approx(1.0)


def test_ensemble_teacher_scores_equal_combined_members(tiny_beir):
    from retrieval_kd.data import load_collection

    c = load_collection(str(tiny_beir))

    class Fixed(BM25Teacher):
        kind = "fixed"

        def __init__(self, values):
            super().__init__()
            self.values = values

        def config(self):
            return {"values": self.values}

        def score(self, query, doc_ids, doc_texts):
            return np.array([self.values[d] for d in doc_ids])

    t1, t2 = Fixed({"d1": 3.0, "d2": 1.0}), Fixed({"d1": -1.0, "d2": 1.0})
    ens = EnsembleTeacher([t1, t2], weights=[0.5, 0.5], normalization="minmax", scale=10.0)
    ens.prepare(c)
    assert np.allclose(ens.score("q", ["d1", "d2"], ["", ""]), [5.0, 5.0])
    assert ens.fingerprint != EnsembleTeacher([t1, t2], weights=[0.4, 0.6]).fingerprint


# -- specs ---------------------------------------------------------------------------------------------------------
def test_parse_teacher_specs():
    t = parse_teacher("llm-first:some/model,window=10,stride=5")
    assert isinstance(t, LLMRerankerTeacher) and t.mode == "first" and t.window == 10 and t.stride == 5
    assert parse_teacher("bm25,k1=1.2").k1 == 1.2
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        parse_teacher("nope:x")
    with pytest.raises(ValueError, match="not key=value"):
        parse_teacher("bm25,k1")
    with pytest.raises(ValueError, match=r"bm25 has no option 'colour' \(its options: k1, b\)"):
        parse_teacher("bm25,colour=red")


# -- FIRST listwise --------------------------------------------------------------------------------------------------
def test_sliding_windows_cover_the_list_back_to_front():
    assert sliding_windows(5, 10, 5) == [(0, 5)]
    assert sliding_windows(30, 10, 5) == [(20, 30), (15, 25), (10, 20), (5, 15), (0, 10)]
    assert sliding_windows(12, 10, 5) == [(2, 12), (0, 10)]
    with pytest.raises(ValueError):
        sliding_windows(10, 4, 5)


def test_first_one_forward_pass_gives_one_score_per_identifier(tiny_causal_lm):
    model, tok = tiny_causal_lm
    teacher = LLMRerankerTeacher("tiny", mode="first", window=20).set_model(model, tok)
    logits = teacher.window_logits("do goldfish grow", PASSAGES)
    assert teacher.forward_passes == 1
    assert logits.shape == (len(PASSAGES),)
    # the logits are exactly the next-token logits at the identifier token ids
    import torch

    prompt = teacher.first_prompt("do goldfish grow", PASSAGES)
    assert prompt.endswith("[")
    with torch.inference_mode():
        full = model(**tok(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    assert np.allclose(logits, full[teacher.identifier_ids(len(PASSAGES))].numpy(), atol=1e-5)
    scores = teacher.score("do goldfish grow", ["a", "b", "c", "d"], PASSAGES)
    assert teacher.forward_passes == 2
    assert sorted(scores.tolist()) == [1.0, 2.0, 3.0, 4.0]
    assert list(np.argsort(-scores, kind="stable")) == list(np.argsort(-logits, kind="stable"))


def test_first_windows_merge_consistently(tiny_causal_lm, monkeypatch):
    """With an oracle window scorer, sliding windows bring the global top (window - stride) to the front."""
    model, tok = tiny_causal_lm
    relevance = {f"p{i}": float((i * 7) % 30) for i in range(30)}  # a fixed shuffled relevance
    texts = list(relevance)
    teacher = LLMRerankerTeacher("tiny", mode="first", window=10, stride=5).set_model(model, tok)
    calls = []

    def oracle(query, passages):
        calls.append(len(passages))
        return np.array([relevance[p] for p in passages])

    monkeypatch.setattr(teacher, "window_logits", oracle)
    scores = teacher.score("q", texts, texts)
    assert calls == [10] * 5  # one call per window, windows of 10 over 30 with stride 5
    final = [texts[i] for i in np.argsort(-scores, kind="stable")]
    assert final[:5] == sorted(relevance, key=relevance.get, reverse=True)[:5]
    # a window as large as the list is one pass and a full sort
    calls.clear()
    big = LLMRerankerTeacher("tiny", mode="first", window=26, stride=5).set_model(model, tok)
    monkeypatch.setattr(big, "window_logits", oracle)
    sub = texts[:26]
    s = big.score("q", sub, sub)
    assert calls == [26]
    assert [sub[i] for i in np.argsort(-s)] == sorted(sub, key=relevance.get, reverse=True)


def test_query_likelihood_equals_manual_mean_log_prob(tiny_causal_lm):
    import torch

    model, tok = tiny_causal_lm
    teacher = LLMRerankerTeacher("tiny", mode="qlm", batch_size=3, use_chat_template=False).set_model(model, tok)
    scores = teacher.score("do goldfish grow", ["a", "b", "c", "d"], PASSAGES)
    prompt = tok.encode(teacher._prompt(f"Passage: {PASSAGES[2]}\nPlease write a question based on this passage.\n"
                                        "Question:"), add_special_tokens=False)
    target = tok.encode(" do goldfish grow", add_special_tokens=False)
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([prompt + target])).logits[0], -1)
    manual = np.mean([logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)])
    assert scores[2] == pytest.approx(manual, abs=1e-4)
    assert teacher.forward_passes == 2  # 4 passages, batches of 3


def test_yes_no_logit_difference(tiny_causal_lm):
    import torch

    model, tok = tiny_causal_lm
    teacher = LLMRerankerTeacher("tiny", mode="yesno").set_model(model, tok)
    scores = teacher.score("do goldfish grow", ["a", "b"], PASSAGES[:2])
    prompt = teacher._prompt("Query: do goldfish grow\nPassage: Bluetooth pairs a phone with headphones.\n"
                             "Is the passage relevant to the query? Answer with yes or no.")
    with torch.inference_mode():
        last = model(**tok(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    yes, no = teacher._single_token_ids(["yes", "Yes", " yes", " Yes"]), teacher._single_token_ids(["no", "No", " no", " No"])
    assert scores[1] == pytest.approx((torch.logsumexp(last[yes], 0) - torch.logsumexp(last[no], 0)).item(), abs=1e-4)


# -- encoder teachers against their libraries ---------------------------------------------------------------------------
def test_bi_encoder_teacher_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.teachers import BiEncoderTeacher

    hub_id = hub_model("sentence-transformers/all-MiniLM-L6-v2")
    teacher = BiEncoderTeacher(hub_id, full_corpus=False)
    scores = teacher.score("do goldfish grow", ["a", "b", "c", "d"], PASSAGES)
    st = SentenceTransformer(hub_id)
    st.max_seq_length = 256
    q = st.encode(["do goldfish grow"], normalize_embeddings=True)
    d = st.encode(PASSAGES, normalize_embeddings=True)
    assert np.allclose(scores, (d @ q[0]), atol=1e-5)
    assert int(np.argmax(scores)) == 0


def test_splade_teacher_equals_manual_max_pooling():
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from retrieval_kd.teachers import SpladeTeacher

    hub_id = hub_model("rkd-local/splade-tiny")
    teacher = SpladeTeacher(hub_id)
    scores = teacher.score("do goldfish grow", ["a", "b", "c", "d"], PASSAGES)
    tok, mlm = AutoTokenizer.from_pretrained(hub_id), AutoModelForMaskedLM.from_pretrained(hub_id).eval()

    def encode(texts):
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
        with torch.inference_mode():
            logits = mlm(**enc).logits
        act = torch.log1p(torch.relu(logits)) * enc["attention_mask"].unsqueeze(-1)
        return act.max(dim=1).values

    manual = (encode(PASSAGES) @ encode(["do goldfish grow"])[0]).numpy()
    assert np.allclose(scores, manual, rtol=1e-4, atol=1e-4)


def test_bm25_teacher_equals_index_scores(tiny_beir):
    from retrieval_kd.data import load_collection
    from retrieval_kd.search import bm25_index_for

    c = load_collection(str(tiny_beir))
    teacher = BM25Teacher()
    with pytest.raises(RuntimeError, match="prepare"):
        teacher.score("q", ["d1"], [""])
    teacher.prepare(c)
    run = bm25_index_for(c).search({"q2": "wifi vs bluetooth"}, top_k=5)
    scores = teacher.score("wifi vs bluetooth", list(run["q2"]), [""] * len(run["q2"]))
    assert np.allclose(scores, list(run["q2"].values()))


def test_cross_encoder_teacher_on_a_tiny_trained_model(tmp_path):
    """No MS MARCO cross-encoder exists offline: train a tiny one here, then score through the teacher."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval_kd.teachers import CrossEncoderTeacher

    tok = AutoTokenizer.from_pretrained(hub_model("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    folder = tmp_path / "tiny-ce"
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    ce = CrossEncoder(str(folder), num_labels=1, max_length=64)
    pairs = [("goldfish", "goldfish grow in ponds", 1.0), ("goldfish", "bluetooth headphones", 0.0),
             ("bluetooth", "bluetooth headphones", 1.0), ("bluetooth", "goldfish grow in ponds", 0.0)]
    model = ce.model
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        enc = ce.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], return_tensors="pt", padding=True)
        logits = model(**enc).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([p[2] for p in pairs]))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    ce.save(str(folder))

    teacher = CrossEncoderTeacher(str(folder), max_length=64)
    scores = teacher.score("goldfish", ["pos", "neg"], ["goldfish grow in ponds", "bluetooth headphones"])
    direct = CrossEncoder(str(folder), max_length=64, activation_fn=torch.nn.Identity()).predict(
        [("goldfish", "goldfish grow in ponds"), ("goldfish", "bluetooth headphones")])
    assert np.allclose(scores, direct, atol=1e-6)
    assert scores[0] > scores[1]
    assert teacher.config()["revision"].startswith("local-")


def test_fit_weights_equals_the_grid_scored_on_whole_runs():
    """The fit scores each grid point on the combined run cut to each query's top 10: the same nDCG@10 as on the
    whole run, so the same weights; checked against evaluating every full combination. (Scores without ties:
    ranx orders tied documents arbitrarily, on whole runs too.)"""
    from retrieval_kd.eval import evaluate
    from retrieval_kd.teachers.ensemble import _simplex_grid

    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{i}": {docs[j]: int(rng.integers(1, 3)) for j in rng.choice(40, 3, replace=False)}
             for i in range(30)}
    runs = [{q: {d: float(rng.random()) for d in docs} for q in qrels} for _ in range(3)]
    weights, value = fit_weights(runs, qrels, step=0.2)
    full = [evaluate(qrels, combine_runs(runs, w), ["ndcg@10"]).scores["ndcg@10"] for w in _simplex_grid(3, 0.2)]
    assert value == pytest.approx(max(full), abs=1e-12)
    assert evaluate(qrels, combine_runs(runs, weights), ["ndcg@10"]).scores["ndcg@10"] == pytest.approx(value)
    # a relevance level in the name keeps the cut; a metric whose @ is no cutoff (RBP's persistence) is not cut
    _, graded = fit_weights(runs, qrels, step=0.2, metric="ndcg@10-l2")
    full = [evaluate(qrels, combine_runs(runs, w), ["ndcg@10-l2"]).scores["ndcg@10-l2"] for w in _simplex_grid(3, 0.2)]
    assert graded == pytest.approx(max(full), abs=1e-12)
    from retrieval_kd.teachers.ensemble import _CUTOFF
    assert _CUTOFF.fullmatch("recall@100-l2") and not _CUTOFF.fullmatch("rbp@95")
