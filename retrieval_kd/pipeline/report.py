"""The pipeline's report: ``report.md`` with the quality, index and speed tables, and PNG plots beside it.

Everything comes from files the earlier stages wrote (``metrics.json``, ``speed/*.json``, ``stages/*.json``,
``models/*-log.json``), so the report can be rebuilt alone (``rkd pipeline CONFIG --force report``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from retrieval_kd.pipeline.config import STAGE_ORDER, PipelineConfig, current_check

logger = logging.getLogger(__name__)

__all__ = ["encoding_line", "write_report", "quality_table", "system_label", "training_queries_line"]

_KINDS = {"flat": "flat (exact)", "hnsw": "HNSW32", "pq": "FAISS PQ", "ivfpq": "FAISS IVFPQ",
          "opq-ivfpq": "FAISS OPQ+IVFPQ", "distill-vq": "Distill-VQ (IVFPQ)"}


def _load(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def system_label(name: str, teacher_names: dict | None = None) -> str:
    """A readable row name for a run file's stem."""
    if name == "bm25":
        return "BM25 (bm25s)"
    if name == "ensemble":
        return "teacher: ensemble (reranks BM25 top-k)"
    if name.startswith("teacher"):
        return f"teacher: {(teacher_names or {}).get(name, name)} (reranks BM25 top-k)"
    if name == "dense-initial":
        return "dense student before distillation (flat)"
    if name == "sparse-inference-free":
        return "inference-free sparse student"
    if name.startswith("dense-"):
        kind = name[len("dense-"):]
        if kind in _KINDS:
            return f"distilled dense, {_KINDS[kind]}"
        base, _, size = kind.rpartition("-")
        return f"distilled dense, {_KINDS.get(base, base)}, {size} B/vector"
    return name


def _order(name: str) -> tuple:
    prefixes = ["bm25", "teacher", "ensemble", "dense-initial", "dense-flat", "dense-hnsw", "dense-pq",
                "dense-ivfpq", "dense-opq-ivfpq", "dense-distill-vq", "sparse"]
    rank = max((i for i, p in enumerate(prefixes) if name.startswith(p)), default=len(prefixes))
    size = name.rsplit("-", 1)[-1]
    return (rank, -int(size) if size.isdigit() else 0, name)


def quality_table(metrics: dict, eval_name: str, metric_names: list[str], teacher_names: dict | None = None) -> str:
    """Markdown: one row per system, its metrics, and the paired t-test p-value of the first metric vs BM25
    (``*``: p < 0.05)."""
    runs = metrics[eval_name]["runs"]
    first = metric_names[0]
    head = "| system | " + " | ".join(metric_names) + f" | p ({first} vs BM25) |"
    lines = [head, "|---|" + "---:|" * (len(metric_names) + 1)]
    for name in sorted(runs, key=_order):
        row = runs[name]
        cells = [f"{row['scores'][m]:.4f}" for m in metric_names]
        p = row.get("p_vs_bm25", {}).get(first, "")
        if p == "":
            mark = ""
        elif p is None:  # ranx's t-test is undefined on a ranking identical to BM25's
            mark = "identical"
        else:
            mark = f"{p:.3g}" + (" *" if p < 0.05 else "")
        lines.append(f"| {system_label(name, teacher_names)} | " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines)


def _index_table(metrics: dict, speed: dict, eval_name: str, metric_names: list[str]) -> tuple[str, list]:
    runs = metrics[eval_name]["runs"]
    flat = runs.get("dense-flat", {}).get("scores", {}).get(metric_names[0])
    lines = ["| index | bytes / vector | " + " | ".join(metric_names) + " | retained (of flat) |",
             "|---|---:|" + "---:|" * (len(metric_names) + 1)]
    points = []
    for name in sorted((n for n in runs if n.startswith("dense-") and n != "dense-initial"), key=_order):
        key = name[len("dense-"):]
        size = speed.get(key, {}).get("bytes_per_vector")
        scores = runs[name]["scores"]
        retained = f"{scores[metric_names[0]] / flat:.1%}" if flat else ""
        lines.append(f"| {system_label(name)} | {size:.0f} | " + " | ".join(f"{scores[m]:.4f}" for m in metric_names)
                     + f" | {retained} |")
        points.append((key, size, scores[metric_names[0]]))
    return "\n".join(lines), points


def _index_label(key: str) -> str:
    """``opq-ivfpq-48`` -> ``FAISS OPQ+IVFPQ 48 B``; ``sparse`` -> the inverted index."""
    if key == "sparse":
        return "sparse inverted index (student)"
    if key in _KINDS:
        return _KINDS[key]
    base, _, size = key.rpartition("-")
    return f"{_KINDS.get(base, base)} {size} B"


def _speed_table(speed: dict) -> str:
    lines = ["| index | nprobe | queries/s | Recall@10 (of exact top-10) |", "|---|---:|---:|---:|"]
    for key in sorted(speed, key=lambda k: _order(f"dense-{k}")):
        for pt in speed[key]["points"]:
            nprobe = "" if pt.get("nprobe") is None else pt["nprobe"]
            rec = f"{pt['recall@10']:.4f}" if "recall@10" in pt else ""
            lines.append(f"| {_index_label(key)} | {nprobe} | {pt['qps']:.0f} | {rec} |")
    return "\n".join(lines)


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(work: Path, metric: str, eval_name: str, points: list, speed: dict, bm25: float | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = work / "plots"
    out.mkdir(parents=True, exist_ok=True)
    made = []
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        groups: dict = {}
        for key, size, value in points:
            base = key.rsplit("-", 1)[0] if key.rsplit("-", 1)[-1].isdigit() else key
            groups.setdefault(base, []).append((size, value))
        for base, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_KINDS.get(base, base))
        if bm25 is not None:
            ax.axhline(bm25, color="grey", linestyle="--", linewidth=1, label="BM25")
        ax.set_xscale("log", base=2)
        made.append(_save(fig, ax, out / f"{eval_name}-quality-vs-bytes.png", "index bytes per vector", metric,
                          f"{eval_name}: {metric} against code size"))
    curves = {k: v for k, v in speed.items() if any("recall@10" in p for p in v["points"])}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, entry in sorted(curves.items(), key=lambda kv: _order(f"dense-{kv[0]}")):
            pts = [p for p in entry["points"] if "recall@10" in p]
            ax.plot([p["recall@10"] for p in pts], [p["qps"] for p in pts], marker="o", label=_index_label(key))
        ax.set_yscale("log")
        made.append(_save(fig, ax, out / f"{eval_name}-qps-vs-recall.png", "Recall@10 (share of exact top-10)",
                          "queries / s (1 thread)", f"{eval_name}: speed against recall (nprobe sweep)"))
    return made


def _loss_plot(work: Path, logs: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(h["step"], h["loss"]) for h in v if "loss" in h and "step" in h] for k, v in logs.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (kind, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{kind} student")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = work / "plots" / "training-loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_queries_line(info: dict, trained: int | None = None) -> str:
    """Which queries trained a student, in words, from its stage summary's ``queries`` entry: the split's, or a
    made-up set (source, method, counts kept and dropped from its sidecar, positives, file)."""
    used = f"; {trained} queries with teacher-scored pairs trained on (dev held out)" if trained is not None else ""
    if info.get("source") == "split":
        return f"the {info.get('split')!r} split's judged queries, positives {info.get('positives')}{used}"
    dropped = ", ".join(f"{k} {v}" for k, v in sorted((info.get("dropped") or {}).items())) or "none"
    made = info.get("candidates")
    docs = info.get("documents")
    text = (f"{info.get('kept')} made-up queries, source {info.get('source')} ({info.get('method')}): kept "
            f"{info.get('kept')} of {made if made is not None else '?'}"
            + (f" made from {docs} documents" if docs is not None else "")
            + f" (dropped: {dropped}); positives {info.get('positives')}")
    if info.get("mix_labeled"):
        text += f", mixed with the {info.get('split')!r} split's judged queries and qrels"
    return text + f"{used}; `{info.get('file')}`"


def encoding_line(record: dict) -> str:
    """What encoded, per encoder kind, from a stage marker's ``encoding``
    (:func:`retrieval_kd.pipeline.stages.encoding_record`): ``dense torch-bf16 (amx-bf16; the CPU has AMX ...)``."""
    parts = []
    for kind, used in record.items():
        if kind != "setting":
            detail = "; ".join(filter(None, [used.get("isa") or ("fp32" if used.get("backend") == "torch" else ""),
                                             used.get("reason")]))
            parts.append(f"{kind} {used.get('backend')}" + (f" ({detail})" if detail else ""))
    return ", ".join(parts)


def write_report(work: Path, config: PipelineConfig) -> Path:
    """Write ``report.md`` and the plots under ``work``; returns the report's path."""
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.utils.hardware import hardware_info

    work = Path(work)
    metrics = _load(work / "metrics.json", {})
    markers = {n: _load(work / "stages" / f"{n}.json") for n in STAGE_ORDER if (work / "stages" / f"{n}.json").exists()}
    teach = (markers.get("teach") or {}).get("summary", {})
    logs = {k: _load(work / "models" / f"{k}-log.json", []) for k in ("dense", "sparse")}
    hw = hardware_info(("retrieval-kd", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu",
                        "ranx", "bm25s", "ir_datasets", "numpy"))
    lines = [f"# {config.name}", ""]
    if config.description:
        lines += [config.description.strip(), ""]
    on = f" --dataset {config.on_dataset}" if config.on_dataset else ""
    lines += [f"Command: `rkd pipeline {config.source or '<config>'}{on}`; written {time.strftime('%Y-%m-%d %H:%M %Z')}.",
              f"Config sized for: {config.hardware or 'unspecified'}"
              + (f", about {config.expected_minutes:g} minutes." if config.expected_minutes else ".")]
    students = {}  # the students' and the initial model's encoders, as the stages that encoded recorded them
    for name in ("mine", "index", "retrieve"):
        students.update((markers.get(name) or {}).get("encoding") or {})
    if students:
        lines.append(f"Students and the initial model encoded with `encoding: {students['setting']}`: "
                     f"{encoding_line(students)}.")
    lines.append("")
    lines += ["## Quality", ""]
    loss_plot = _loss_plot(work, logs)
    kept_start = ((markers.get("train-dense") or {}).get("summary") or {}).get("kept_start")
    for ev in config.eval:
        if ev.name not in metrics:
            continue
        names = {}
        for label, name in teach.get("rerank", {}).get(ev.name, {}).items():
            names[label] = name
        lines += [f"### {ev.name} ({metrics[ev.name]['runs']['bm25']['queries'] if 'bm25' in metrics[ev.name]['runs'] else '?'}"
                  f" queries, binary measures count grade >= {metrics[ev.name]['relevance_level']})", "",
                  quality_table(metrics, ev.name, config.metrics, names), "",
                  *(["The distilled dense rows are its start, kept untrained (`students.dense.weak_teacher: "
                     "keep-start`; see Students).", ""] if kept_start else []),
                  "p: ranx paired Student's t-test against BM25 on the same queries; * marks p < 0.05. Teachers "
                  f"rerank BM25's top-{config.teachers.rerank_depth}; students retrieve top-{config.retrieve_top_k} "
                  "from the whole corpus.", ""]
        speed = _load(work / "speed" / f"{ev.name}.json", {})
        table, points = _index_table(metrics, speed, ev.name, config.metrics)
        if points:
            lines += [f"#### Indexes of the distilled dense student (nlist {config.index.nlist}, nprobe "
                      f"{config.index.nprobe})", "", table, ""]
        bm25 = metrics[ev.name]["runs"].get("bm25", {}).get("scores", {}).get(config.metrics[0])
        plots = _plots(work, config.metrics[0], ev.name, points, speed, bm25)
        if speed:
            lines += ["#### Speed (one thread, all queries in one batch, best of 3)", "", _speed_table(speed), ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    lines += ["## Teachers", ""]
    if teach:
        weights = teach.get("weights")
        for i, m in enumerate(teach.get("members", [])):
            w = f" weight {weights[i]}" if weights else ""
            lines.append(f"- {m}{w}")
        if teach.get("fitted_on"):
            lines.append(f"- weights fitted on {teach['fitted_on']} (nDCG@10 there {teach['fitted_ndcg@10']:.4f}); "
                         f"normalisation {config.teachers.normalization}")
        elif not weights and len(teach.get("members", [])) > 1:
            lines.append(f"- equal weights (none fitted: no labels used); normalisation {config.teachers.normalization}")
        check = current_check(config, teach)  # None when stale: the start changed since the teach stage ran
        if check:
            verdict = ("clearly better" if check["clear"] else
                       "**not clearly better: distilling from it may lower the student** (README, TREC DL 2019)")
            lines.append(f"- teacher against the dense student's start ({check['start']}) on those {check['queries']} "
                         f"ICT queries: nDCG@10 {check['teacher_ndcg@10']:.4f} against {check['start_ndcg@10']:.4f} "
                         f"({check['gain']:+.4f}, paired p {check['p']:.3g}): {verdict}")
        if (markers.get("teach") or {}).get("encoding"):
            used = markers["teach"]["encoding"]
            lines.append(f"- encoded with `teachers.encoding: {used['setting']}`: {encoding_line(used)}")
        lines.append("")
    lines += ["## Students", ""]
    for kind in ("dense", "sparse"):
        s = (markers.get(f"train-{kind}") or {}).get("summary")
        if s and s.get("kept_start"):  # students.dense.weak_teacher: keep-start, and the check did not pass
            lines.append(f"- {kind}: **not trained: its start `{s.get('start')}` kept as the student**. {s['kept_start']}")
        elif s:
            lines.append(f"- {kind}: {s.get('steps')} steps, final training loss {s.get('train_loss', float('nan')):.4f}, "
                         f"trained in {s.get('train_seconds')} s" + (f" ({s['precision']})" if s.get("precision") else "")
                         + f", teacher `{s.get('teacher')}`"
                         + (f", resumed from {s['resumed_from']}" if s.get("resumed_from") else "")
                         + (f"; saved as {s['start_weight']:g} x its starting model + {1 - s['start_weight']:g} x "
                            "the trained one (`start_weight`, WiSE-FT)" if s.get("start_weight") else ""))
            if s.get("queries"):
                lines.append(f"  - training queries: {training_queries_line(s['queries'], s.get('train_queries'))}")
    if loss_plot:
        lines += ["", f"![training loss](plots/{loss_plot.name})"]
    lines += ["", "## Stages", "", "| stage | seconds | fingerprint |", "|---|---:|---|"]
    total = 0.0
    for name, m in markers.items():
        if m and name != "report":
            total += float(m.get("seconds", 0))
            lines.append(f"| {name} | {m.get('seconds')} | {m.get('fingerprint')} |")
    lines += [f"| total (each stage's last run, report excluded) | {total:.1f} | |", "", "## Hardware and versions", "",
              f"- CPU: {hw.get('cpu')}{f' ({gen})' if (gen := hw.get('cpu_generation')) else ''} "
              f"({hw.get('cores')} cores), torch threads {hw.get('torch_threads')}, "
              f"GPU: {hw.get('cuda') or 'none'}",
              f"- Python {hw.get('python')} on {hw.get('platform')}",
              "- " + ", ".join(f"{k} {v}" for k, v in hw.get("versions", {}).items()), ""]
    path = work / "report.md"
    with atomic_write(path) as fh:
        fh.write("\n".join(lines))
    return path
