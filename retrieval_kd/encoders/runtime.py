"""Encoders that run a graph (:mod:`retrieval_kd.encoders.graphs`) in torch-bf16, onnxruntime or OpenVINO.

:class:`GraphEncoder` stands in for a SentenceTransformer / SparseEncoder where the project encodes: ``encode``
(dense: a float32 array; sparse: a torch sparse tensor), ``encode_document`` and ``encode_query`` (sparse),
``tokenizer`` and a settable ``max_seq_length``. Texts are tokenised as sentence-transformers does (padding to the
batch's longest, truncation at ``max_seq_length``) and batched longest first, so the rows match its output up to
the backend's arithmetic. :func:`load_dense_encoder` / :func:`load_sparse_encoder` build one for an
:class:`~retrieval_kd.encoders.backends.Encoding`, exporting the model first where the backend needs a graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval_kd.encoders.backends import TORCH_BF16, Encoding, require
from retrieval_kd.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)

__all__ = ["GraphEncoder", "load_dense_encoder", "load_sparse_encoder", "onnxruntime_runner", "openvino_runner",
           "torch_runner"]

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: SPLADE graphs hold (rows, seq, vocab) logits inside: a batch runs in slices of this many tokens (about 250 MB
#: of fp32 logits for BERT's vocabulary), which bounds memory at the same speed (rows are independent)
SPARSE_TOKENS_PER_RUN = 2048


def torch_runner(graph, bf16: bool = True, compile: bool = False) -> Runner:
    """Run a torch graph module, under ``torch.autocast("cpu", dtype=torch.bfloat16)`` when ``bf16``;
    ``compile``: ``torch.compile(dynamic=True)`` first (compiled on the first call, once for all shapes)."""
    import torch

    module = torch.compile(graph, dynamic=True) if compile else graph

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = module(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return out.float().numpy()

    return run


def _threads(threads: int | None) -> int:
    if threads:
        return int(threads)
    import torch

    return torch.get_num_threads()


def onnxruntime_runner(path: str | Path, threads: int | None = None) -> Runner:
    """An onnxruntime CPU session of ``path`` (all graph optimisations; exact GELU is kept, never approximated)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return run


def openvino_runner(path: str | Path, threads: int | None = None) -> Runner:
    """``path`` compiled by OpenVINO for the CPU, in its default precision there (bf16 on AMX machines)."""
    ov = require("openvino", "openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": _threads(threads),
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.array(request.infer({"input_ids": input_ids, "attention_mask": attention_mask})[output], copy=True)

    return run


class GraphEncoder:
    """A dense or SPLADE encoder over a graph runner, with the encode methods of sentence-transformers.

    Args:
        run: ``(input_ids, attention_mask) -> (batch, dim)`` float array.
        tokenizer: the model's tokenizer.
        kind: ``dense`` or ``sparse``.
        encoding: what the runner computes in (carried into cache keys as ``rkd_encoding``).
        max_seq_length: truncation, in tokens.
        dimension: output width (the vocabulary size for SPLADE).
        normalized: the dense graph outputs L2-normalised vectors.
        include_prompt: the dense pooling includes prompt tokens (prompts are refused when it does not).
        siamese: a SPLADE model whose queries take the document path (else ``encode_query`` is refused).
        document_prompt: prepended to documents, as the model's ``document`` prompt.
        lowercase: lowercase texts first (a Transformer module with ``do_lower_case``).
    """

    def __init__(self, run: Runner, tokenizer, kind: str, encoding: Encoding, max_seq_length: int, dimension: int,
                 normalized: bool = True, include_prompt: bool = True, siamese: bool = True,
                 document_prompt: str | None = None, lowercase: bool = False):
        self._run, self.tokenizer, self.kind, self.rkd_encoding = run, tokenizer, kind, encoding
        self.max_seq_length, self.dimension, self.normalized = max_seq_length, dimension, normalized
        self.include_prompt, self.siamese, self.document_prompt = include_prompt, siamese, document_prompt
        self.lowercase = lowercase

    def __repr__(self) -> str:
        return f"GraphEncoder({self.kind}, {self.rkd_encoding.backend}, {self.rkd_encoding.isa})"

    def __getitem__(self, index):
        """No modules to index (code that looks for a SparseEncoder's Router learns it is not one)."""
        raise ValueError(f"{self!r} runs a graph and has no sentence-transformers modules")

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    get_embedding_dimension = get_sentence_embedding_dimension

    def _batches(self, texts: list[str], batch_size: int, show_progress_bar: bool | None):
        """``(rows, vectors)`` per batch, longest texts first (as sentence-transformers orders them)."""
        from retrieval_kd.utils.progress import progress

        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            starts = progress(starts, desc=f"encode ({self.rkd_encoding.backend})", unit="batch")
        for start in starts:
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation="longest_first",
                                   max_length=self.max_seq_length, return_tensors="np")
            ids = np.ascontiguousarray(batch["input_ids"], dtype=np.int64)
            mask = np.ascontiguousarray(batch["attention_mask"], dtype=np.int64)
            step = max(1, SPARSE_TOKENS_PER_RUN // ids.shape[1]) if self.kind == "sparse" else len(rows)
            yield rows, np.concatenate([np.asarray(self._run(ids[i:i + step], mask[i:i + step]), dtype=np.float32)
                                        for i in range(0, len(rows), step)])

    def _texts(self, sentences, prompt: str | None) -> list[str]:
        texts = [sentences] if isinstance(sentences, str) else [str(s) for s in sentences]
        texts = [prompt + t for t in texts] if prompt else texts
        return [t.lower() for t in texts] if self.lowercase else texts

    def encode(self, sentences, batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, normalize_embeddings: bool = False,
               prompt: str | None = None, convert_to_sparse_tensor: bool = True, **kwargs):
        """Dense: ``(n, dim)`` float32 (a row for a single string); sparse: a ``(n, vocab)`` torch sparse tensor."""
        if self.kind == "sparse":
            return self._sparse(self._texts(sentences, prompt), batch_size, show_progress_bar, convert_to_sparse_tensor)
        if prompt and not self.include_prompt:
            raise ValueError("this model's pooling leaves prompt tokens out, which the exported graph cannot; "
                             "encode with encoding 'torch'")
        texts = self._texts(sentences, prompt)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for rows, vectors in self._batches(texts, batch_size, show_progress_bar):
            out[rows] = vectors
        if normalize_embeddings and not self.normalized and len(out):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if convert_to_tensor:
            import torch

            out = torch.from_numpy(out)
        return out[0] if isinstance(sentences, str) else out

    def _sparse(self, texts: list[str], batch_size: int, show_progress_bar: bool | None, to_sparse: bool):
        import scipy.sparse as sp
        import torch

        parts, order = [], []
        for rows, vectors in self._batches(texts, batch_size, show_progress_bar):
            parts.append(sp.csr_matrix(vectors))
            order.append(rows)
        matrix = sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, self.dimension), dtype=np.float32)
        if parts:
            matrix = matrix[np.argsort(np.concatenate(order))]
        coo = matrix.tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        tensor = torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data.astype(np.float32)),
                                         (len(texts), self.dimension), check_invariants=False).coalesce()
        return tensor if to_sparse else tensor.to_dense()

    def encode_document(self, sentences, batch_size: int = 32, prompt: str | None = None, **kwargs):
        return self.encode(sentences, batch_size=batch_size, prompt=prompt or self.document_prompt, **kwargs)

    def encode_query(self, sentences, batch_size: int = 32, **kwargs):
        if self.kind == "sparse" and not self.siamese:
            raise UnavailableError("this SparseEncoder's queries take another route than its documents; the "
                                   "exported graph is the document side: encode queries with encoding 'torch'")
        return self.encode(sentences, batch_size=batch_size, **kwargs)


def _runner(folder: Path, backend: str, threads: int | None) -> Runner:
    if backend == "openvino":
        return openvino_runner(folder / "model.onnx", threads)
    return onnxruntime_runner(folder / "model.onnx", threads)


def _check_device(device: str | None, encoding: Encoding) -> None:
    if device not in (None, "cpu"):
        raise ConfigError(f"encoding {encoding.backend!r} runs on the CPU, not {device!r}; use encoding 'torch' "
                          "on accelerators")


def _from_folder(folder: Path, kind: str, encoding: Encoding, max_seq_length: int | None,
                 threads: int | None) -> GraphEncoder:
    from transformers import AutoTokenizer

    from retrieval_kd.encoders.export import read_export_meta

    meta = read_export_meta(folder)
    if meta["kind"] != kind:
        raise ConfigError(f"{folder}: an exported {meta['kind']} encoder, not a {kind} one")
    return GraphEncoder(_runner(folder, encoding.backend, threads), AutoTokenizer.from_pretrained(str(folder)), kind,
                        encoding, max_seq_length or meta["max_seq_length"], meta["dimension"],
                        normalized=meta["normalized"], include_prompt=meta.get("include_prompt", True),
                        siamese=meta.get("siamese", True), document_prompt=meta.get("document_prompt"),
                        lowercase=meta.get("lowercase", False))


def load_dense_encoder(model: str, encoding: Encoding, max_seq_length: int | None = 256, normalize: bool = True,
                       device: str | None = None, threads: int | None = None) -> GraphEncoder:
    """A dense :class:`GraphEncoder` of ``model`` (hub id, SentenceTransformer folder or exported folder)."""
    from retrieval_kd.encoders.export import _dimension, exported_model, read_export_meta

    _check_device(device, encoding)
    if Path(model).is_dir() and read_export_meta(model) is not None:
        return _from_folder(Path(model), "dense", encoding, max_seq_length, threads)
    if encoding.backend in TORCH_BF16:
        from retrieval_kd.encoders.embeddings import load_encoder
        from retrieval_kd.encoders.graphs import dense_graph

        st = load_encoder(model, None, device="cpu")
        graph = dense_graph(st, normalize)
        runner = torch_runner(graph, compile=encoding.backend == "torch-bf16-compile")
        return GraphEncoder(runner, st.tokenizer, "dense", encoding, max_seq_length or st.max_seq_length,
                            _dimension(st), normalized=normalize, include_prompt=graph.include_prompt,
                            lowercase=graph.lowercase)
    return _from_folder(exported_model(model, "dense", encoding.backend, normalize), "dense", encoding,
                        max_seq_length, threads)


def load_sparse_encoder(model: str, encoding: Encoding, max_seq_length: int | None = None, device: str | None = None,
                        threads: int | None = None) -> GraphEncoder:
    """A SPLADE :class:`GraphEncoder` (document side, pooling fused) of ``model``."""
    from retrieval_kd.encoders.export import _document_prompt, exported_model, read_export_meta

    _check_device(device, encoding)
    if Path(model).is_dir() and read_export_meta(model) is not None:
        return _from_folder(Path(model), "sparse", encoding, max_seq_length, threads)
    if encoding.backend in TORCH_BF16:
        from retrieval_kd.encoders.graphs import sparse_graph
        from retrieval_kd.encoders.sparse import load_sparse_encoder as load_torch

        st = load_torch(model, device="cpu")
        graph, siamese = sparse_graph(st)
        runner = torch_runner(graph, compile=encoding.backend == "torch-bf16-compile")
        return GraphEncoder(runner, st.tokenizer, "sparse", encoding, max_seq_length or graph.max_seq_length,
                            graph.mlm.config.vocab_size, siamese=siamese, document_prompt=_document_prompt(st),
                            lowercase=graph.lowercase)
    return _from_folder(exported_model(model, "sparse", encoding.backend), "sparse", encoding, max_seq_length, threads)
