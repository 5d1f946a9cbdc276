"""``rkd pipeline``: run (or dry-run) a whole experiment from one YAML config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  rkd pipeline configs/pipeline/scifact-demo.yaml              # run, skipping stages already done
  rkd pipeline configs/pipeline/msmarco-trec-dl.yaml --dry-run # validate; list stages, inputs, outputs
  rkd pipeline configs/pipeline/scifact-demo.yaml --force report
  rkd pipeline configs/pipeline/scifact-demo.yaml --until train-dense --set students.sparse=null
  rkd pipeline configs/pipeline/label-free.yaml --dataset path/to/beir-folder   # experiments/label-free-<folder>
stages: [queries], mine, teach, train-dense, train-sparse, index, retrieve, evaluate, report
(queries: only when the training queries are made from the corpus, queries.source crop, generate or import)"""


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="teachers -> students -> indexes -> evaluation -> report, resumable",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("config", type=Path, help="pipeline YAML (see configs/pipeline/)")
    p.add_argument("--dataset", metavar="PATH_OR_NAME",
                   help="run the config on this collection (a BEIR folder or a registered name): it replaces the "
                        "config's dataset, its test split replaces eval, and the experiment folder is "
                        "<output_root>/<name>-<collection name>, a folder's with a short hash of its path after "
                        "it (-1a2b3c)")
    p.add_argument("--dry-run", action="store_true", help="validate the config; list stages, inputs, outputs, state")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="run STAGE (and what reads it) even if it is up to date; repeatable")
    p.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, YAML value); repeatable")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from retrieval_kd.cli.train_cmd import parse_overrides
    from retrieval_kd.pipeline import Pipeline, load_pipeline_config

    config = load_pipeline_config(args.config, parse_overrides(args.overrides), dataset=args.dataset)
    pipe = Pipeline(config)
    for name in [*args.force, *([args.until] if args.until else [])]:
        pipe.stage(name)  # an unknown stage name fails now, dry run or not (KeyError naming the stages)
    if args.dry_run:
        plan = pipe.plan()
        if args.json:
            print(json.dumps(plan, indent=1))
            return 0
        print(f"{args.config}: valid. Experiment folder: {config.work_dir}")
        if config.hardware or config.expected_minutes:
            print(f"sized for: {config.hardware} (about {config.expected_minutes or '?'} minutes)")
        for row in plan:
            print(f"\n[{row['status']}] {row['stage']}  (fingerprint {row['fingerprint']}"
                  + (f", after {', '.join(row['after'])})" if row["after"] else ")"))
            for i in row["inputs"]:
                print(f"    in : {i}")
            for o in row["outputs"]:
                print(f"    out: {o}")
            if row.get("encoding"):
                from retrieval_kd.pipeline.report import encoding_line

                print(f"    enc: {row['encoding']['setting']}: {encoding_line(row['encoding'])}")
        return 0
    done = pipe.run(force=args.force, until=args.until)
    ran = ", ".join(f"{k} {v} s" if v != "skipped" else f"{k} skipped" for k, v in done.items())
    print(f"stages: {ran}")
    report = config.work_dir / "report.md"
    if "report" in done and report.exists():
        from retrieval_kd.pipeline.report import quality_table

        metrics = json.loads((config.work_dir / "metrics.json").read_text())
        teach = json.loads((config.work_dir / "stages" / "teach.json").read_text())["summary"]
        for ev in config.eval:
            print(f"\n{ev.name}")
            print(quality_table(metrics, ev.name, config.metrics, teach.get("rerank", {}).get(ev.name)))
        print(f"\nreport: {report}")
    return 0
