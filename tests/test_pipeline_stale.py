"""The pipeline never keeps stale teacher scores: changing the candidates' depth or the rerank depth rescores."""

from __future__ import annotations

from retrieval_kd.data import read_run
from retrieval_kd.pipeline import Pipeline, load_pipeline_config
from retrieval_kd.teachers import ScoreStore

from .test_pipeline import tiny_pipeline  # noqa: F401 - the fixture


def test_teach_follows_changed_top_k_and_rerank_depth(tiny_pipeline):  # noqa: F811
    first = load_pipeline_config(tiny_pipeline)
    Pipeline(first).run(until="teach")
    runs = first.work_dir / "runs" / "tiny-test"
    assert max(len(d) for d in read_run(runs / "ensemble.run").values()) == 20
    changed = load_pipeline_config(tiny_pipeline, {"teachers.rerank_depth": 5, "candidates.top_k": 8})
    pipe = Pipeline(changed)
    assert pipe.status("teach") == "stale"
    pipe.run(until="teach")
    for name in ("ensemble.run", *[p.name for p in runs.glob("teacher*.run")]):
        assert max(len(d) for d in read_run(runs / name).values()) == 5, name
    cands = read_run(first.work_dir / "candidates" / "train.run")
    with ScoreStore(first.work_dir / "scores") as store:
        for fp in store.teachers():
            stored = store.get(fp)
            assert {q: set(d) for q, d in stored.items()} == {q: set(d) for q, d in cands.items()}, fp
