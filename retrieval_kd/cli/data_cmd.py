"""``rkd data``: list registered datasets, show one, check that it loads."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data",
        help="list, describe and check datasets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rkd data list\n  rkd data info scifact\n  rkd data check trec-dl-2019-passage",
    )
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    action.add_parser("list", help="registered dataset names").set_defaults(func=_list)
    info = action.add_parser("info", help="a dataset's manifest: files, license, conventions")
    info.add_argument("dataset")
    info.set_defaults(func=_info)
    check = action.add_parser("check", help="load a dataset fully: counts, checksums, and errors for malformed input")
    check.add_argument("dataset", help="registered name, BEIR folder, or irds:<id>")
    check.set_defaults(func=_check)


def _list(args) -> int:
    from retrieval_kd.data import get_manifest, list_datasets

    for name in list_datasets():
        m = get_manifest(name)
        print(f"{name:28s} splits={','.join(m.splits):10s} {m.description[:70]}")
    return 0


def _info(args) -> int:
    from dataclasses import asdict

    from retrieval_kd.data import get_manifest

    m = get_manifest(args.dataset)
    out = asdict(m)
    out["source"] = str(m.source)
    print(json.dumps(out, indent=1, default=str))
    return 0


def _check(args) -> int:
    from retrieval_kd.data import load_collection

    c = load_collection(args.dataset)
    n_docs = c.corpus.validate() if c.corpus is not None else 0
    print(f"dataset {c.name}")
    print(f"  corpus   {n_docs} documents" + (f" ({c.corpus.path})" if c.corpus else " (none)"))
    print(f"  queries  {len(c.all_queries)} ({c.queries_path})")
    for split in c.splits:
        qrels = c.qrels(split)
        n = sum(len(v) for v in qrels.values())
        conv = c.conventions_for(split)
        own = "dropped from its results unless judged relevant" if conv.ignore_identical_ids else "kept in its results"
        print(f"  qrels    {split}: {len(qrels)} queries, {n} judgements ({c.qrels_paths[split]}); binary relevance "
              f">= {conv.relevance_level}, a query's own id {own}")
    if c.manifest is not None:
        specs = [c.manifest.corpus, c.manifest.queries, *c.manifest.qrels.values()]
        specs = [s for s in specs if s is not None]
        checked = sum(1 for s in specs if s.sha256)
        print(f"  sha256   {checked} of {len(specs)} files match the manifest"
              + (" (the others have no checksum recorded)" if checked < len(specs) else ""))
    print(f"  metrics  {', '.join(c.conventions.metrics)}")
    return 0
