"""Entry point of ``rkd``: builds the parser from the subcommand modules, sets up logging and progress bars."""

from __future__ import annotations

import argparse
import logging
import sys

from retrieval_kd import __version__
from retrieval_kd.cli import (
    data_cmd,
    eval_cmd,
    index_cmd,
    models_cmd,
    pipeline_cmd,
    search_cmd,
    teach_cmd,
    train_cmd,
)

_COMMANDS = [data_cmd, search_cmd, eval_cmd, models_cmd, teach_cmd, train_cmd, index_cmd, pipeline_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkd",
        description="retrieval-kd: distil retrievers, build their indexes, evaluate them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  rkd search bm25 --dataset scifact --split test --top-k 1000 --output runs/bm25.run\n"
        "  rkd eval --dataset scifact --split test --run runs/bm25.run",
    )
    parser.add_argument("--version", action="version", version=f"retrieval-kd {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = teach_cmd.normalize_argv(list(sys.argv[1:] if argv is None else argv))
    argv = index_cmd.normalize_argv(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("numba", "urllib3", "filelock", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from retrieval_kd.utils.progress import set_progress

    set_progress(not args.quiet)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        # expected user errors: a clear message, no traceback (-vv shows it)
        if args.verbose > 1:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"rkd {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
