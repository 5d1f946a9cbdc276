"""Paired t-test between two sets of trained folders of ``benchmarks/label_free.py`` (each the mean of its seeds).

Usage:
  python benchmarks/label_free_paired.py 'labeled_dense-s[01]-f0e9a7' 'labeled_dense-s[01]-731987'

The patterns are globs under ``--work``/``--dataset`` (the folders' names carry row, recipe, seed and settings
hash; ``-checkpoints`` folders are skipped). Each folder is evaluated as label_free.py does (SciFact test,
nDCG@10, the same encoding and ``max_seq_length``; corpus embeddings come from the cache), per query averaged over
the folders of a pattern, and compared with a two-sided paired t-test. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_free as lf  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="glob of the first row's folders")
    p.add_argument("b", help="glob of the second row's folders")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--work", type=Path, default=lf.ROOT / "experiments" / "label-free")
    p.add_argument("--encoding", default="torch-bf16")
    args = p.parse_args()
    from retrieval_kd.data import load_collection

    collection = load_collection(args.dataset)
    work = args.work / Path(args.dataset).name

    def row(pattern: str):
        folders = sorted(f for f in work.glob(pattern) if f.is_dir() and not f.name.endswith("-checkpoints"))
        if not folders:
            raise SystemExit(f"label_free_paired: no trained folder matches {pattern!r} under {work}")
        scored = [lf.per_query(collection, lf.dense_run(str(f), collection, 256, args.encoding)) for f in folders]
        return {f.name: s["mean"] for f, s in zip(folders, scored)}, lf.seed_mean(scored)

    (seeds_a, a), (seeds_b, b) = row(args.a), row(args.b)
    print(json.dumps({"a": seeds_a, "b": seeds_b, "mean_a": round(sum(seeds_a.values()) / len(seeds_a), 4),
                      "mean_b": round(sum(seeds_b.values()) / len(seeds_b), 4), "p": round(lf.paired_p(a, b), 4)}))


if __name__ == "__main__":
    main()
