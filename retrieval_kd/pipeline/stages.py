"""The pipeline's stages, in order: [queries ->] mine -> teach -> train-dense -> train-sparse -> index -> retrieve
-> evaluate -> report. Each is a function of a :class:`Context` that writes its outputs under the experiment folder
and returns a JSON summary (kept in the stage's marker file, ``stages/<name>.json``). The ``queries`` stage runs
only when the training queries are made from the corpus (``queries.source`` crop, generate or import).

Layout of ``experiments/<name>/``::

    queries/queries.jsonl           made-up training queries (+ queries.provenance.json: sources, counts, filters)
    candidates/train.run            BM25 (+ dense) top-k of the training queries, plus their judged positives (made-up
                                    queries: their source documents)
    scores/                         score store of the training candidates (every member + the ensemble)
    scores-eval/<eval>/             score store of the eval sets' BM25 top-k (teachers as rerankers, report only)
    models/dense, models/sparse     the students (SentenceTransformer / SparseEncoder folders)
    indexes/<eval>/<kind>[-<bytes>]  FAISS indexes (index.faiss + docids.json + rkd_index.json), sparse index
    runs/<eval>/<system>.run        TREC run files
    speed/<eval>.json               queries/s and Recall@10 per index and nprobe
    metrics.json                    ranx means and paired p-values against BM25
    report.md, plots/*.png          the report
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval_kd.data.formats import atomic_write
from retrieval_kd.encoders.backends import Encoding
from retrieval_kd.pipeline.config import (
    PipelineConfig,
    collection_name,
    config_path,
    current_check,
    fits_weights,
    resolved_encoding,
    slug,
    student_config,
)

logger = logging.getLogger(__name__)

__all__ = ["Context", "encoder_kinds", "encoding_fingerprint", "encoding_record", "teacher_member"]


@dataclass
class Context:
    """What stages share in one process: the config, the experiment folder, loaded collections and teachers."""

    config: PipelineConfig
    collections: dict = field(default_factory=dict)
    teachers: dict = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.config.work_dir

    def collection(self, ref: str):
        if ref not in self.collections:
            from retrieval_kd.data import load_collection

            self.collections[ref] = load_collection(ref)
        return self.collections[ref]

    def runs_dir(self, eval_name: str) -> Path:
        return self.work / "runs" / eval_name

    def index_dir(self, corpus: str) -> Path:
        return self.work / "indexes" / corpus

    def encoding(self, kind: str) -> Encoding:
        """The :class:`~retrieval_kd.encoders.backends.Encoding` the students' and the initial model's ``kind``
        (``dense``, ``sparse``) encoders run with: the config's ``encoding``, resolved once (``auto`` by this CPU)."""
        return resolved_encoding(self.config.encoding, kind)


# ------------------------------------------------------------------------------------------------------ encoding
_TEACHER_ENCODERS = {"bi-encoder": "dense", "splade": "sparse"}


def _takes_setting(spec: str) -> str | None:
    """``dense`` / ``sparse`` for a bi-encoder / SPLADE member spec without its own ``encoding=``, else None."""
    head, *opts = spec.split(",")
    if any(opt.partition("=")[0].strip() == "encoding" for opt in opts):
        return None
    return _TEACHER_ENCODERS.get(head.partition(":")[0].strip())


def teacher_member(spec: str, encoding: str = "torch"):
    """A teacher of ``teachers.members``: a bi-encoder or SPLADE member whose spec names no ``encoding`` runs with
    ``teachers.encoding`` (``auto`` resolved once for all of them, not per teacher)."""
    from retrieval_kd.encoders.export import read_export_meta
    from retrieval_kd.teachers import parse_teacher

    teacher, kind = parse_teacher(spec), _takes_setting(spec)
    if kind is not None and encoding != "torch":
        exported = Path(teacher.model_name).is_dir() and read_export_meta(teacher.model_name) is not None
        # an exported graph decides its own backend from the setting's name
        teacher.encoding = encoding if exported else resolved_encoding(encoding, kind)
    return teacher


def encoder_kinds(cfg: PipelineConfig, stage: str) -> list[str]:
    """The encoders (``dense``, ``sparse``) ``stage`` runs with the config's ``encoding``; for ``teach``, those of
    the members that take ``teachers.encoding``. Empty: the stage encodes nothing with the setting."""
    if stage == "mine":
        return ["dense"] if "dense" in cfg.candidates.sources else []
    if stage == "teach":
        return sorted({k for k in map(_takes_setting, cfg.teachers.members) if k})
    if stage == "index":
        return (["dense"] if cfg.students.dense is not None and cfg.index.types else []) + (
            ["sparse"] if cfg.students.sparse is not None else [])
    if stage == "retrieve":  # the initial model's and the student's dense encoders (sparse queries: tokens)
        return ["dense"] if cfg.students.dense is not None else []
    return []


def encoding_record(cfg: PipelineConfig, stage: str) -> dict:
    """What ``stage`` encodes with (its marker and the report keep it): the setting and, per encoder kind, the
    backend, its instruction set and, for ``auto``, why; ``{}`` where the stage encodes nothing."""
    kinds = encoder_kinds(cfg, stage)
    if not kinds:
        return {}
    setting = cfg.teachers.encoding if stage == "teach" else cfg.encoding
    return {"setting": setting, **{k: resolved_encoding(setting, k).describe() for k in kinds}}


def encoding_fingerprint(cfg: PipelineConfig, stage: str) -> dict:
    """The part of ``stage``'s fingerprint its encoding is: the concrete backend and instruction set (``auto``
    resolved here) of each encoder kind that is not torch fp32. Empty for torch: earlier fingerprints hold."""
    record = encoding_record(cfg, stage)
    return {k: f"{v['backend']}/{v['isa']}" for k, v in record.items() if k != "setting" and v["backend"] != "torch"}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=1, default=str)


# ------------------------------------------------------------------------------------------------------ queries
def queries_file(cfg: PipelineConfig) -> Path:
    """Where the ``queries`` stage writes the made-up training queries (the sidecar lies beside it)."""
    return cfg.work_dir / "queries" / "queries.jsonl"


def make_queries(ctx: Context) -> dict:
    """The made-up training queries of ``queries.source`` (crop, generate, import), filtered and capped at
    ``max_queries``, written to ``queries/queries.jsonl`` with their provenance sidecar (both atomically).

    Generation writes the unfiltered queries to ``queries/generated.jsonl`` first, resumably (finished batches
    are kept in ``generated.jsonl.parts/``; a rerun with the same settings reuses the file), so a change of the
    filters or of the cap filters again without generating again (unless the cap sizes the documents' sample,
    :attr:`QueriesConfig.documents`, on a corpus larger than that sample: then other documents are read)."""
    from retrieval_kd.queries import (
        QueryFilters,
        QueryGenerator,
        apply_filters,
        crop_queries,
        generate_queries,
        import_queries,
        read_examples,
        sample_queries,
        write_query_set,
    )
    from retrieval_kd.queries.examples import DEFAULT_PROMPT

    cfg, q = ctx.config, ctx.config.queries
    coll = ctx.collection(cfg.dataset)
    out = queries_file(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    f = q.filters
    filters = QueryFilters(f.min_words, f.max_words, f.dedupe, f.round_trip, f.round_trip_k)
    documents = q.documents  # the budget's sample only where it is smaller than the corpus: else, as before, all
    if q.max_documents is None and documents is not None and documents >= len(coll.corpus):
        documents = None
    if q.source == "crop":
        made = crop_queries(coll, q.method, q.per_document or 1, q.seed, remove_sentence=q.remove_sentence,
                            span_ratio=tuple(q.span_ratio), min_span_words=q.min_span_words,
                            max_span_words=q.max_span_words, max_documents=documents, skip_empty=q.skip_empty,
                            id_prefix=q.id_prefix)
    elif q.source == "generate":
        examples = read_examples(config_path(cfg, q.examples)) if q.examples else None
        generator = QueryGenerator(q.model, examples, q.prompt or DEFAULT_PROMPT, q.per_document or 3,
                                   q.max_new_tokens, q.temperature, q.top_p, q.top_k, q.max_document_tokens,
                                   q.chat_template, q.device, q.dtype)
        made = generate_queries(generator, coll, out.with_name("generated.jsonl"), q.batch_size, q.seed,
                                documents, q.skip_empty, id_prefix=q.id_prefix or "gen")
    else:
        made = import_queries(config_path(cfg, q.path), coll, q.format, q.prefix, q.id_prefix or "gen")
    kept = sample_queries(apply_filters(made, filters, coll), q.max_queries, q.seed)
    used, total = made.counts.get("documents"), made.counts.get("corpus_documents")
    if q.max_queries and len(kept) < q.max_queries and documents is not None and used == documents < total:
        logger.warning("queries: %d kept, short of max_queries %d: they were made from a sample of %d of the %d "
                       "documents (queries.max_documents); set it higher for more", len(kept), q.max_queries, used,
                       total)
    kept.provenance.update(filter_settings=filters.settings(), max_queries=q.max_queries)
    write_query_set(kept, out)
    logger.info("queries: kept %d of %d %s queries", len(kept), kept.counts.get("candidates", len(kept)),
                kept.method)
    return {"file": str(out), "source": q.source, "method": kept.method, "queries": len(kept),
            "counts": kept.counts}


def queries_outputs(cfg: PipelineConfig) -> list[Path]:
    from retrieval_kd.queries import sidecar_path

    return [queries_file(cfg), sidecar_path(queries_file(cfg))]


def _query_set(ctx: Context):
    """The ``queries`` stage's query set, checked against the training corpus."""
    from retrieval_kd.queries import read_query_set

    return read_query_set(queries_file(ctx.config), ctx.collection(ctx.config.dataset))


def labeled_too(cfg: PipelineConfig) -> bool:
    """Whether, besides made-up queries, the ``train_split``'s judged queries get candidates and teacher scores:
    they join the training (``queries.mix_labeled``) or the ensemble's weights are fitted on them."""
    q, tc = cfg.queries, cfg.teachers
    return q.made_up and (q.mix_labeled or (fits_weights(cfg) and tc.fit_on == "split"))


# ------------------------------------------------------------------------------------------------------ mine
def mine(ctx: Context) -> dict:
    """Training candidates (with positives) and BM25 top-``retrieve_top_k`` of every eval set (its first system).

    Made-up training queries (the ``queries`` stage) get their top-k plus their source document; the training
    split's judged queries join, with their judged positives, where they are trained on or fit the weights."""
    from retrieval_kd.data import write_run
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.search import bm25_index_for
    from retrieval_kd.teachers import mine_candidates

    cfg = ctx.config
    train = ctx.collection(cfg.dataset)
    k, sources = cfg.candidates.top_k, tuple(cfg.candidates.sources)
    encoding = ctx.encoding("dense") if "dense" in sources else "torch"
    summary: dict = {}
    if cfg.queries.made_up:
        made = _query_set(ctx)
        cands = mine_candidates(train, None, k=k, sources=sources, queries=made.queries,
                                positives={qid: {doc: 1} for qid, doc in made.sources.items()}, encoding=encoding)
        summary["made_up_queries"] = len(cands)
        if labeled_too(cfg):
            labeled = mine_candidates(train, cfg.train_split, k=k, sources=sources, encoding=encoding)
            clash = sorted(set(labeled) & set(cands))
            if clash:
                raise ConfigError(f"queries: made-up query id {clash[0]!r} is also a query of split "
                                  f"{cfg.train_split!r}; give the made-up queries another queries.id_prefix")
            cands.update(labeled)
            summary["labeled_queries"] = len(labeled)
    else:
        cands = mine_candidates(train, cfg.train_split, k=k, sources=sources, encoding=encoding)
    write_run(cands, ctx.work / "candidates" / "train.run", tag="candidates")
    summary.update(train_queries=len(cands), train_pairs=sum(len(v) for v in cands.values()), eval={})
    for ev in cfg.eval:
        coll = ctx.collection(ev.dataset)
        queries = coll.queries(ev.split)
        run = bm25_index_for(coll).search(queries, top_k=cfg.retrieve_top_k)
        write_run(run, ctx.runs_dir(ev.name) / "bm25.run", tag="bm25")
        summary["eval"][ev.name] = {"queries": len(queries), "docs": len(coll.corpus.ids)}
    return summary


def mine_outputs(cfg: PipelineConfig) -> list[Path]:
    work = cfg.work_dir
    return [work / "candidates" / "train.run"] + [work / "runs" / ev.name / "bm25.run" for ev in cfg.eval]


# ------------------------------------------------------------------------------------------------------ teach
def _members(ctx: Context, dataset: str) -> list:
    """Teacher instances per dataset (a teacher keeps per-corpus caches, e.g. SPLADE's document vectors)."""
    if dataset not in ctx.teachers:
        tc = ctx.config.teachers
        ctx.teachers[dataset] = [teacher_member(s, tc.encoding) for s in tc.members]
    return ctx.teachers[dataset]


def _teacher_vs_start(cfg, members, fit) -> dict | None:
    """The ICT fit's paired comparison of the fitted ensemble with the member that is the dense student's starting
    model (None when no member is): a label-free warning that distillation may lower the student."""
    if cfg.students.dense is None:
        return None
    from retrieval_kd.models.resolve import same_model

    start = student_config(cfg, "dense").model
    at = next((i for i, m in enumerate(members) if m.kind == "bi-encoder" and same_model(m.model_name, start)), None)
    if at is None:
        logger.info("no teacher member is the dense student's start %s: the teacher is not compared with it", start)
        return None
    gain, p = fit.gain_over(at)
    check = {"start": start, "teacher_ndcg@10": round(fit.ndcg, 4), "start_ndcg@10": round(fit.members_ndcg[at], 4),
             "gain": round(gain, 4), "p": p, "queries": fit.queries, "clear": gain > 0 and p < 0.05}
    if not check["clear"]:
        logger.warning("the teacher is not clearly better than the dense student's start %s on the ICT queries "
                       "(nDCG@10 %.4f against %.4f, paired p %.3f): distilling from it may lower the student (on TREC "
                       "DL 2019, where the start was trained, it did; README)", start, fit.ndcg,
                       fit.members_ndcg[at], p)
    return check


def teach(ctx: Context) -> dict:
    """Every member scores the training candidates; the ensemble's weights are fitted on the training split (never
    an eval split) and its scores stored. Then each teacher reranks BM25's top-``rerank_depth`` of every eval set,
    for the report's teacher rows."""
    from retrieval_kd.data import read_run, write_run
    from retrieval_kd.queries.pseudo_qrels import pseudo_qrels
    from retrieval_kd.teachers import EnsembleTeacher, ScoreStore, fit_weights, fit_weights_ict, score_candidates

    cfg, tc = ctx.config, ctx.config.teachers
    train = ctx.collection(cfg.dataset)
    cands = read_run(ctx.work / "candidates" / "train.run")
    store = ctx.work / "scores"
    texts, labeled = None, list(cands)  # None: the collection's query texts
    made = _query_set(ctx) if cfg.queries.made_up else None
    if made is not None:
        texts = dict(made.queries)
        labeled = [q for q in cands if q not in texts]  # the split's judged queries (mixed in, or fitting)
        texts.update({q: train.all_queries[q] for q in labeled})
    members = _members(ctx, cfg.dataset)
    for m in members:
        score_candidates(m, train, cands, store, queries=texts)
    weights, fitted_value, fitted_on, qrels, check = tc.weights, None, None, None, None
    if fits_weights(cfg) and tc.fit_on == "ict":  # label-free: sentences cut out of the corpus's documents
        fit = fit_weights_ict(train, members, tc.fit_queries, seed=cfg.queries.seed, top_k=cfg.candidates.top_k,
                              sources=tuple(cfg.candidates.sources), normalization=tc.normalization,
                              step=tc.fit_step, encoding=ctx.encoding("dense"))
        weights, fitted_value = [round(w, 6) for w in fit.weights], fit.ndcg
        fitted_on = (f"{collection_name(cfg.dataset)}: {fit.queries} sentences cut out of their documents (ICT; "
                     f"members' nDCG@10 there {[round(v, 4) for v in fit.members_ndcg]})")
        check = _teacher_vs_start(cfg, members, fit)
    elif fits_weights(cfg) and tc.fit_on == "sources":  # label-free: each made-up query's source is its positive
        qrels = pseudo_qrels(cands, made.sources, positive="source")
        fitted_on = f"{collection_name(cfg.dataset)}: the sources of {len(qrels)} made-up queries"
    elif fits_weights(cfg) and labeled:
        qrels, fitted_on = train.qrels(cfg.train_split), f"{cfg.dataset}/{cfg.train_split}"
    if qrels is not None:  # fitted on (pseudo-)judged training queries' stored scores
        with ScoreStore(store) as s:  # the fitting queries' candidates only (the store may hold others)
            runs = [s.get(m.fingerprint, qids=[q for q in cands if q in qrels]) for m in members]
        weights, fitted_value = fit_weights(runs, qrels, tc.normalization, step=tc.fit_step)
        weights = [round(float(w), 6) for w in weights]
        logger.info("ensemble weights fitted on %s: %s (nDCG@10 there %.4f)", fitted_on, weights, fitted_value)
    ensemble = EnsembleTeacher(members, weights, normalization=tc.normalization)
    score_candidates(ensemble, train, cands, store, queries=texts)
    summary = {"members": [m.name for m in members], "fingerprints": [m.fingerprint for m in members],
               "ensemble": ensemble.fingerprint, "weights": weights,
               "fitted_on": fitted_on,
               "fitted_ndcg@10": fitted_value, "teacher_vs_start": check, "rerank": {}}
    for ev in cfg.eval:
        coll = ctx.collection(ev.dataset)
        bm25 = read_run(ctx.runs_dir(ev.name) / "bm25.run")
        top = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[: tc.rerank_depth]) for q, d in bm25.items()}
        eval_members = _members(ctx, ev.dataset)
        eval_ensemble = EnsembleTeacher(eval_members, weights, normalization=tc.normalization)
        eval_store = ctx.work / "scores-eval" / ev.name
        score_candidates(eval_ensemble, coll, top, eval_store, queries=coll.queries(ev.split))
        files = {}
        with ScoreStore(eval_store) as s:
            for i, t in enumerate([*eval_members, eval_ensemble]):
                label = "ensemble" if t is eval_ensemble else f"teacher{i}-{slug(t.name, limit=80)}"
                files[label] = t.name
                write_run(s.get(t.fingerprint, qids=list(top)), ctx.runs_dir(ev.name) / f"{label}.run", tag=label)
        summary["rerank"][ev.name] = files
    return summary


def teach_outputs(cfg: PipelineConfig) -> list[Path]:
    return [cfg.work_dir / "scores" / "scores.sqlite"]


# ------------------------------------------------------------------------------------------------------ students
def _train(ctx: Context, kind: str) -> dict:
    from retrieval_kd.students import train_dense, train_sparse

    config = student_config(ctx.config, kind)
    train = ctx.collection(ctx.config.dataset)
    summary = (train_dense if kind == "dense" else train_sparse)(config, train)
    _write_json(Path(config.output_dir).with_name(f"{kind}-log.json"), summary.get("log_history", []))
    out = {k: v for k, v in summary.items() if k != "log_history"}
    out["queries"] = _training_queries_summary(ctx, config)
    return out


def _training_queries_summary(ctx: Context, config) -> dict:
    """Which queries trained a student (for the report): the split's, or a made-up query set with its counts."""
    data = config.data
    if not data.queries:
        return {"source": "split", "split": data.split, "positives": data.positives}
    from retrieval_kd.queries import read_query_set

    made = read_query_set(data.queries)
    counts = made.counts
    return {"source": ctx.config.queries.source if ctx.config.queries.made_up else "data.queries",
            "file": str(data.queries), "method": made.method, "kept": len(made),
            "candidates": counts.get("candidates"), "documents": counts.get("documents"),
            "dropped": counts.get("dropped") or {}, "positives": data.positives, "mix_labeled": data.mix_labeled,
            "split": data.split if data.mix_labeled else None}


def train_dense_stage(ctx: Context) -> dict:
    """Distil the ensemble into the dense student (resumes from its newest checkpoint after a kill); with
    ``students.dense.weak_teacher: keep-start``, save the start untrained instead when the teach stage's label-free
    check did not find the teacher clearly better than it."""
    if ctx.config.students.dense.weak_teacher == "keep-start":
        marker = ctx.work / "stages" / "teach.json"
        stored = json.loads(marker.read_text())["summary"] if marker.is_file() else {}
        check, config = current_check(ctx.config, stored), student_config(ctx.config, "dense")
        if check is None and stored.get("teacher_vs_start"):
            logger.warning("students.dense.weak_teacher: keep-start, but the teach stage checked the teacher against "
                           "%s, not the present start %s: the student is trained (rerun teach to check it)",
                           stored["teacher_vs_start"]["start"], config.model)
        elif check is not None and not check["clear"]:
            from retrieval_kd.students.dense import keep_start

            reason = (f"The teacher was not clearly better than the start on {check['queries']} ICT queries "
                      f"(nDCG@10 {check['teacher_ndcg@10']:.4f} against {check['start_ndcg@10']:.4f}, "
                      f"{check['gain']:+.4f}, paired p {check['p']:.3g}; students.dense.weak_teacher: keep-start).")
            out = keep_start(config, reason)
            _write_json(Path(config.output_dir).with_name("dense-log.json"), [])  # no curve of an earlier run
            out["queries"] = _training_queries_summary(ctx, config)
            return out
        elif check is None:
            logger.warning("students.dense.weak_teacher: keep-start, but the teach stage stored no check of the "
                           "teacher against the dense student's start (no member is the start, or the stage ran "
                           "before the check existed): the student is trained")
    return _train(ctx, "dense")


def train_sparse_stage(ctx: Context) -> dict:
    """Distil the ensemble into the inference-free sparse student (resumes like the dense one)."""
    return _train(ctx, "sparse")


# ------------------------------------------------------------------------------------------------------ index
def _dense_student(ctx: Context) -> tuple[str, int]:
    config = student_config(ctx.config, "dense")
    return str(config.output_dir), int(config.max_seq_length)


def index_names(cfg: PipelineConfig) -> list[str]:
    """Folder names of the dense indexes the config asks for (the same for every eval set)."""
    names = []
    for kind in cfg.index.types:
        if kind in ("flat", "hnsw"):
            names.append(kind)
        else:
            names += [f"{kind}-{b}" for b in cfg.index.bytes]
    return names


def build_indexes(ctx: Context) -> dict:
    """Per eval set: the dense student's corpus embeddings in each FAISS index type and code size (Distill-VQ
    trained on the training queries when the eval corpus is the training corpus, else on pseudo-queries alone),
    and the sparse student's inverted index."""
    from retrieval_kd.encoders import corpus_embeddings, query_embeddings
    from retrieval_kd.index import export_faiss
    from retrieval_kd.index.dense import build_faiss_index, bytes_per_vector, corpus_identity, save_index
    from retrieval_kd.quantization import DistillVQConfig, train_distill_vq

    cfg, ix = ctx.config, ctx.config.index
    summary: dict = {}
    for ev in cfg.eval:
        if ev.corpus in summary:  # built for an earlier eval set on the same corpus
            continue
        coll = ctx.collection(ev.dataset)
        out, rows = ctx.index_dir(ev.corpus), {}
        if cfg.students.dense is not None and ix.types:
            model, max_len = _dense_student(ctx)
            encoding = ctx.encoding("dense")
            docs = np.ascontiguousarray(corpus_embeddings(model, coll.corpus, max_len, encoding=encoding),
                                        dtype=np.float32)
            train_q = np.zeros((0, docs.shape[1]), dtype=np.float32)
            use_train = ix.distill_vq_queries == "train" or (ix.distill_vq_queries == "auto" and ev.dataset == cfg.dataset)
            if use_train and "distill-vq" in ix.types:
                train_q = query_embeddings(model, _index_train_queries(ctx), max_len, encoding=encoding)
            for name in index_names(cfg):
                kind, size = (name.rsplit("-", 1) if name not in ("flat", "hnsw") else (name, None))
                t0 = time.perf_counter()
                meta = {"encoder": model, "max_seq_length": max_len, "kind": kind, "dataset": ev.dataset,
                        **corpus_identity(coll.corpus),
                        **({"encoding": encoding.describe()} if encoding.backend != "torch" else {})}
                if kind == "distill-vq":
                    params = {"pseudo_queries": 3000, "seed": 0, **ix.distill_vq, "nlist": ix.nlist, "m": int(size)}
                    # per-epoch checkpoints: a kill mid-training resumes at the last finished epoch
                    checkpoints = ctx.work / "checkpoints" / "distill-vq" / ev.corpus / name
                    trained = train_distill_vq(docs, train_q, DistillVQConfig(**params), checkpoint_dir=checkpoints)
                    index = export_faiss(trained.module, lists=trained.lists, codes=trained.codes)
                    meta.update(distill_vq=params, train_queries=len(train_q), history=trained.history)
                else:
                    checkpoints = None
                    index = build_faiss_index(kind, docs, nlist=ix.nlist, m=int(size or 0) or 48)
                meta.update(nlist=ix.nlist if kind not in ("flat", "hnsw", "pq") else None)
                save_index(index, out / name, coll.corpus.ids, meta)
                if checkpoints is not None:
                    shutil.rmtree(checkpoints, ignore_errors=True)  # the index folder is in place
                rows[name] = {"bytes_per_vector": bytes_per_vector(index),
                              "seconds": round(time.perf_counter() - t0, 1)}
                logger.info("%s: built %s (%.0f bytes/vector) in %.1f s", ev.name, name,
                            rows[name]["bytes_per_vector"], rows[name]["seconds"])
        if cfg.students.sparse is not None:
            rows["sparse"] = _sparse_index(ctx, ev.dataset, out / "sparse")
        summary[ev.corpus] = rows
    return summary


def _index_train_queries(ctx: Context) -> dict[str, str]:
    """Distill-VQ's training queries: the students' own, i.e. the training split's queries, or the made-up
    queries (with the split's judged ones where ``queries.mix_labeled``): no split is needed without labels."""
    cfg = ctx.config
    train = ctx.collection(cfg.dataset)
    if not cfg.queries.made_up:
        return train.queries(cfg.train_split)
    texts = dict(_query_set(ctx).queries)
    if cfg.queries.mix_labeled:
        texts.update(train.queries(cfg.train_split))
    return texts


def _sparse_index(ctx: Context, dataset: str, folder: Path) -> dict:
    from retrieval_kd.index.sparse import build_sparse_index

    config = student_config(ctx.config, "sparse")
    index = build_sparse_index(str(config.output_dir), ctx.collection(dataset).corpus, folder,
                               prune=ctx.config.index.sparse_prune, max_seq_length=config.max_seq_length,
                               dataset=dataset, encoding=ctx.encoding("sparse"))
    return {"nnz_per_doc": round(index.nnz_per_doc(), 1)}


def index_outputs(cfg: PipelineConfig) -> list[Path]:
    out = []
    for corpus in dict.fromkeys(ev.corpus for ev in cfg.eval):
        base = cfg.work_dir / "indexes" / corpus
        if cfg.students.dense is not None:
            out += [base / n / "rkd_index.json" for n in index_names(cfg)]
        if cfg.students.sparse is not None:
            out.append(base / "sparse" / "rkd_index.json")
    return out


# ------------------------------------------------------------------------------------------------------ retrieve
def _timed_search(index, q: np.ndarray, k: int, nprobe: int | None, repeats: int = 3):
    from retrieval_kd.index.dense import search_index

    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = search_index(index, q, k, nprobe=nprobe, ef_search=128)
        best = min(best, time.perf_counter() - t0)
    return result, len(q) / best


def retrieve(ctx: Context) -> dict:
    """Runs of every system on every eval set (TREC files), and the nprobe sweep: queries/s (one thread, best of
    3, all queries in one batch) against Recall@10 = the share of exact search's top-10 found."""
    from faiss.contrib.evaluation import knn_intersection_measure

    from retrieval_kd.data import write_run
    from retrieval_kd.encoders import query_embeddings
    from retrieval_kd.index.dense import check_corpus, load_index, search_threads
    from retrieval_kd.search.dense import dense_search, hits_to_run

    cfg, ix = ctx.config, ctx.config.index
    summary: dict = {}
    k = cfg.retrieve_top_k
    for ev in cfg.eval:
        coll = ctx.collection(ev.dataset)
        queries = coll.queries(ev.split)
        qids = list(queries)
        runs_dir, files = ctx.runs_dir(ev.name), []

        def save(name: str, run: dict, runs_dir=runs_dir, files=files) -> None:
            write_run(run, runs_dir / f"{name}.run", tag=name)
            files.append(name)

        speed: dict = {}
        if cfg.students.dense is not None:
            init, encoding = student_config(cfg, "dense"), ctx.encoding("dense")
            save("dense-initial", dense_search(init.model, coll, queries, k, init.max_seq_length, encoding=encoding))
            model, max_len = _dense_student(ctx)
            q = query_embeddings(model, queries, max_len, encoding=encoding)
            exact = None
            for name in index_names(cfg):
                index, doc_ids, meta = load_index(ctx.index_dir(ev.corpus) / name)
                check_corpus(meta, coll.corpus, ctx.index_dir(ev.corpus) / name, doc_ids)
                nprobe = ix.nprobe if meta.get("nlist") else None
                with search_threads(ix.threads):
                    (scores, rows), qps = _timed_search(index, q, min(k, index.ntotal), nprobe)
                    sweep = ix.speed_nprobe if meta.get("nlist") else [None]
                    points = []
                    for p in sweep:
                        (_, r10), qps = _timed_search(index, q, 10, p)
                        points.append({"nprobe": p, "qps": round(qps, 1), "rows": r10})
                save(f"dense-{name}", hits_to_run(scores, rows, doc_ids, qids))
                if name == "flat":
                    exact = rows[:, :10]
                speed[name] = {"bytes_per_vector": meta["bytes_per_vector"], "points": points}
            for entry in speed.values():
                for pt in entry["points"]:
                    r10 = pt.pop("rows")
                    if exact is not None:
                        # the share of exact search's top-10 found (fewer columns where the corpus is smaller)
                        pt["recall@10"] = round(float(knn_intersection_measure(r10[:, :exact.shape[1]], exact)), 4)
        if cfg.students.sparse is not None:
            from retrieval_kd.encoders.sparse import load_sparse_encoder
            from retrieval_kd.index.sparse import QueryTokenizer, SparseIndex

            config = student_config(cfg, "sparse")
            index, sparse_meta = SparseIndex.load(ctx.index_dir(ev.corpus) / "sparse")
            check_corpus(sparse_meta, coll.corpus, ctx.index_dir(ev.corpus) / "sparse", index.doc_ids)
            query_side = QueryTokenizer.from_sparse_encoder(load_sparse_encoder(config.output_dir))
            t0 = time.perf_counter()
            run = index.search_many(query_side.encode_many(queries), k=k)
            speed["sparse"] = {"points": [{"qps": round(len(queries) / (time.perf_counter() - t0), 1)}]}
            save("sparse-inference-free", run)
        _write_json(ctx.work / "speed" / f"{ev.name}.json", speed)
        summary[ev.name] = files
    return summary


def retrieve_outputs(cfg: PipelineConfig) -> list[Path]:
    return [cfg.work_dir / "speed" / f"{ev.name}.json" for ev in cfg.eval]


# ------------------------------------------------------------------------------------------------------ evaluate
def evaluate_runs(ctx: Context) -> dict:
    """ranx means of every run, and a paired t-test (ranx, Student) of each against BM25 on the same queries."""
    from retrieval_kd.data import read_run
    from retrieval_kd.eval import check_run, compare, evaluate

    cfg = ctx.config
    out: dict = {}
    for ev in cfg.eval:
        coll = ctx.collection(ev.dataset)
        qrels, conv = coll.qrels(ev.split), coll.conventions_for(ev.split)
        runs = {p.stem: read_run(p) for p in sorted(ctx.runs_dir(ev.name).glob("*.run"))}
        for name, run in runs.items():  # a run of another corpus or query set would evaluate to 0 silently
            check_run(run, qrels, coll.corpus, source=str(ctx.runs_dir(ev.name) / f"{name}.run"))
        rows = {}
        for name, run in runs.items():
            res = evaluate(qrels, run, cfg.metrics, conv.relevance_level, conv.ignore_identical_ids)
            rows[name] = {"scores": {m: round(v, 4) for m, v in res.scores.items()}, "queries": res.n_queries}
            if name != "bm25" and "bm25" in runs:
                report = compare(qrels, {"bm25": runs["bm25"], name: run}, cfg.metrics, conv.relevance_level,
                                 ignore_identical_ids=conv.ignore_identical_ids).to_dict()
                p_values = {m: float(report[name]["comparisons"]["bm25"][_ranx(m, conv)]) for m in cfg.metrics}
                # NaN (a ranking identical to BM25's) is stored as null: metrics.json stays strict JSON
                rows[name]["p_vs_bm25"] = {m: (None if p != p else p) for m, p in p_values.items()}
        out[ev.name] = {"dataset": ev.dataset, "split": ev.split, "relevance_level": conv.relevance_level,
                        "ignore_identical_ids": conv.ignore_identical_ids, "runs": rows}
    _write_json(ctx.work / "metrics.json", out)
    return {ev: {n: r["scores"].get(cfg.metrics[0]) for n, r in v["runs"].items()} for ev, v in out.items()}


def _ranx(metric: str, conv) -> str:
    from retrieval_kd.eval.evaluate import ranx_metric_name

    return ranx_metric_name(metric, conv.relevance_level)


# ------------------------------------------------------------------------------------------------------ report
def report(ctx: Context) -> dict:
    from retrieval_kd.pipeline.report import write_report

    path = write_report(ctx.work, ctx.config)
    return {"report": str(path)}
