"""Ensemble weights fitted without labels on the inverse cloze task (`teachers.fit_on: ict`): the masked source,
the members' scores of it, the fit, the pipeline's use of it, and the bi-encoder scoring a passage the corpus lacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from retrieval_kd.errors import ConfigError
from retrieval_kd.teachers import BM25Teacher
from retrieval_kd.teachers.ict_weights import fit_weights_ict, masked_id

from .conftest import write_jsonl
from .test_pipeline import tiny_pipeline  # noqa: F401 - the fixture
from .test_pipeline_label_free import _load_with, label_free  # noqa: F401 - the fixture


def _topic_folder(folder, n_docs: int = 12):
    """Documents of three sentences; every sentence of ``d<i>`` holds ``topic<i>`` (in no other document), words
    of its own and ``fish`` (in every sentence). A sentence cut out of ``d<i>`` shares only ``topic<i>`` and
    ``fish`` with the rest of it, and only ``fish`` with any other document."""
    docs = [{"_id": f"d{i}", "title": "",
             "text": " ".join(f"Topic{i} fish w{i}s{s}a w{i}s{s}b." for s in range(3))} for i in range(n_docs)]
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", [{"_id": "q0", "text": "fish"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    return folder


class Adversary(BM25Teacher):
    """Scores every masked source 0 and every other passage 1; records what it was shown for the masked ones."""

    kind = "adversary"

    def __init__(self):
        super().__init__()
        self.masked_seen: list[tuple[str, str, str]] = []

    def config(self):
        return {}

    def prepare(self, collection) -> None:
        pass

    def score(self, query, doc_ids, doc_texts):
        for d, t in zip(doc_ids, doc_texts):
            if "\x00ict-" in d:
                self.masked_seen.append((query, d, t))
        return np.array([0.0 if "\x00ict-" in d else 1.0 for d in doc_ids])


def test_ict_fit_masks_the_sentence_and_weights_the_member_that_finds_the_rest(tmp_path):
    from retrieval_kd.data import load_collection

    collection = load_collection(str(_topic_folder(tmp_path / "topics")))
    bm25, adversary = BM25Teacher(), Adversary()
    bm25.prepare(collection)
    fit = fit_weights_ict(collection, [bm25, adversary], queries=8, seed=0, top_k=5, sources=("bm25",), step=0.1)
    assert fit.queries == 8
    # BM25 finds each source through topic<i> alone (the query's own words are gone from it): rank 1 every time;
    # the adversary ranks it last of its pool, BM25's top 5 (the source among them; nDCG@10 = 1 / log2(6))
    assert fit.members_ndcg[0] == pytest.approx(1.0)
    assert fit.members_ndcg[1] == pytest.approx(1 / np.log2(6))
    # min-max: the source scores w (BM25's 1, the adversary's 0), the others 1 - w (BM25 scores them alike, on
    # `fish`): first for w > 0.5, tied at 0.5 (which ranx may order either way), last below
    assert fit.weights[0] >= 0.5 and sum(fit.weights) == pytest.approx(1.0) and fit.ndcg == pytest.approx(1.0)
    # the ensemble against each member, per query: BM25's 1.0 everywhere, the adversary's 1 / log2(6) everywhere
    assert np.mean(fit.per_query["ensemble"]) == pytest.approx(fit.ndcg) and len(fit.per_query[1]) == 8
    assert fit.gain_over(0) == (pytest.approx(0.0), 1.0)  # the same on every query: nothing gained, p 1
    gain, p = fit.gain_over(1)
    assert gain == pytest.approx(1 - 1 / np.log2(6)) and p == 0.0  # the same gain on every query
    swapped = fit_weights_ict(collection, [Adversary(), bm25], queries=8, seed=0, top_k=5, sources=("bm25",))
    assert swapped.weights[1] >= 0.5 and swapped.members_ndcg == pytest.approx(fit.members_ndcg[::-1])
    assert len(adversary.masked_seen) == 8 and len({d for _, d, _ in adversary.masked_seen}) == 8
    for query, masked_id_, text in adversary.masked_seen:
        doc = masked_id_.split("\x00")[0]
        assert masked_id_ == masked_id(doc, text)
        assert query not in text and query.split()[0] in text  # the sentence cut out, its document's topic left
        assert len(text.split()) == 8  # two of the three four-word sentences


def test_ict_fit_refuses_what_it_cannot_fit(tmp_path):
    from retrieval_kd.data import load_collection

    folder = tmp_path / "one-sentence"
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": "fish pond water grow goldfish"}
                                          for i in range(3)])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q0", "text": "fish"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    collection = load_collection(str(folder))
    with pytest.raises(ConfigError, match="0 documents of more than one sentence"):
        fit_weights_ict(collection, [BM25Teacher(), Adversary()], sources=("bm25",))
    with pytest.raises(ConfigError, match="at least 2 members"):
        fit_weights_ict(collection, [BM25Teacher()], sources=("bm25",))
    # sentences that share no word with anything: no pool holds more than its source, nothing to fit on
    lonely = tmp_path / "lonely"
    write_jsonl(lonely / "corpus.jsonl", [{"_id": f"d{i}", "title": "",
                                           "text": f"a{i}x b{i}x c{i}x d{i}x. e{i}x f{i}x g{i}x h{i}x."} for i in range(4)])
    write_jsonl(lonely / "queries.jsonl", [{"_id": "q0", "text": "a0x"}])
    (lonely / "qrels").mkdir()
    (lonely / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    with pytest.raises(ConfigError, match="no ICT query's pool holds a document besides its source"):
        fit_weights_ict(load_collection(str(lonely)), [BM25Teacher(), Adversary()], sources=("bm25",))


def test_bi_encoder_scores_a_passage_the_corpus_lacks_from_its_text(tiny_beir, tiny_st_folder):
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.data import load_collection
    from retrieval_kd.teachers import BiEncoderTeacher

    collection = load_collection(str(tiny_beir))
    teacher = BiEncoderTeacher(str(tiny_st_folder), max_seq_length=32)
    teacher.prepare(collection)  # corpus embeddings from the cache
    outside = "goldfish grow in big ponds"
    scores = teacher.score("goldfish pond", ["d1", "d1\x00ict-0", "d4"], ["(ignored: cached)", outside, "(ignored)"])
    st = SentenceTransformer(str(tiny_st_folder))
    st.max_seq_length = 32
    q = st.encode(["goldfish pond"], normalize_embeddings=True)[0]
    d = st.encode(collection.corpus.texts(["d1", "d4"]) + [outside], normalize_embeddings=True)
    assert np.allclose(scores, [d[0] @ q, d[2] @ q, d[1] @ q], atol=1e-5)


def test_pipeline_fits_ict_weights_without_labels(label_free, tmp_path, caplog):  # noqa: F811
    """``teachers.fit_on: ict`` on a folder without a training split: the weights reach the stored ensemble, the
    summary says on what they were fitted, and the fit is part of the teach fingerprint."""
    from retrieval_kd.pipeline import Pipeline, load_pipeline_config
    from retrieval_kd.teachers import ScoreStore, combine_runs

    values = yaml.safe_load(label_free.read_text())
    teachers = {**values["teachers"], "fit_weights": True, "fit_on": "ict", "fit_queries": 10, "fit_step": 0.25}
    config = _load_with(label_free, tmp_path, teachers=teachers)
    Pipeline(config).run(until="teach")
    teach = json.loads((config.work_dir / "stages" / "teach.json").read_text())["summary"]
    assert teach["fitted_on"].startswith("testonly: 10 sentences cut out of their documents (ICT")
    # the stored weights are the fit's own: the same call made here gives them
    from retrieval_kd.data import load_collection
    from retrieval_kd.pipeline.config import student_config
    from retrieval_kd.pipeline.stages import teacher_member

    members = [teacher_member(spec, config.teachers.encoding) for spec in config.teachers.members]
    direct = fit_weights_ict(load_collection(config.dataset), members, 10, seed=config.queries.seed,
                             top_k=config.candidates.top_k, sources=tuple(config.candidates.sources), step=0.25)
    assert teach["weights"] == pytest.approx(direct.weights) and teach["fitted_ndcg@10"] == pytest.approx(direct.ndcg)
    # the bi-encoder member is the dense student's start: the fit compares the teacher with it, query by query
    gain, p = direct.gain_over(1)
    check = teach["teacher_vs_start"]
    assert check["start"] == student_config(config, "dense").model == members[1].model_name
    assert (check["gain"], check["p"]) == (pytest.approx(gain, abs=1e-4), pytest.approx(p, abs=1e-4))
    assert check["start_ndcg@10"] == pytest.approx(direct.members_ndcg[1], abs=1e-4)
    assert check["clear"] == (gain > 0 and p < 0.05)
    # a teacher no better than the start on these queries: flagged, in the log and the summary
    from retrieval_kd.pipeline.stages import _teacher_vs_start
    from retrieval_kd.teachers.ict_weights import IctFit

    tie = IctFit([0.5, 0.5], 0.6, 3, [0.5, 0.6], {0: [0.5, 0.5, 0.5], 1: [1.0, 0.3, 0.5], "ensemble": [0.9, 0.4, 0.5]})
    with caplog.at_level("WARNING", logger="retrieval_kd.pipeline.stages"):
        flagged = _teacher_vs_start(config, members, tie)
    assert flagged["gain"] == 0.0 and flagged["p"] == pytest.approx(1.0) and not flagged["clear"]
    assert "not clearly better than the dense student's start" in caplog.text
    assert _teacher_vs_start(config, members[:1], tie) is None  # the start is no member: nothing to compare with
    # a paired t-test by hand: differences .4 .2 .3, mean .3, sd .1, t = .3 / (.1 / sqrt 3), 2 degrees of freedom,
    # whose two-sided p is 1 - t / sqrt(2 + t^2)
    known = IctFit([1.0, 0.0], 0.8, 3, [0.8, 0.5], {0: [0.9, 0.8, 0.7], 1: [0.5, 0.6, 0.4], "ensemble": [0.9, 0.8, 0.7]})
    t = 0.3 / (0.1 / np.sqrt(3))
    assert known.gain_over(1) == (pytest.approx(0.3), pytest.approx(1 - t / np.sqrt(2 + t * t)))
    from retrieval_kd.pipeline.report import write_report

    report = write_report(config.work_dir, config).read_text()
    line = (f"- teacher against the dense student's start ({check['start']}) on those 10 ICT queries: nDCG@10 "
            f"{check['teacher_ndcg@10']:.4f} against {check['start_ndcg@10']:.4f}")
    assert line in report
    # the student's start changed since the teach stage ran (its fingerprint does not hold it): no stale line
    moved = load_pipeline_config(config.source, {"students.dense.set": {"model": str(tmp_path / "other")}})
    assert "teacher against the dense student's start" not in write_report(config.work_dir, moved).read_text()
    with ScoreStore(config.work_dir / "scores") as store:
        made = list(store.done_queries(teach["ensemble"]))
        runs = [store.get(fp, qids=made) for fp in teach["fingerprints"]]
        ensemble = store.get(teach["ensemble"], qids=made)
    expected = combine_runs(runs, teach["weights"], "minmax")
    assert ensemble[made[0]] == pytest.approx(expected[made[0]])
    equal = Pipeline(load_pipeline_config(label_free))
    fitted = Pipeline(config)
    assert fitted.fingerprint("teach") != equal.fingerprint("teach")
    on_sources = Pipeline(_load_with(label_free, tmp_path, teachers={**teachers, "fit_on": "sources"}))
    assert fitted.fingerprint("teach") != on_sources.fingerprint("teach")  # what it is fitted on counts
    assert fitted.stage("teach").params["teachers"]["fit_queries"] == 10
    fewer = Pipeline(_load_with(label_free, tmp_path, teachers={**teachers, "fit_queries": 5}))
    assert fewer.fingerprint("teach") != fitted.fingerprint("teach")
    with pytest.raises(ValueError, match="teachers.fit_queries must be a number >= 2, got 1"):
        _load_with(label_free, tmp_path, teachers={**teachers, "fit_queries": 1})


def test_same_model_compares_ids_and_folders(tmp_path):
    from retrieval_kd.models.resolve import same_model

    (tmp_path / "m").mkdir()
    assert same_model("org/model", "org/model") and not same_model("org/model", "org/other")
    assert same_model(tmp_path / "m", f"{tmp_path}/./m/") and not same_model(tmp_path / "m", tmp_path)
    assert not same_model("org/model", tmp_path / "m")


def test_weak_teacher_keep_start_saves_the_start_untrained(label_free, tmp_path, monkeypatch):  # noqa: F811
    """``students.dense.weak_teacher: keep-start``: when the label-free check does not find the teacher clearly better
    than the start, the student is the start, weight for weight, indexed and reported as such; when it does, the
    student trains as before. The setting is part of the train fingerprint and is refused where it cannot act."""
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.pipeline import Pipeline
    from retrieval_kd.pipeline import stages as st
    from retrieval_kd.pipeline.config import student_config
    from retrieval_kd.pipeline.report import write_report

    values = yaml.safe_load(label_free.read_text())
    teachers = {**values["teachers"], "fit_weights": True, "fit_on": "ict", "fit_queries": 10, "fit_step": 0.5}
    dense = {**values["students"]["dense"], "weak_teacher": "keep-start"}
    config = _load_with(label_free, tmp_path, teachers=teachers, students={**values["students"], "dense": dense})
    weak = {"start": student_config(config, "dense").model, "teacher_ndcg@10": 0.5, "start_ndcg@10": 0.5,
            "gain": 0.0, "p": 1.0, "queries": 10, "clear": False}
    monkeypatch.setattr(st, "_teacher_vs_start", lambda cfg, members, fit: weak)
    Pipeline(config).run()
    student = config.work_dir / "models" / "dense"
    summary = json.loads((config.work_dir / "stages" / "train-dense.json").read_text())["summary"]
    assert summary["steps"] == 0 and "paired p 1" in summary["kept_start"]
    start = SentenceTransformer(weak["start"], device="cpu").state_dict()
    kept = SentenceTransformer(str(student), device="cpu")
    assert kept.max_seq_length == student_config(config, "dense").max_seq_length
    assert all(np.array_equal(v.numpy(), start[k].numpy()) for k, v in kept.state_dict().items())
    assert (config.work_dir / "runs" / "lf-test" / "dense-flat.run").is_file()
    report = write_report(config.work_dir, config).read_text()
    assert "not trained: its start" in report and "(nDCG@10 0.5000 against 0.5000, +0.0000, paired p 1;" in report
    assert "The distilled dense rows are its start, kept untrained" in report
    assert json.loads((config.work_dir / "models" / "dense-log.json").read_text()) == []
    # a check made against another start than the present one: trained, not kept
    monkeypatch.setattr(st, "_teacher_vs_start", lambda cfg, members, fit: {**weak, "start": str(tmp_path)})
    other = _load_with(label_free, tmp_path, name="lf-other", teachers=teachers,
                       students={**values["students"], "dense": dense})
    Pipeline(other).run(until="train-dense")
    assert json.loads((other.work_dir / "stages" / "train-dense.json").read_text())["summary"]["steps"] > 0
    # a clear check: the same settings train the student
    clear = {**weak, "teacher_ndcg@10": 0.9, "gain": 0.4, "p": 0.001, "clear": True}
    monkeypatch.setattr(st, "_teacher_vs_start", lambda cfg, members, fit: clear)
    again = _load_with(label_free, tmp_path, name="lf-clear", teachers=teachers,
                       students={**values["students"], "dense": dense})
    Pipeline(again).run(until="train-dense")
    assert json.loads((again.work_dir / "stages" / "train-dense.json").read_text())["summary"]["steps"] > 0
    plain = _load_with(label_free, tmp_path, teachers=teachers)
    assert Pipeline(plain).fingerprint("train-dense") != Pipeline(config).fingerprint("train-dense")
    assert "weak_teacher" not in Pipeline(plain).stage("train-dense").params  # the default: older fingerprints hold
    for students, other, match in (
            ({**values["students"], "dense": {**dense, "weak_teacher": "skip"}}, {}, "must be one of train, keep-start"),
            ({**values["students"], "sparse": {**values["students"]["sparse"], "weak_teacher": "keep-start"}}, {},
             "set it under students.dense"),
            ({**values["students"], "dense": dense}, {"teachers": values["teachers"]}, "needs the label-free check"),
            ({**values["students"], "dense": dense}, {"teachers": {**teachers, "members": ["bm25", "bm25"]}},
             "which no bi-encoder of teachers.members is")):
        with pytest.raises(ConfigError, match=match):
            _load_with(label_free, tmp_path, **{"teachers": teachers, **other, "students": students})
