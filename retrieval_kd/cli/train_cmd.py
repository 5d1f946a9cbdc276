"""``rkd train``: train students from stored teacher scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG_DENSE = """examples:
  rkd train dense --config configs/dense/scifact-demo.yaml
  rkd train dense --config configs/dense/scifact-demo.yaml --set loss.name=kl --set training.seed=1 \\
      --set output_dir=experiments/scifact-dense/kl-seed1
  torchrun --nproc_per_node 2 -m retrieval_kd.cli.main train dense --config FILE.yaml   # DDP (gloo on CPU)
then: rkd search dense --model OUTPUT_DIR --dataset scifact --split test --output runs/student.run"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train students (dense bi-encoders, inference-free sparse) from teacher scores")
    kind = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    dense = kind.add_parser("dense", help="distil teacher scores into a SentenceTransformer",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_DENSE)
    dense.add_argument("--config", required=True, type=Path, help="YAML config (see configs/dense/)")
    dense.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (dotted, YAML value), e.g. training.seed=1; repeatable")
    dense.add_argument("--summary", type=Path, default=None, help="also write the run summary (JSON) here")
    dense.add_argument("--overwrite", action="store_true",
                       help="replace output_dir even if it is not a dense student retrieval-kd wrote")
    dense.set_defaults(func=_dense)
    sparse = kind.add_parser("sparse", help="distil teacher scores into an inference-free sparse encoder",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog="example:\n  rkd train sparse --config configs/sparse/scifact-demo.yaml\n"
                             "then: rkd index build sparse --model OUTPUT_DIR --dataset scifact --output indexes/NAME")
    sparse.add_argument("--config", required=True, type=Path, help="YAML config (see configs/sparse/)")
    sparse.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sparse.add_argument("--summary", type=Path, default=None)
    sparse.add_argument("--overwrite", action="store_true",
                        help="replace output_dir even if it is not a sparse student retrieval-kd wrote")
    sparse.set_defaults(func=_sparse)
    mix = kind.add_parser("mix", help="mix a trained dense student with the model it started from (WiSE-FT)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example:\n  rkd train mix experiments/label-free/models/dense --start-weight 0.5 "
                          "--output experiments/label-free/models/dense-sw0.5\n(the start is read from the "
                          "student's rkd_training.json unless --start names it; at training time: --set "
                          "start_weight=0.5)")
    mix.add_argument("student", type=Path, help="a dense student folder that `rkd train dense` wrote")
    mix.add_argument("--start-weight", type=float, required=True,
                     help="share of the starting model in the saved weights, in [0, 1]")
    mix.add_argument("--start", default=None, help="the model it was trained from (default: its config's model)")
    mix.add_argument("--output", required=True, type=Path, help="the mixed SentenceTransformer folder")
    mix.add_argument("--overwrite", action="store_true",
                     help="replace --output even if it is not a dense student retrieval-kd wrote")
    mix.set_defaults(func=_mix)


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({detail}); quote it") from None
    return out


def _dense(args) -> int:
    from retrieval_kd.students import load_config, train_dense

    return _report(train_dense(load_config(args.config, parse_overrides(args.overrides)),
                               overwrite=args.overwrite), args)


def _sparse(args) -> int:
    from retrieval_kd.students import load_sparse_config, train_sparse

    return _report(train_sparse(load_sparse_config(args.config, parse_overrides(args.overrides)),
                                overwrite=args.overwrite), args)


def _mix(args) -> int:
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.students.interpolate import interpolate_student, recorded_start

    if not args.student.is_dir():
        raise ConfigError(f"{args.student}: no such folder; give a dense student folder that `rkd train dense` wrote")
    start = args.start or recorded_start(args.student)
    out = interpolate_student(start, args.student, args.start_weight, args.output, overwrite=args.overwrite)
    print(json.dumps({"output_dir": str(out), "start": start, "start_weight": args.start_weight}))
    return 0


def _report(summary: dict, args) -> int:
    from retrieval_kd.data.formats import atomic_write

    summary.pop("log_history", None)
    if args.summary:
        with atomic_write(args.summary) as fh:
            json.dump(summary, fh, indent=1)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
