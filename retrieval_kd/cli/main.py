"""Entry point of ``rkd``: builds the parser from the subcommand modules, sets up logging and progress bars.

Exit codes: 0 done; 2 an error the user can fix (one line ``rkd COMMAND: error: ...`` naming the file, flag or id;
``-vv`` shows its traceback); 3 a bug of retrieval-kd (its traceback, and a line asking to report it).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from pathlib import Path

from retrieval_kd import __version__
from retrieval_kd.cli import (
    data_cmd,
    eval_cmd,
    export_cmd,
    index_cmd,
    models_cmd,
    pipeline_cmd,
    queries_cmd,
    query_cmd,
    rerank_cmd,
    search_cmd,
    serve_cmd,
    teach_cmd,
    train_cmd,
)
from retrieval_kd.errors import RkdError

_COMMANDS = [data_cmd, search_cmd, eval_cmd, models_cmd, teach_cmd, train_cmd, index_cmd, pipeline_cmd, serve_cmd,
             query_cmd, rerank_cmd, queries_cmd, export_cmd]


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
    for noisy in ("numba", "urllib3", "filelock", "httpx", "datasets", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from retrieval_kd.utils.progress import set_progress

    set_progress(not args.quiet)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors (2) and bugs (3), never swallowed
        message = user_error_message(exc, args)
        if message is None:
            traceback.print_exc()
            print(f"rkd {args.command}: internal error ({type(exc).__name__}): this is a bug of retrieval-kd, not "
                  "of your input; please report it with the traceback above and the command line", file=sys.stderr)
            return 3
        if args.verbose > 1:  # -vv: the traceback too
            traceback.print_exc()
        message = " ".join(message.split())  # one line, whatever the library put in it
        print(f"rkd {args.command}: error: {message}", file=sys.stderr)
        return 2


# OS errors a user causes: a path that is missing, a folder where a file goes (or the reverse), no permission, ...
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, getattr(errno, "EDQUOT", errno.ENOSPC)}
_OS_HINTS = {
    IsADirectoryError: "is a folder; give a file path (e.g. a file name inside it)",
    NotADirectoryError: "a part of this path is a file, not a folder; choose another path",
    PermissionError: "permission denied; choose a path you may read and write, or fix its permissions",
    FileExistsError: "already exists; remove it or choose another path",
    FileNotFoundError: "no such file or folder",
}


def _os_message(exc: OSError) -> str:
    path = exc.filename2 if isinstance(exc, IsADirectoryError) and exc.filename2 else exc.filename
    if isinstance(exc, FileExistsError) and Path(os.fsdecode(path)).is_file():  # mkdir where a file is
        return f"{os.fsdecode(path)}: is a file, so no folder can be made there; choose another path"
    hint = next((h for cls, h in _OS_HINTS.items() if isinstance(exc, cls)), None)
    if hint is None:
        hint = f"{(exc.strerror or str(exc)).lower()}; free space or choose another path"
    return f"{os.fsdecode(path)}: {hint}"


def _input_files(args) -> list[str]:
    """The existing files the command line names (for errors that do not say which file they came from)."""
    values = []
    for value in vars(args).values():
        values.extend(value if isinstance(value, list) else [value])
    return [str(v) for v in values if isinstance(v, (str, Path)) and Path(v).is_file()]


def user_error_message(exc: BaseException, args) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug of the project."""
    if isinstance(exc, UnicodeError):
        files = _input_files(args)
        where = files[0] if len(files) == 1 else ("one of " + ", ".join(files) if files else "an input file")
        return f"{where}: not UTF-8 text ({exc}); give the file in UTF-8"
    if isinstance(exc, OSError) and not isinstance(exc, RkdError) and exc.filename is not None and (
            isinstance(exc, _USER_OS_ERRORS) or exc.errno in _USER_ERRNOS):
        return _os_message(exc)
    if isinstance(exc, (RkdError, FileNotFoundError, KeyError, ValueError)):
        return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
