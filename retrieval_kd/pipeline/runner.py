"""Run the stages of a pipeline config in order, skipping each one whose outputs exist with the same fingerprint.

A stage's fingerprint hashes its own part of the config and the fingerprints of the stages it reads from, so
changing a teacher re-runs teaching and everything downstream, and changing only the report re-runs only the
report. When a stage finishes, its marker ``stages/<name>.json`` (fingerprint, seconds, summary) is written
atomically: a run killed mid-stage has no marker for that stage and redoes it on the next start, while the
stages themselves resume inside (the score store skips scored queries, training resumes from its newest
checkpoint, corpus encodings resume from their last finished chunk). Like ``make`` or DVC, but the only
dependencies are the ones this pipeline has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_kd.pipeline import stages as st
from retrieval_kd.pipeline.config import PipelineConfig, config_path, student_config

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "Stage"]


@dataclass
class Stage:
    """One step: what it reads (upstream stages and the config it depends on), what it writes, how it runs."""

    name: str
    run: Callable[[st.Context], dict]
    params: dict
    upstream: list[str]
    outputs: list[Path]
    inputs: list[str] = field(default_factory=list)
    encoding: dict = field(default_factory=dict)  # what it encodes with (stages.encoding_record)


#: student config fields added after train fingerprints were first written, with their defaults: left out of the
#: fingerprint at the default, so those fingerprints still hold (a field added later goes here; section None: a
#: top-level field)
_LATER_STUDENT_FIELDS = {None: {"start_weight": 0.0}, "loss": {"label_weight": 0.0}}


def _without_defaults(values: dict, defaults: dict) -> dict:
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def _student_params(sc) -> dict:
    """A student config as its train stage's fingerprint (see ``_LATER_STUDENT_FIELDS``)."""
    params = sc.to_dict()
    for section, defaults in _LATER_STUDENT_FIELDS.items():
        if section is None:
            params = _without_defaults(params, defaults)
        elif section in params:
            params[section] = _without_defaults(params[section], defaults)
    return params


def _queries_inputs(cfg: PipelineConfig) -> list[str]:
    q = cfg.queries
    if q.source == "generate":
        return [f"model {q.model}", *([str(config_path(cfg, q.examples))] if q.examples else [])]
    if q.source == "import":
        return [str(config_path(cfg, q.path))]
    return []


def _file_identities(cfg: PipelineConfig) -> dict:
    """What the queries stage reads besides the corpus, by content (examples) or size and time (an imported file,
    possibly large; a GPL folder by its files), so replacing the file re-runs the stage."""
    from retrieval_kd.utils.fs import sha256_file

    q, out = cfg.queries, {}
    if q.source == "generate" and q.examples and config_path(cfg, q.examples).is_file():
        out["examples"] = sha256_file(config_path(cfg, q.examples))
    if q.source == "import" and q.path:
        path = config_path(cfg, q.path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out["path"] = [[str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size,
                        p.stat().st_mtime_ns] for p in files if p.exists()]
    return out


def _queries_params(cfg: PipelineConfig) -> dict:
    """The ``queries`` section as the queries stage reads it: ``positives`` and ``mix_labeled`` left out, they
    reach training through the students' configs (and mining through :func:`stages.labeled_too`). A source other
    than ``generate`` ignores ``dtype``; it keeps its earlier default, ``float32``, so that the default's change to
    ``auto`` leaves the fingerprints of crop, import and split runs (and their finished stages) as they were."""
    params = {k: v for k, v in dataclasses.asdict(cfg.queries).items() if k not in ("positives", "mix_labeled")}
    if cfg.queries.source != "generate":
        params["dtype"] = "float32"
    return params


class Pipeline:
    """The stages of ``config``, their fingerprints and their state on disk.

    Example:
        >>> pipe = Pipeline(load_pipeline_config("configs/pipeline/scifact-demo.yaml"))
        >>> for row in pipe.plan():
        ...     print(row["stage"], row["status"])
        >>> pipe.run()
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.work = config.work_dir
        self.stages = self._build()
        self._fingerprints: dict[str, str] = {}

    # -- definition --------------------------------------------------------------------------------------------
    def _build(self) -> list[Stage]:
        cfg, work = self.config, self.config.work_dir
        evals = [{"dataset": e.dataset, "split": e.split, "name": e.name, "corpus": e.corpus} for e in cfg.eval]
        q = cfg.queries
        stages, mine_params, first = [], {"dataset": cfg.dataset, "split": cfg.train_split,
                                          "candidates": vars(cfg.candidates), "eval": evals,
                                          "top_k": cfg.retrieve_top_k}, []
        train_input = f"dataset {cfg.dataset} ({cfg.train_split})"
        if q.made_up:  # made-up training queries: a stage of their own, first; its section in every fingerprint
            section = _queries_params(cfg)
            stages.append(Stage("queries", st.make_queries, {"dataset": cfg.dataset, "queries": section,
                                                            "files": _file_identities(cfg)},
                                [], st.queries_outputs(cfg), [f"dataset {cfg.dataset} (corpus)",
                                                              *_queries_inputs(cfg)]))
            # (absent for the split: older fingerprints hold); whether the split's judged queries join the mining
            mine_params.update(queries=section, labeled=st.labeled_too(cfg))
            first = ["queries"]
            train_input = str(st.queries_file(cfg)) + (f" + dataset {cfg.dataset} ({cfg.train_split})"
                                                        if st.labeled_too(cfg) else "")
        teach_params = {k: v for k, v in vars(cfg.teachers).items() if k not in ("encoding", "fit_on", "fit_queries")}
        if st.fits_weights(cfg) and cfg.teachers.fit_on != "split":  # only where it changes the fit: older hold
            teach_params["fit_on"] = cfg.teachers.fit_on
            if cfg.teachers.fit_on == "ict":
                teach_params.update(fit_queries=cfg.teachers.fit_queries, fit_seed=cfg.queries.seed)
        stages += [
            Stage("mine", st.mine, mine_params, first, st.mine_outputs(cfg),
                  [train_input, *[f"dataset {e['dataset']} ({e['split']})" for e in evals]]),
            Stage("teach", st.teach, {"teachers": teach_params},
                  ["mine"], st.teach_outputs(cfg),
                  [str(work / "candidates" / "train.run"), *cfg.teachers.members]),
        ]
        trained = []
        for kind, fn in (("dense", st.train_dense_stage), ("sparse", st.train_sparse_stage)):
            if getattr(cfg.students, kind) is None:
                continue
            sc, section = student_config(cfg, kind), getattr(cfg.students, kind)
            params = {"config": _student_params(sc)}
            if section.weak_teacher != "train":  # only where it is set: older fingerprints hold
                params["weak_teacher"] = section.weak_teacher
            stages.append(Stage(f"train-{kind}", fn, params, ["teach"],
                                [Path(sc.output_dir) / "rkd_training.json"],
                                [f"{getattr(cfg.students, kind).config}", str(work / "scores"), str(sc.model)]))
            trained.append(f"train-{kind}")
        stages += [
            Stage("index", st.build_indexes, {"index": {k: v for k, v in vars(cfg.index).items()
                                                       if k not in ("nprobe", "speed_nprobe", "threads")},
                                             "eval": evals}, [*first, *trained], st.index_outputs(cfg),
                  [str(work / "models" / k.split("-")[1]) for k in trained]),
            Stage("retrieve", st.retrieve, {"top_k": cfg.retrieve_top_k, "nprobe": cfg.index.nprobe,
                                           "speed_nprobe": cfg.index.speed_nprobe}, ["index"],
                  st.retrieve_outputs(cfg), [str(work / "indexes")]),
            Stage("evaluate", st.evaluate_runs, {"metrics": cfg.metrics}, ["mine", "teach", "retrieve"],
                  [work / "metrics.json"], [str(work / "runs")]),
            Stage("report", st.report, {"version": 1}, ["evaluate", *trained],
                  [work / "report.md"], [str(work / "metrics.json"), str(work / "speed")]),
        ]
        for stage in stages:  # the encoders' backend: in the fingerprint unless torch fp32 (older ones hold)
            stage.encoding, key = st.encoding_record(cfg, stage.name), st.encoding_fingerprint(cfg, stage.name)
            if key:
                stage.params = {**stage.params, "encoding": key}
        return stages

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this pipeline (stages: {', '.join(s.name for s in self.stages)})")

    def fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            stage = self.stage(name)
            payload = {"stage": name, "params": stage.params,
                       "upstream": {u: self.fingerprint(u) for u in stage.upstream}}
            text = json.dumps(payload, sort_keys=True, default=str)
            self._fingerprints[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprints[name]

    # -- state ---------------------------------------------------------------------------------------------------
    def marker_path(self, name: str) -> Path:
        return self.work / "stages" / f"{name}.json"

    def marker(self, name: str) -> dict | None:
        path = self.marker_path(name)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("%s: unreadable stage marker, the stage will run again", path)
            return None

    def status(self, name: str) -> str:
        """``done`` (outputs present, same fingerprint), ``stale`` (ran with another config) or ``todo``."""
        marker = self.marker(name)
        if marker is None:
            return "todo"
        if marker.get("fingerprint") != self.fingerprint(name):
            return "stale"
        missing = [p for p in self.stage(name).outputs if not Path(p).exists()]
        return "todo" if missing else "done"

    def plan(self) -> list[dict]:
        """One row per stage: status, fingerprint, inputs and outputs, and what it encodes with where it encodes
        (what ``--dry-run`` prints)."""
        return [{"stage": s.name, "status": self.status(s.name), "fingerprint": self.fingerprint(s.name),
                 "after": s.upstream, "inputs": s.inputs, "outputs": [str(p) for p in s.outputs],
                 **({"encoding": s.encoding} if s.encoding else {})} for s in self.stages]

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, force: Sequence[str] = (), until: str | None = None) -> dict:
        """Run every stage that is not done (and those in ``force``), in order; stop after ``until``.

        Returns ``{stage: "skipped" | seconds}``.
        """
        from retrieval_kd.data.formats import atomic_write

        for name in [*force, *([until] if until else [])]:
            self.stage(name)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1, default=str))
        ctx = st.Context(self.config)
        done: dict = {}
        for stage in self.stages:
            # a stage that ran (forced, new config, or missing outputs) makes every stage reading it run too
            upstream_ran = any(isinstance(done.get(u), float) for u in stage.upstream)
            if self.status(stage.name) == "done" and stage.name not in force and not upstream_ran:
                logger.info("stage %s: up to date (fingerprint %s), skipped", stage.name, self.fingerprint(stage.name))
                done[stage.name] = "skipped"
            else:
                logger.info("stage %s: running (fingerprint %s)", stage.name, self.fingerprint(stage.name))
                t0 = time.perf_counter()
                summary = stage.run(ctx)
                seconds = round(time.perf_counter() - t0, 1)
                marker = {"stage": stage.name, "fingerprint": self.fingerprint(stage.name), "seconds": seconds,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary,
                          "outputs": [str(p) for p in stage.outputs],
                          **({"encoding": stage.encoding} if stage.encoding else {})}
                path = self.marker_path(stage.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as fh:
                    json.dump(marker, fh, indent=1, default=str)
                logger.info("stage %s: done in %.1f s", stage.name, seconds)
                done[stage.name] = seconds
            if until and stage.name == until:
                break
        return done
