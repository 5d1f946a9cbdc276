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


def test_ignore_identical_ids_keeps_a_judged_self_match():
    # both judged relevant: kept, nDCG@10 = 1; dropping q1 would leave d1 alone: 1 / (1 + 1 / log2(3)) = 0.6131
    qrels = {"q1": {"q1": 1, "d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0}}
    assert evaluate(qrels, run, ["ndcg@10"], ignore_identical_ids=True).scores["ndcg@10"] == pytest.approx(1.0)


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


# -- metric names ------------------------------------------------------------------------------------------------
def test_validate_metrics_accepts_ranx_names():
    from retrieval_kd.eval import validate_metrics

    good = ["ndcg@10", "mrr@10", "recall@1000", "map", "precision@5", "hits@3", "hit_rate@10", "f1@10",
            "r-precision", "bpref", "rbp.95", "ndcg_burges@10", "dcg@5", "recall@100-l2", "map-l2"]
    assert validate_metrics(good) == good
    assert validate_metrics("ndcg@10") == ["ndcg@10"]
    assert validate_metrics(["map", "map"]) == ["map"]


@pytest.mark.parametrize("metric, message", [
    ("ndcg@-5", "cutoff after '@' must be an integer >= 1"),
    ("ndcg@abc", "cutoff after '@' must be an integer >= 1"),
    ("recall@0", "cutoff after '@' must be an integer >= 1"),
    ("ndgc@10", "unknown metric 'ndgc@10' \\(did you mean 'ndcg@10'\\?\\)"),
    ("NDCG@10", "did you mean 'ndcg@10'"),
    ("bleu", "unknown metric 'bleu'"),
    ("bpref@10", "bpref takes no cutoff"),
    ("rbp", "rbp needs a persistence"),
    ("map-lx", "relevance level after '-l' must be an integer"),
    ("", "is not a metric name"),
])
def test_bad_metric_names_are_one_clear_config_error(metric, message):
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.eval import validate_metrics

    with pytest.raises(ConfigError, match=message) as info:
        validate_metrics(["ndcg@10", metric])
    assert "accepted: ndcg, " in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=message):
        evaluate(QRELS, RUN, [metric])
    with pytest.raises(ConfigError, match=message):
        compare(QRELS, {"a": RUN, "b": RUN}, [metric])


def test_no_metrics_is_an_error():
    from retrieval_kd.errors import ConfigError

    with pytest.raises(ConfigError, match="no metrics asked for"):
        evaluate(QRELS, RUN, [])


# -- non-finite scores and fractional grades in memory ------------------------------------------------------------
def test_evaluate_refuses_nan_scores_and_fractional_grades():
    from retrieval_kd.data import DataFormatError

    with pytest.raises(DataFormatError, match="query 'q1', doc 'd1' has score nan"):
        evaluate(QRELS, {"q1": {"d3": 3.0, "d1": float("nan")}}, ["ndcg@3"])
    with pytest.raises(DataFormatError, match="query 'q1', doc 'd2' has grade 0.9"):
        evaluate({"q1": {"d1": 2, "d2": 0.9}}, RUN, ["ndcg@3"])
    assert evaluate({"q1": {"d1": 2.0, "d2": -1}}, RUN, ["ndcg@3"]).n_queries == 1  # 2.0 is an integer


# -- runs that do not belong to the collection ----------------------------------------------------------------------
def test_check_run_against_qrels_and_corpus(tiny_beir, caplog):
    import logging

    from retrieval_kd.data import Corpus
    from retrieval_kd.errors import IntegrityError
    from retrieval_kd.eval import check_run

    corpus = Corpus(tiny_beir / "corpus.jsonl")
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert check_run({"q1": {"d1": 1.0, "d4": 0.5}}, qrels, corpus, source="ok.run") == 0
    with pytest.raises(IntegrityError, match=r"foreign\.run: none of its 2 doc ids is in the corpus .* \(e\.g\. '7001'\)"):
        check_run({"q1": {"7001": 1.0, "7002": 0.5}}, qrels, corpus, source="foreign.run")
    with pytest.raises(IntegrityError, match=r"other\.run: none of its 1 query ids is judged .* e\.g\. '1045'"):
        check_run({"1045": {"d1": 1.0}}, qrels, corpus, source="other.run")
    with caplog.at_level(logging.WARNING):
        assert check_run({"q1": {"d1": 1.0, "ghost": 0.5}, "q2": {"ghost2": 1.0}}, qrels, corpus, "some.run") == 2
    assert "some.run: 2 of 3 doc ids are not in the corpus" in caplog.text and "'ghost'" in caplog.text


def test_rkd_eval_refuses_a_run_of_another_corpus(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main
    from retrieval_kd.data import write_run

    foreign = write_run({"q1": {"7001": 1.0}, "q2": {"7002": 1.0}}, tmp_path / "foreign.run")
    assert main(["eval", "--dataset", str(tiny_beir), "--split", "test", "--run", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert "foreign.run: none of its 2 doc ids is in the corpus" in err and "'7001'" in err and "\n" not in err
    other_queries = write_run({"x1": {"d1": 1.0}}, tmp_path / "other.run")
    assert main(["eval", "--dataset", str(tiny_beir), "--split", "test", "--run", str(other_queries)]) == 2
    assert "other.run: none of its 1 query ids is judged" in capsys.readouterr().err
    good = write_run({"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}, tmp_path / "good.run")
    assert main(["eval", "--dataset", str(tiny_beir), "--split", "test", "--run", str(good),
                 "--metrics", "ndcg@-5"]) == 2
    assert "metric 'ndcg@-5'" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    twin = write_run({"q1": {"d4": 1.0}}, tmp_path / "b" / "good.run")  # same file name, another run: both kept
    out_json = tmp_path / "m.json"
    assert main(["eval", "--dataset", str(tiny_beir), "--split", "test", "--run", str(good), "--run", str(twin),
                 "--metrics", "mrr@10", "--output-json", str(out_json)]) == 0
    assert set(json.loads(out_json.read_text())) == {"good.run", str(twin)}
