"""Encoding backends against torch fp32: documents/s and queries/s, memory, and SciFact nDCG@10 of their vectors.

Usage: python benchmarks/encoding.py [--dense-student DIR] [--sparse-student DIR] [--backends ...]
       [--speed-passages 256] [--passages N] [--no-ndcg] [--output benchmarks/results/encoding.json]

Models: all-MiniLM-L6-v2 (``minilm``) and rkd-local/splade-tiny (``splade_tiny``, siamese SPLADE), and with the
flags a distilled dense student (``dense_student``, default experiments/scifact-dense/student when it exists) and
an inference-free sparse student (``sparse_student``, default experiments/scifact-sparse/student); a missing one is
recorded as skipped. Backends: those of :mod:`retrieval_kd.encoders.backends` (torch is the reference).

Speed: the ``--speed-passages`` first SciFact passages (documents; SPLADE models encode the document side) and
the test queries, at batch 1 and 32 and 1 and 2 threads, max_seq_length 256 for all. Each (batch, threads) cell
times every backend once per round, alternating backends within the round, best of ``--rounds``; one warm-up
pass per backend first (``first_pass_s``: its time, torch.compile's compilation included). ``peak_rss_mb`` is the process's peak resident memory sampled while that backend
encoded (the models of all backends stay loaded, so it is an upper bound). ``cosine_min`` is the lowest cosine of
a backend's vectors to torch's on the speed slice.

Quality (unless ``--no-ndcg``): each backend encodes the corpus (cached per backend under the project cache) and
the test queries; exact search (a FAISS flat index for dense vectors, sparse dot products for SPLADE; an
inference-free student's queries are tokenised, the same for every backend); nDCG@10 and its delta to torch.
``best`` is the fastest backend at batch 32 and 2 threads whose nDCG@10 is within 0.003 of torch's (any backend
when nDCG is not measured). The lead's target: best >= 3x torch docs/s for the dense student and the sparse
document encoder.

Writes benchmarks/results/encoding.json: {"hardware": {..., "cpu_flags", "isa"}, "settings": {...},
"<model>": {"torch": {"docs_per_s", "queries_per_s", "speed": [...], "ndcg_at_10"}, "<backend>": {...,
"speedup", "ndcg_at_10_delta"}, "best": {"backend", "docs_per_s", "speedup", "ndcg_at_10_delta"}}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SPLADE = "rkd-local/splade-tiny"
BACKENDS = ["torch", "torch-bf16", "torch-bf16-compile", "onnx", "onnx-int8", "openvino"]
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
NDCG_TOLERANCE = 0.003

logger = logging.getLogger("benchmarks.encoding")


class PeakRss:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 10 ms from /proc."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as fh:
                import os

                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return float("nan")

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())


def load(model: str, kind: str, backend: str, threads: int):
    """An encoder of ``model`` for ``backend`` with ``threads`` threads (torch's own for the torch backends)."""
    import torch

    from retrieval_kd.encoders import load_encoder
    from retrieval_kd.encoders.backends import resolve_encoding
    from retrieval_kd.encoders.runtime import load_dense_encoder, load_sparse_encoder
    from retrieval_kd.encoders.sparse import load_sparse_encoder as load_torch_sparse

    torch.set_num_threads(threads)
    if backend == "torch":
        if kind == "dense":
            return load_encoder(model, 256)
        encoder = load_torch_sparse(model)
        encoder.max_seq_length = 256
        return encoder
    encoding = resolve_encoding(backend, kind, model)
    if kind == "dense":
        return load_dense_encoder(model, encoding, 256, threads=threads)
    return load_sparse_encoder(model, encoding, 256, threads=threads)


def encode(encoder, kind: str, texts: list[str], batch_size: int, queries: bool = False) -> np.ndarray:
    """Vectors of ``texts`` as a float32 array (documents, or queries of a siamese model)."""
    from retrieval_kd.encoders.sparse import to_scipy

    if kind == "dense":
        return np.asarray(encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True), dtype=np.float32)
    method = encoder.encode_query if queries else encoder.encode_document
    return to_scipy(method(texts, batch_size=batch_size, convert_to_sparse_tensor=True))


def cosine_min(a, b) -> float:
    import scipy.sparse as sp

    a = a.toarray() if sp.issparse(a) else a
    b = b.toarray() if sp.issparse(b) else b
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = norms > 0
    return float(((a * b).sum(1)[ok] / norms[ok]).min()) if ok.any() else 1.0


def siamese(model: str) -> bool:
    """Whether a sparse model's queries take its document path (else: inference-free, tokenised queries)."""
    from retrieval_kd.encoders.sparse import load_sparse_encoder
    from retrieval_kd.index.sparse import QueryTokenizer

    try:
        QueryTokenizer.from_sparse_encoder(load_sparse_encoder(model))
        return False
    except ValueError:
        return True


def speed(model: str, kind: str, backends: list[str], docs: list[str], queries: list[str], batches: list[int],
          threads_list: list[int], rounds: int, with_queries: bool) -> dict:
    """``{backend: {"speed": [cells], "peak_rss_mb", "cosine_min", "isa"}}``; ``{backend: {"error"}}`` if it fails."""
    out: dict = {b: {"speed": []} for b in backends}
    for threads in threads_list:
        encoders = {}
        for backend in backends:
            try:
                encoders[backend] = load(model, kind, backend, threads)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is recorded, not fatal
                logger.warning("%s: %s unavailable: %s", model, backend, exc)
                out[backend] = {"error": f"{type(exc).__name__}: {exc}"}
        for backend, encoder in encoders.items():
            out[backend]["isa"] = getattr(getattr(encoder, "rkd_encoding", None), "isa", "")
        import torch

        for batch in batches:
            best = {b: [np.inf, np.inf] for b in encoders}
            reference, first = None, {}
            for backend, encoder in encoders.items():  # warm-up, and the accuracy check against torch
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                with PeakRss() as rss:
                    vectors = encode(encoder, kind, docs, batch)
                first[backend] = time.perf_counter() - t0  # includes torch.compile's compilation
                cell = out[backend]
                cell["peak_rss_mb"] = round(max(cell.get("peak_rss_mb", 0), rss.peak), 1)
                if backend == "torch":
                    reference = vectors
                elif reference is not None:
                    cell["cosine_min"] = round(min(cell.get("cosine_min", 1.0), cosine_min(vectors, reference)), 6)
            for _ in range(rounds):
                for backend, encoder in encoders.items():
                    torch.set_num_threads(threads)
                    t0 = time.perf_counter()
                    encode(encoder, kind, docs, batch)
                    best[backend][0] = min(best[backend][0], time.perf_counter() - t0)
                    if with_queries:
                        t0 = time.perf_counter()
                        encode(encoder, kind, queries, batch, queries=kind == "sparse")
                        best[backend][1] = min(best[backend][1], time.perf_counter() - t0)
            for backend in encoders:
                row = {"batch": batch, "threads": threads, "docs_per_s": round(len(docs) / best[backend][0], 2),
                       "queries_per_s": round(len(queries) / best[backend][1], 2) if with_queries else None,
                       "first_pass_s": round(first[backend], 2)}
                out[backend]["speed"].append(row)
                logger.info("%s %-10s batch %2d threads %d: %8.1f docs/s %8s queries/s", model, backend, batch, threads,
                            row["docs_per_s"], row["queries_per_s"])
        del encoders
    return out


def ndcg(model: str, kind: str, backend: str, collection, n_passages: int | None, is_siamese: bool) -> float:
    """nDCG@10 on SciFact test of exact search over ``backend``'s vectors (corpus vectors cached per backend)."""
    from retrieval_kd.eval import evaluate

    qrels, queries = collection.qrels("test"), collection.queries("test")
    ids = collection.corpus.ids[:n_passages] if n_passages else collection.corpus.ids
    qrels = {q: {d: g for d, g in rel.items() if d in set(ids)} for q, rel in qrels.items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    queries = {q: t for q, t in queries.items() if q in qrels}
    level = collection.conventions.relevance_level
    encoding = backend
    if kind == "dense":
        from retrieval_kd.encoders import corpus_embeddings, load_encoder, query_embeddings
        from retrieval_kd.index.dense import build_faiss_index, search_index

        if n_passages:
            encoder = load_encoder(model, 256, encoding=encoding)
            docs = encode(encoder, kind, collection.corpus.texts(ids), 32)
            q = encode(encoder, kind, list(queries.values()), 32)
        else:
            docs = np.asarray(corpus_embeddings(model, collection.corpus, 256, encoding=encoding), dtype=np.float32)
            q = query_embeddings(model, queries, 256, encoding=encoding)
        scores, rows = search_index(build_faiss_index("flat", np.ascontiguousarray(docs)), q, min(100, len(ids)))
    else:
        from retrieval_kd.encoders.sparse import load_sparse_encoder, sparse_corpus_vectors, sparse_query_vectors
        from retrieval_kd.index.sparse import QueryTokenizer

        encoder = load_sparse_encoder(model, encoding=encoding)
        encoder.max_seq_length = 256
        if n_passages:
            docs = encode(encoder, kind, collection.corpus.texts(ids), 32)
        else:
            docs = sparse_corpus_vectors(model, collection.corpus, 256, encoder=encoder)
        if is_siamese:
            q = sparse_query_vectors(encoder, queries)
        else:  # inference-free: tokens x static weights, the same for every backend
            import scipy.sparse as sp

            tokenizer = QueryTokenizer.from_sparse_encoder(load_sparse_encoder(model))
            rows_, cols, vals = [], [], []
            for i, (tok, w) in enumerate(tokenizer.encode_many(queries).values()):
                rows_ += [i] * len(tok)
                cols += list(tok)
                vals += list(w)
            q = sp.csr_matrix((vals, (rows_, cols)), shape=(len(queries), docs.shape[1]), dtype=np.float32)
        dense_scores = (q @ docs.T).toarray()
        k = min(100, len(ids))
        rows = np.argsort(-dense_scores, axis=1)[:, :k]
        scores = np.take_along_axis(dense_scores, rows, axis=1)
    run = {qid: {ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
           for i, qid in enumerate(queries)}
    return round(evaluate(qrels, run, ["ndcg@10"], level).scores["ndcg@10"], 4)


def summarise(model_out: dict, backends: list[str]) -> None:
    """Headline numbers per backend (batch 32, 2 threads, else the largest measured) and the best backend."""
    def headline(cells: list[dict]) -> dict:
        return max(cells, key=lambda c: (c["batch"] == 32 and c["threads"] == 2, c["batch"], c["threads"]))

    torch_cell = headline(model_out["torch"]["speed"]) if model_out.get("torch", {}).get("speed") else None
    candidates = []
    for backend in backends:
        entry = model_out.get(backend, {})
        if not entry.get("speed"):
            continue
        cell = headline(entry["speed"])
        entry.update(docs_per_s=cell["docs_per_s"], queries_per_s=cell["queries_per_s"],
                     headline={"batch": cell["batch"], "threads": cell["threads"]})
        if torch_cell and backend != "torch":
            entry["speedup"] = round(cell["docs_per_s"] / torch_cell["docs_per_s"], 2)
            if "ndcg_at_10" in entry and "ndcg_at_10" in model_out["torch"]:
                entry["ndcg_at_10_delta"] = round(entry["ndcg_at_10"] - model_out["torch"]["ndcg_at_10"], 4)
            within = abs(entry.get("ndcg_at_10_delta", 0.0)) <= NDCG_TOLERANCE
            candidates.append((within, cell["docs_per_s"], backend))
    if candidates:
        _, _, backend = max(candidates)
        entry = model_out[backend]
        model_out["best"] = {"backend": backend, "docs_per_s": entry["docs_per_s"], "speedup": entry.get("speedup"),
                             "ndcg_at_10_delta": entry.get("ndcg_at_10_delta"),
                             "ndcg_within_tolerance": abs(entry.get("ndcg_at_10_delta") or 0.0) <= NDCG_TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-student", default=str(ROOT / "experiments" / "scifact-dense" / "student"))
    parser.add_argument("--sparse-student", default=str(ROOT / "experiments" / "scifact-sparse" / "student"))
    parser.add_argument("--models", nargs="+", default=["minilm", "splade_tiny", "dense_student", "sparse_student"])
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--speed-passages", type=int, default=256, help="passages timed per cell")
    parser.add_argument("--speed-queries", type=int, default=300, help="test queries timed per cell")
    parser.add_argument("--passages", type=int, default=None,
                        help="nDCG on the first N passages only (a smoke test; default the whole corpus)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ndcg", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "encoding.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "faiss", "torch",
                  "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from retrieval_kd.data import load_collection
    from retrieval_kd.data.formats import atomic_write
    from retrieval_kd.encoders.backends import cpu_flags, isa_target
    from retrieval_kd.utils.hardware import hardware_info

    if "torch" not in args.backends:
        args.backends = ["torch", *args.backends]
    collection = load_collection(args.dataset)
    docs = collection.corpus.texts(collection.corpus.ids[:args.speed_passages])
    queries = list(collection.queries("test").values())[:args.speed_queries]
    flags = cpu_flags()
    isa = {}
    for backend in args.backends:
        try:
            isa[backend] = isa_target(backend)
        except Exception as exc:  # noqa: BLE001 - openvino missing
            isa[backend] = f"unavailable: {exc}"
    result: dict = {
        "hardware": {**hardware_info(("retrieval-kd", "torch", "sentence-transformers", "transformers", "onnx",
                                      "onnxruntime", "openvino", "numpy")),
                     "cpu_flags": sorted(f for f in FLAGS if f in flags), "isa": isa},
        "settings": {"dataset": args.dataset, "max_seq_length": 256, "speed_passages": len(docs),
                     "speed_queries": len(queries), "batch_sizes": args.batch_sizes, "threads": args.threads,
                     "rounds": args.rounds, "ndcg_passages": args.passages or len(collection.corpus.ids),
                     "ndcg_tolerance": NDCG_TOLERANCE, "headline": {"batch": 32, "threads": 2}},
    }
    models = {"minilm": (MINILM, "dense"), "splade_tiny": (SPLADE, "sparse"),
              "dense_student": (args.dense_student, "dense"), "sparse_student": (args.sparse_student, "sparse")}
    for name in args.models:
        model, kind = models[name]
        if name.endswith("_student") and not Path(model).is_dir():
            result[name] = {"model": model, "skipped": f"no student folder at {model} (train it, or pass --{name.replace('_', '-')})"}
            continue
        is_siamese = kind == "dense" or siamese(model)
        out = {"model": model, "kind": kind, "siamese": is_siamese,
               **speed(model, kind, args.backends, docs, queries, args.batch_sizes, args.threads, args.rounds,
                       with_queries=is_siamese)}
        if not args.no_ndcg:
            for backend in args.backends:
                if "error" in out.get(backend, {}):
                    continue
                out[backend]["ndcg_at_10"] = ndcg(model, kind, backend, collection, args.passages, is_siamese)
                logger.info("%s %s: nDCG@10 %.4f", name, backend, out[backend]["ndcg_at_10"])
        summarise(out, args.backends)
        result[name] = out
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.output) as fh:  # after every model: a partial run keeps its rows
            fh.write(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v.get("best", v.get("skipped")) for k, v in result.items() if k not in ("hardware", "settings")},
                     indent=1))


if __name__ == "__main__":
    main()
