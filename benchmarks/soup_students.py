"""Uniform soups of dense students trained on one teacher with different seeds, against their start.

Usage (the experiment pre-registered in 62803da; its commands are in docs/label-free.md, "A uniform soup of two
students"): for each pipeline experiment, the dense students of its runs with different ``training.seed`` are kept
under ``<experiment>/students-kept/t<seed>/`` and each run's ``runs/`` folder under ``students-kept/runs-t<seed>/``;
then

  python benchmarks/soup_students.py experiments/soup-q0-scifact-*/students-kept \
      experiments/soup-q1-scifact-*/students-kept --output benchmarks/results/label_free.soup.json

For each kept folder: the soup is the tensor-wise mean of its students' weights (Wortsman et al. 2022, "Model
soups"; :func:`retrieval_kd.students.interpolate.interpolate_state`, chained so that every student weighs the
same), saved beside them as ``soup/`` and searched exactly as the pipeline searches the start (exact cosine search,
the student's ``max_seq_length``, the experiment's ``encoding``) on the experiment's eval set. Reports nDCG@10 of
the start, each student and the soup, and two-sided paired t-tests over the queries: the mean of the soups and the
mean of all single students against the mean of the starts. No training, no choice.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def soup(students: list[Path], out: Path) -> Path:
    """Write the uniform soup of ``students`` (SentenceTransformer folders of one architecture) to ``out``."""
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.students.interpolate import interpolate_state
    from retrieval_kd.utils.fs import atomic_folder

    if (out / "modules.json").is_file():
        return out
    model = SentenceTransformer(str(students[0]), device="cpu")
    state = model.state_dict()
    for i, other in enumerate(students[1:], start=2):  # running mean: the i-th student weighs 1/i
        state = interpolate_state(state, SentenceTransformer(str(other), device="cpu").state_dict(), 1.0 - 1.0 / i)
    model.load_state_dict(state)
    with atomic_folder(out, "dense-student") as tmp:
        model.save(str(tmp))
        (tmp / "rkd_soup.json").write_text(json.dumps({"students": [str(s.resolve()) for s in students]}, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kept", type=Path, nargs="+", help="students-kept folders, one per pipeline experiment")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "label_free.soup.json")
    args = p.parse_args()

    from scipy.stats import ttest_rel
    from sentence_transformers import SentenceTransformer

    from retrieval_kd.data import load_collection, read_run
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.eval import evaluate
    from retrieval_kd.pipeline.config import resolved_encoding
    from retrieval_kd.search.dense import dense_search
    from retrieval_kd.utils.hardware import hardware_info

    entries, per_query = {}, {"start": [], "student": [], "soup": []}
    for kept in args.kept:
        config = json.loads((kept.parent / "config.json").read_text())
        (ev,) = config["eval"]
        collection = load_collection(ev["dataset"])
        qrels, queries = collection.qrels(ev["split"]), collection.queries(ev["split"])
        level = collection.conventions.relevance_level
        students = sorted(d for d in kept.glob("t*") if (d / "modules.json").is_file())
        if len(students) < 2:
            raise SystemExit(f"{kept}: needs at least two student folders t<seed>/, found {len(students)}")
        max_len = SentenceTransformer(str(students[0]), device="cpu").max_seq_length  # as the student saved it

        def ndcg(run, qrels=qrels, level=level) -> dict:
            return evaluate(qrels, run, ["ndcg@10"], level).per_query["ndcg@10"]

        starts = [ndcg(read_run(kept / f"runs-{s.name}" / ev["name"] / "dense-initial.run")) for s in students]
        singles = [ndcg(read_run(kept / f"runs-{s.name}" / ev["name"] / "dense-flat.run")) for s in students]
        folder = soup(students, kept / ("soup-" + "-".join(s.name for s in students)))
        encoding = resolved_encoding(config.get("encoding", "torch"), "dense")
        souped = ndcg(dense_search(str(folder), collection, queries, 1000, max_len, encoding=encoding))
        qids = sorted(qrels)

        def mean(scores, qids=qids) -> float:
            return sum(scores.get(q, 0.0) for q in qids) / len(qids)

        entries[str(kept)] = {"start": [round(mean(s), 4) for s in starts],
                              "students": {s.name: round(mean(x), 4) for s, x in zip(students, singles)},
                              "soup": round(mean(souped), 4), "soup_folder": str(folder)}
        per_query["start"].append({q: sum(s.get(q, 0.0) for s in starts) / len(starts) for q in qids})
        per_query["student"].append({q: sum(x.get(q, 0.0) for x in singles) / len(singles) for q in qids})
        per_query["soup"].append({q: souped.get(q, 0.0) for q in qids})
        print(json.dumps({str(kept): entries[str(kept)]}, indent=1))

    qids = sorted(set.intersection(*(set(d) for d in per_query["start"])))
    if any(len(d) != len(qids) for d in per_query["start"]):
        raise SystemExit("the kept folders' eval sets hold different queries; compare one eval set at a time")
    # each query's score averaged over the experiments (the seeds), then paired over the queries
    seed_mean = {k: [sum(d[q] for d in v) / len(v) for q in qids] for k, v in per_query.items()}

    def paired(x: str, y: str) -> dict:
        a, b = seed_mean[x], seed_mean[y]
        p_value = float(ttest_rel(a, b).pvalue)
        return {"diff": round((sum(a) - sum(b)) / len(a), 4), "p": None if math.isnan(p_value) else round(p_value, 4)}

    summary = {"queries": len(qids), "means": {k: round(sum(v) / len(v), 4) for k, v in seed_mean.items()},
               "paired_t_ndcg@10": {"soup vs start": paired("soup", "start"),
                                    "students vs start": paired("student", "start"),
                                    "soup vs students": paired("soup", "student")}}
    print(json.dumps(summary, indent=1))
    with atomic_write(args.output) as fh:
        json.dump({"experiments": entries, **summary, "hardware": hardware_info()}, fh, indent=1)


if __name__ == "__main__":
    main()
