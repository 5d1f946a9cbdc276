"""Evaluation: hand-computed values, TREC DL relevance levels, BEIR conventions, and the official DL19 figures."""

from __future__ import annotations

import json
import math

import pytest

from retrieval_kd.eval import compare, evaluate, to_markdown
from retrieval_kd.eval.evaluate import ranx_metric_name

QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}}
RUN = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}, "q2": {"d5": 1.0, "d4": 0.5}}


def test_hand_computed_values():
    r = evaluate(QRELS, RUN, ["ndcg@3", "mrr@10", "recall@1", "recall@2", "precision@2"])
    ndcg_q1 = (2 / math.log2(3) + 1 / math.log2(4)) / (2 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3)) / 1
    assert r.scores["ndcg@3"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-9)
    assert r.per_query["ndcg@3"]["q1"] == pytest.approx(ndcg_q1)
    assert r.scores["mrr@10"] == pytest.approx(0.5)
    assert r.scores["recall@1"] == 0.0
    assert r.scores["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert r.scores["precision@2"] == pytest.approx(0.5)
    assert r.n_queries == 2


def test_relevance_level_applies_to_binary_measures_only():
    lvl2 = evaluate(QRELS, RUN, ["ndcg@3", "mrr@10", "recall@2"], relevance_level=2)
    lvl1 = evaluate(QRELS, RUN, ["ndcg@3"], relevance_level=1)
    assert lvl2.scores["ndcg@3"] == pytest.approx(lvl1.scores["ndcg@3"])  # graded gains kept
    assert lvl2.scores["mrr@10"] == pytest.approx((0.5 + 0.0) / 2)  # q2 has no grade >= 2
    assert lvl2.scores["recall@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert ranx_metric_name("recall@100", 2) == "recall@100-l2"
    assert ranx_metric_name("ndcg@10", 2) == "ndcg@10"


def test_missing_query_scores_zero_and_unjudged_are_ignored():
    qrels = {**QRELS, "q3": {"d9": 1}}
    run = {**RUN, "q-unjudged": {"d1": 1.0}}
    r = evaluate(qrels, run, ["mrr@10"])
    assert r.n_queries == 3
    assert r.scores["mrr@10"] == pytest.approx(1.0 / 3)
    assert r.per_query["mrr@10"]["q3"] == 0.0


def test_ignore_identical_ids():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0}}
    assert evaluate(qrels, run, ["mrr@10"]).scores["mrr@10"] == pytest.approx(0.5)
    assert evaluate(qrels, run, ["mrr@10"], ignore_identical_ids=True).scores["mrr@10"] == pytest.approx(1.0)


def test_compare_reports_significance():
    qrels = {f"q{i}": {"good": 1} for i in range(30)}
    good = {q: {"good": 2.0, "bad": 1.0} for q in qrels}
    bad = {q: {"bad": 2.0, "good": 1.0} for q in qrels}
    report = compare(qrels, {"good": good, "bad": bad}, ["mrr@10"])
    d = report.to_dict()
    assert d["good"]["scores"]["mrr@10"] == pytest.approx(1.0)
    assert d["bad"]["scores"]["mrr@10"] == pytest.approx(0.5)
    assert d["good"]["comparisons"]["bad"]["mrr@10"] < 0.05


def test_markdown_table():
    table = to_markdown({"bm25": {"ndcg@10": 0.5}, "dense": {"ndcg@10": 0.61234}})
    assert table.splitlines() == ["| system | ndcg@10 |", "|---|---:|", "| bm25 | 0.5000 |", "| dense | 0.6123 |"]


def test_official_trec_dl_2019_bm25_run(mirror, tmp_path, capsys):
    """The organisers' BM25 run gives the published nDCG@10 0.5058 and R@1000 0.7501, with no extra flags."""
    from retrieval_kd.cli.main import main

    out = tmp_path / "metrics.json"
    run = mirror / "trec-dl-2019-passage" / "runs" / "bm25base_p.run.gz"
    assert main(["eval", "--dataset", "trec-dl-2019-passage", "--split", "test", "--run", str(run),
                 "--output-json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert round(metrics["ndcg@10"], 4) == 0.5058
    assert round(metrics["recall@1000"], 4) == 0.7501
    assert round(metrics["mrr@10"], 4) == 0.7024
    assert "0.5058" in capsys.readouterr().out
