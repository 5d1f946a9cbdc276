"""`rkd pipeline` without labels: the `queries` section (validation, fingerprints), `--dataset`, and a tiny run on a
BEIR folder that has only a test split, its training queries cropped from the corpus."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import yaml

from retrieval_kd.errors import ConfigError
from retrieval_kd.pipeline import Pipeline, load_pipeline_config
from retrieval_kd.pipeline import stages as st
from retrieval_kd.queries import QueryGenerator, read_query_set, sidecar_path

from .conftest import ROOT, WORDS, write_jsonl
from .test_pipeline import _rkd, tiny_pipeline  # noqa: F401 - the fixture

LABEL_FREE = {"source": "crop", "method": "sentence", "per_document": 2, "max_queries": 40,
              "filters": {"min_words": 2, "round_trip": "bm25", "round_trip_k": 5}, "positives": "teacher"}


def _test_only_folder(folder, n_docs: int = 30, seed: int = 0):
    """A BEIR folder of ``n_docs`` three-sentence documents, 10 test queries (three words of ``d<i>``, its one
    positive) and nothing else: no training split."""
    rng = np.random.default_rng(seed)
    docs = [{"_id": f"d{i}", "title": "",
             "text": " ".join(" ".join(rng.choice(WORDS, 4)) + "." for _ in range(3))} for i in range(n_docs)]
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": " ".join(rng.choice(WORDS, 3))}
                                           for i in range(10)])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    return folder


@pytest.fixture
def label_free(tiny_pipeline, tmp_path):  # noqa: F811
    """The tiny pipeline (tiny models) made label-free: on a test-only folder, crop queries, equal weights."""
    values = yaml.safe_load(tiny_pipeline.read_text())
    data = str(_test_only_folder(tmp_path / "testonly"))
    values.update(name="lf", dataset=data, eval=[{"dataset": data, "split": "test", "name": "lf-test"}],
                  queries=LABEL_FREE, teachers={**values["teachers"], "fit_weights": False},
                  index={"types": ["flat"], "nlist": 4, "nprobe": 2, "speed_nprobe": [1]})
    path = tmp_path / "lf.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _load_with(path, tmp_path, **changes):
    values = yaml.safe_load(path.read_text())
    values.update(changes)
    bad = tmp_path / "changed.yaml"
    bad.write_text(yaml.safe_dump(values))
    return load_pipeline_config(bad)


def test_bad_queries_sections_name_the_key(label_free, tmp_path):
    values = yaml.safe_load(label_free.read_text())
    cases = [
        ({"source": "web"}, "queries.source must be one of split, crop, generate, import"),
        ({"source": "crop", "bogus": 1}, "unknown key 'queries.bogus'"),
        ({"source": "crop", "model": "gpt2"}, "queries.model is a key of queries.source generate, not of crop"),
        ({"source": "crop", "method": "paragraph"}, "queries.method must be one of title, sentence, span"),
        ({"source": "crop", "remove_sentence": 1.5}, "queries.remove_sentence"),
        ({"source": "crop", "max_queries": 0}, "queries.max_queries must be >= 1"),
        ({"source": "crop", "mix_labeled": "no"}, "queries.mix_labeled must be true or false"),
        ({"source": "crop", "positives": "qrels"}, "queries.positives qrels: made-up queries have no judgements"),
        ({"source": "crop", "positives": "teacher-top0"}, "queries.positives: positive 'teacher-top0'"),
        ({"source": "crop", "filters": {"dedup": True}}, "unknown key 'queries.filters.dedup'"),
        ({"source": "crop", "filters": {"min_words": 5, "max_words": 2}}, "queries.filters: query length limits"),
        ({"source": "crop", "filters": {"round_trip_k": 0}}, "queries.filters: round_trip_k=0"),
        ({"source": "generate"}, "queries.model: source generate needs a model"),
        ({"source": "generate", "model": "gpt2", "top_p": 2.0}, "queries: sampling needs"),
        ({"source": "generate", "model": "gpt2", "dtype": "fp8"}, "queries.dtype must be one of auto, float32"),
        ({"source": "generate", "model": "gpt2", "examples": str(tmp_path / "none.jsonl")}, "queries.examples:"),
        ({"source": "import"}, "queries.path: source import needs the file"),
        ({"source": "import", "path": str(tmp_path / "missing.jsonl")}, "queries.path:"),
        ({"source": "import", "path": str(label_free), "format": "csv"}, "queries.format must be one of"),
        ({"source": "import", "path": str(label_free)}, "queries.path: " + str(label_free) + ": cannot tell its format"),
        ({"source": "import", "path": str(label_free), "format": "gpl"}, "reads a GPL data folder, not a file"),
        ({"source": "import", "path": str(tmp_path), "format": "tsv"}, "format tsv reads a file, not a folder"),
        ({"source": "crop", "seed": -1}, "queries.seed must be a non-negative integer, got -1"),
        # the split's own queries take none of the made-up queries' keys (and the folder has no train split)
        ({"source": "split", "method": "sentence"}, "queries.method is for queries made from the corpus"),
        ({"source": "split"}, "needed by queries.source split"),
        ({**LABEL_FREE, "mix_labeled": True}, "needed by queries.mix_labeled"),
    ]
    for queries, message in cases:
        with pytest.raises(ConfigError) as err:
            _load_with(label_free, tmp_path, queries=queries)
        assert message in str(err.value), (queries, str(err.value))
    # fitting the ensemble's weights on the split needs its labels: one line saying so, before any work
    with pytest.raises(ConfigError, match="fitted on the split's labels; set teachers.fit_on: ict"):
        _load_with(label_free, tmp_path, teachers={**values["teachers"], "fit_weights": True})
    with pytest.raises(ConfigError, match="teachers.fit_on must be one of split, sources, ict, got 'qrels'"):
        _load_with(label_free, tmp_path, teachers={**values["teachers"], "fit_on": "qrels"})
    # without a test split, --dataset has nothing to evaluate on
    no_test = tmp_path / "no-test"
    write_jsonl(no_test / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "fish pond"}])
    write_jsonl(no_test / "queries.jsonl", [{"_id": "q1", "text": "fish"}])
    (no_test / "qrels").mkdir()
    (no_test / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(ConfigError, match="no test split to evaluate on"):
        load_pipeline_config(label_free, dataset=str(no_test))


def test_fingerprints_follow_the_queries_section(label_free, tiny_pipeline):  # noqa: F811
    base = Pipeline(load_pipeline_config(label_free))
    assert [s.name for s in base.stages][:3] == ["queries", "mine", "teach"]
    for change in ({"queries.max_queries": 30}, {"queries.filters.round_trip_k": 3}):
        other = Pipeline(load_pipeline_config(label_free, change))
        same = [s.name for s in base.stages if base.fingerprint(s.name) == other.fingerprint(s.name)]
        assert same == [], (change, same)  # queries -> mine -> teach -> train -> ... all run again
    # positives are read by training alone (through the students' configs): the queries stay, training re-runs
    other = Pipeline(load_pipeline_config(label_free, {"queries.positives": "both"}))
    same = [s.name for s in base.stages if base.fingerprint(s.name) == other.fingerprint(s.name)]
    assert same == ["queries", "mine", "teach"], same
    # the generator's dtype means nothing to crops: its default's change (float32 -> auto) runs no stage again
    import dataclasses

    cfg = load_pipeline_config(label_free)
    assert cfg.queries.dtype == "auto"
    old = Pipeline(dataclasses.replace(cfg, queries=dataclasses.replace(cfg.queries, dtype="float32")))
    assert all(base.fingerprint(s.name) == old.fingerprint(s.name) for s in base.stages)
    # the section reaches every student's config
    dense = base.stage("train-dense").params["config"]["data"]
    assert dense["queries"].endswith("queries/queries.jsonl") and dense["positives"] == "teacher"
    # labelled configs keep their fingerprints' shape: no queries stage, the section absent from mine's
    labelled = Pipeline(load_pipeline_config(tiny_pipeline))
    assert labelled.stages[0].name == "mine" and "queries" not in labelled.stage("mine").params


def test_dataset_flag_runs_the_config_on_another_collection(label_free, tiny_pipeline, tmp_path):  # noqa: F811
    other = _test_only_folder(tmp_path / "My Collection!", seed=1)
    out = _rkd("pipeline", str(label_free), "--dataset", str(other), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    plan = {row["stage"]: row for row in json.loads(out.stdout)}
    digest = hashlib.sha256(str(other.resolve()).encode()).hexdigest()[:6]  # folders of one name stay apart
    work = tmp_path / "experiments" / f"lf-My-Collection-{digest}"
    assert plan["queries"]["outputs"][0] == str(work / "queries" / "queries.jsonl")
    assert str(work / "runs" / "My-Collection-test" / "bm25.run") in plan["mine"]["outputs"]
    config = load_pipeline_config(label_free, dataset=str(other))
    assert [(e.dataset, e.split) for e in config.eval] == [(str(other), "test")] and config.dataset == str(other)
    # a labelled config on a collection without a training split: one line, no traceback
    bad = _rkd("pipeline", str(tiny_pipeline), "--dataset", str(other), "--dry-run")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "has no split 'train'" in bad.stderr and "queries.source split" in bad.stderr


def test_dataset_flag_keeps_same_named_folders_apart_and_says_what_it_replaces(label_free, tmp_path, caplog):
    one = _test_only_folder(tmp_path / "a" / "scifact")
    two = _test_only_folder(tmp_path / "b" / "scifact", seed=1)
    names = {load_pipeline_config(label_free, dataset=str(ref)).name for ref in (one, two, "scifact")}
    assert len(names) == 3 and "lf-scifact" in names, names  # a registered name stays plain
    assert all(n == "lf-scifact" or (n.startswith("lf-scifact-") and len(n) == len("lf-scifact-") + 6)
               for n in names), names
    # the same folder, however it is written, is the same experiment
    assert load_pipeline_config(label_free, dataset=str(one) + "/").name == load_pipeline_config(
        label_free, dataset=str(tmp_path / "a" / ".." / "a" / "scifact")).name
    with caplog.at_level(logging.WARNING, logger="retrieval_kd.pipeline.config"):
        config = load_pipeline_config(label_free, {"eval": str(two)}, dataset=str(one))
    assert [e.dataset for e in config.eval] == [str(one)]
    assert any("--dataset" in r.getMessage() and f"eval={str(two)!r}" in r.getMessage() for r in caplog.records), \
        caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retrieval_kd.pipeline.config"):
        load_pipeline_config(label_free, dataset=str(one))  # the file's own eval: replaced as documented, quietly
    assert not caplog.records, caplog.text


def test_keys_the_loader_sets_are_unknown_in_a_file(label_free, tmp_path):
    for key in ("on_dataset", "source"):
        with pytest.raises(ConfigError, match=f"unknown key '{key}'") as err:
            _load_with(label_free, tmp_path, **{key: "x"})
        assert key not in str(err.value).split("(known: ")[1], str(err.value)


def test_label_free_pipeline_end_to_end(label_free):
    config = load_pipeline_config(label_free, {"students.dense.set.start_weight": 0.5})   # WiSE-FT on the dense one
    done = Pipeline(config).run()
    assert list(done) == ["queries", "mine", "teach", "train-dense", "train-sparse", "index", "retrieve",
                          "evaluate", "report"]
    work = config.work_dir
    queries = work / "queries" / "queries.jsonl"
    assert queries.is_file() and sidecar_path(queries).is_file()
    made = read_query_set(queries)
    assert made.method == "crop-sentence" and 0 < len(made) <= 40
    assert made.counts["dropped"]["max_queries"] == made.counts["candidates"] - len(made) - sum(
        v for k, v in made.counts["dropped"].items() if k != "max_queries")
    assert {f["filter"] for f in made.filters} >= {"too_short", "duplicate", "round_trip", "max_queries"}
    teach = json.loads((work / "stages" / "teach.json").read_text())["summary"]
    assert teach["weights"] is None and teach["fitted_on"] is None          # equal weights: no labels
    for kind in ("dense", "sparse"):
        summary = json.loads((work / "stages" / f"train-{kind}.json").read_text())["summary"]
        q = summary["queries"]
        assert q["file"] == str(queries) and q["method"] == "crop-sentence" and q["kept"] == len(made)
        assert q["source"] == "crop" and q["positives"] == "teacher" and summary["train_seconds"] > 0
    report = (work / "report.md").read_text()
    assert f"{len(made)} made-up queries, source crop (crop-sentence)" in report and str(queries) in report
    assert "equal weights" in report and "trained in" in report
    assert report.count("saved as 0.5 x its starting model + 0.5 x the trained one") == 1   # the dense one only
    assert json.loads((work / "models" / "dense" / "rkd_training.json").read_text())["config"]["start_weight"] == 0.5
    evaluated = json.loads((work / "metrics.json").read_text())["lf-test"]
    assert evaluated["ignore_identical_ids"] is False  # decided from the folder: its query ids are no document's
    metrics = evaluated["runs"]
    assert {"bm25", "ensemble", "dense-flat", "sparse-inference-free"} <= set(metrics)
    # Distill-VQ would train on the made-up queries: no training split is read
    assert st._index_train_queries(st.Context(config)) == made.queries
    assert Pipeline(config).plan()[0]["status"] == "done"


def test_shipped_label_free_config_dry_runs_on_cranfield(mirror, tmp_path):
    out = _rkd("pipeline", str(ROOT / "configs" / "pipeline" / "label-free.yaml"), "--dry-run", "--json", "--set",
               f"output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout)
    assert [r["stage"] for r in plan] == ["queries", "mine", "teach", "train-dense", "train-sparse", "index",
                                          "retrieve", "evaluate", "report"]
    assert all(r["status"] == "todo" for r in plan)


def _saved(causal_lm, folder):
    """The tiny causal LM saved as a model folder (what ``queries.model`` names)."""
    model, tokenizer = causal_lm
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_queries_stage_generates_resumably_and_imports(label_free, tiny_causal_lm, tmp_path, monkeypatch):
    """source generate (a tiny causal LM saved as a folder) and import: the stage's wiring; a changed cap filters
    the generated queries again without generating again."""
    folder = _saved(tiny_causal_lm, tmp_path / "tiny-llama")
    gen = {"source": "generate", "model": str(folder), "per_document": 2, "max_new_tokens": 6, "batch_size": 16,
           "device": "cpu", "max_documents": 8, "filters": {"min_words": 1}}
    config = load_pipeline_config(label_free, {"queries": gen})
    Pipeline(config).run(until="queries")
    made = read_query_set(config.work_dir / "queries" / "queries.jsonl")
    assert made.method == "generate" and made.counts["documents"] == 8 and len(made) > 0
    assert (config.work_dir / "queries" / "generated.jsonl").is_file()
    monkeypatch.setattr(QueryGenerator, "generate", lambda *a, **k: pytest.fail("generated again"))
    capped = load_pipeline_config(label_free, {"queries": {**gen, "max_queries": 1}})
    assert Pipeline(capped).status("queries") == "stale"
    Pipeline(capped).run(until="queries")
    assert len(read_query_set(config.work_dir / "queries" / "queries.jsonl")) == 1
    # import: a TSV of (qid, query, source document)
    tsv = tmp_path / "made.tsv"
    tsv.write_text("x1\tfish pond water\td0\nx2\tsolar power energy\td1\n")
    imported = load_pipeline_config(label_free, {"queries": {"source": "import", "path": str(tsv), "format": "tsv",
                                                             "positives": "source"}})
    Pipeline(imported).run(until="queries")
    made = read_query_set(imported.work_dir / "queries" / "queries.jsonl")
    assert made.method == "import" and made.sources == {"x1": "d0", "x2": "d1"}


def test_queries_are_made_from_a_sample_the_budget_sizes(label_free):
    """Without max_documents, crops come from 4 documents per query of max_queries (all when the corpus is smaller),
    so a large corpus is not cropped whole to keep a few thousand queries."""
    counts, recorded = {}, {}
    for name, changes in [("budget", {"max_queries": 3}), ("set", {"max_queries": 3, "max_documents": 5}),
                          ("small", {"max_queries": 10}), ("none", {"max_queries": None})]:
        config = load_pipeline_config(label_free, {"name": name, "queries": {**LABEL_FREE, **changes}})
        Pipeline(config).run(until="queries")
        made = read_query_set(config.work_dir / "queries" / "queries.jsonl")
        counts[name], recorded[name] = made.counts["documents"], made.provenance["settings"]["max_documents"]
    assert counts == {"budget": 12, "set": 5, "small": 30, "none": 30}  # the folder holds 30 documents
    # a corpus the budget's sample would cover is read whole, and recorded as before (no sample)
    assert recorded == {"budget": 12, "set": 5, "small": None, "none": None}


def test_a_new_cap_on_a_small_corpus_does_not_generate_again(label_free, tiny_causal_lm, tmp_path, monkeypatch):
    folder = _saved(tiny_causal_lm, tmp_path / "tiny-llama")
    gen = {"source": "generate", "model": str(folder), "per_document": 1, "max_new_tokens": 4, "batch_size": 32,
           "device": "cpu", "max_queries": 10, "filters": {"min_words": 1}}
    Pipeline(load_pipeline_config(label_free, {"queries": gen})).run(until="queries")
    monkeypatch.setattr(QueryGenerator, "generate", lambda *a, **k: pytest.fail("generated again"))
    capped = load_pipeline_config(label_free, {"queries": {**gen, "max_queries": 9}})  # 36 or 40 documents: all 30
    Pipeline(capped).run(until="queries")
    assert len(read_query_set(capped.work_dir / "queries" / "queries.jsonl")) <= 9


def test_fitting_the_weights_beside_made_up_queries_mines_the_split_again(tiny_pipeline):  # noqa: F811
    """On a collection with a training split, ``fit_weights`` decides whether its judged queries are mined beside
    the made-up ones: flipping it makes ``mine`` stale, not only ``teach``."""
    crop = {"queries.source": "crop", "queries.method": "span"}
    fit = Pipeline(load_pipeline_config(tiny_pipeline, {**crop, "teachers.fit_weights": True}))
    equal = Pipeline(load_pipeline_config(tiny_pipeline, {**crop, "teachers.fit_weights": False}))
    assert fit.stage("mine").params["labeled"] is True and equal.stage("mine").params["labeled"] is False
    assert fit.fingerprint("queries") == equal.fingerprint("queries")
    assert fit.fingerprint("mine") != equal.fingerprint("mine")


def test_made_up_queries_beside_a_training_split_fit_the_weights_on_its_labels(tiny_pipeline):  # noqa: F811
    """A collection with a training split: crop queries train, the split's judged queries are mined and scored
    too, and the ensemble's weights are fitted on them only (its qrels); made-up ids never meet the split's."""
    config = load_pipeline_config(tiny_pipeline, {"queries": {"source": "crop", "method": "span",
                                                              "max_documents": 40, "mix_labeled": True}})
    Pipeline(config).run(until="teach")
    stages = config.work_dir / "stages"
    mine = json.loads((stages / "mine.json").read_text())["summary"]
    made = read_query_set(config.work_dir / "queries" / "queries.jsonl")
    assert made.counts["documents"] == 40 and mine["made_up_queries"] == len(made) > 0
    assert mine["labeled_queries"] == 30 and mine["train_queries"] == len(made) + 30
    teach = json.loads((stages / "teach.json").read_text())["summary"]
    assert teach["fitted_on"].endswith("/train") and len(teach["weights"]) == 2
    dense = Pipeline(config).stage("train-dense").params["config"]["data"]
    assert dense["mix_labeled"] is True and dense["positives"] == "source"


def test_weights_fitted_on_the_made_up_queries_sources_read_no_label(label_free, tiny_pipeline, tmp_path):  # noqa: F811
    """``teachers.fit_on: sources`` fits the ensemble on each crop's source document as its one relevant document,
    on a folder without a training split. A crop is a substring of its source, so BM25 finds the source and the
    tiny random bi-encoder does not: the fit gives BM25 the larger weight (the drift docs/label-free.md warns
    about), and the weights reach the stored ensemble scores."""
    from retrieval_kd.teachers import ScoreStore, combine_runs

    values = yaml.safe_load(label_free.read_text())
    teachers = {**values["teachers"], "fit_weights": True, "fit_on": "sources", "fit_step": 0.25}
    config = _load_with(label_free, tmp_path, teachers=teachers)
    Pipeline(config).run(until="teach")
    teach = json.loads((config.work_dir / "stages" / "teach.json").read_text())["summary"]
    made = read_query_set(config.work_dir / "queries" / "queries.jsonl")
    assert teach["fitted_on"] == f"testonly: the sources of {len(made)} made-up queries"
    bm25_weight, dense_weight = teach["weights"]
    assert bm25_weight > dense_weight and bm25_weight + dense_weight == pytest.approx(1.0)
    with ScoreStore(config.work_dir / "scores") as store:
        runs = [store.get(fp, qids=list(made.queries)) for fp in teach["fingerprints"]]
        ensemble = store.get(teach["ensemble"], qids=list(made.queries))
    expected = combine_runs(runs, teach["weights"], "minmax")
    q = next(iter(made.queries))
    assert ensemble[q] == pytest.approx(expected[q])
    # the fit is in the teach fingerprint; the default (fit_on: split) leaves older fingerprints as they were
    equal = Pipeline(load_pipeline_config(label_free))
    assert Pipeline(config).fingerprint("teach") != equal.fingerprint("teach")
    assert "fit_on" not in equal.stage("teach").params["teachers"]
    unfitted = Pipeline(load_pipeline_config(label_free, {"teachers.fit_on": "sources"}))  # fit_weights false: moot
    assert unfitted.fingerprint("teach") == equal.fingerprint("teach")
    # sources need made-up queries: with the split's own queries the key says so
    with pytest.raises(ConfigError, match="fit_on: sources needs made-up training queries"):
        load_pipeline_config(tiny_pipeline, {"teachers.fit_on": "sources"})
