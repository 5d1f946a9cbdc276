"""Exported encoders: ONNX graphs of :mod:`retrieval_kd.encoders.graphs`, written once into a folder.

A folder holds ``model.onnx`` (inputs ``input_ids`` and ``attention_mask``, int64 ``(batch, seq)``; one output:
``sentence_embedding`` ``(batch, dim)``, pooled and normalised, or ``sparse_embedding`` ``(batch, vocab)``, SPLADE
pooling fused), the tokenizer's files, ``rkd_export.json`` (what it is: kind, backend, max_seq_length, source
model and revision) and the folder marker of :mod:`retrieval_kd.utils.fs`. ``rkd export-model`` writes one where
it is told; :func:`exported_model` keeps one per (model revision, export settings) under
``<cache>/exported/``, built once (atomically, with a lock that a second process waits on). The source model's
folder is only read.

``onnx-int8`` is onnxruntime's dynamic quantisation of the graph's weight matrices (per output channel, signed
int8; activations are quantised per batch at run time; matrix products of two activations, inside attention,
stay fp32).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from retrieval_kd.encoders.backends import require
from retrieval_kd.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMAT", "EXPORT_META", "export_model", "exported_model", "model_kind", "read_export_meta"]

EXPORT_META = "rkd_export.json"
#: bumped when the graphs change, so cached exports of older graphs are not reused
EXPORT_FORMAT = 1
OPSET = 18
#: the graph file each backend runs: openvino compiles the fp32 graph
_GRAPH_OF = {"onnx": "onnx-fp32", "openvino": "onnx-fp32", "onnx-int8": "onnx-int8"}


def read_export_meta(folder: str | os.PathLike) -> dict | None:
    """The ``rkd_export.json`` of a folder written by ``rkd export-model``, else None."""
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def model_kind(model: str) -> str:
    """``sparse`` for a SparseEncoder folder or a masked-LM checkpoint (SPLADE), ``dense`` otherwise."""
    meta = read_export_meta(model) if Path(model).is_dir() else None
    if meta is not None:
        return meta["kind"]
    from retrieval_kd.models import snapshot_path

    folder = Path(model) if Path(model).is_dir() else snapshot_path(model)
    if folder is None:
        raise UnavailableError(f"{model}: not a folder and not in the Hugging Face cache; give its kind (--kind)")
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file():
        return "sparse" if json.loads(st_config.read_text()).get("model_type") == "SparseEncoder" else "dense"
    if (folder / "modules.json").is_file():
        return "dense"
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return "sparse" if any(a.endswith("ForMaskedLM") for a in config.get("architectures", [])) else "dense"


def _source_model(model: str, kind: str, max_seq_length: int | None):
    """The torch model the graph is taken from (never modified, its folder never written)."""
    if kind == "dense":
        from retrieval_kd.encoders.embeddings import load_encoder

        encoder = load_encoder(model, None, device="cpu")
    else:
        from retrieval_kd.encoders.sparse import load_sparse_encoder

        encoder = load_sparse_encoder(model, device="cpu")
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


def _dimension(encoder) -> int:
    """A SentenceTransformer's output width (``get_embedding_dimension`` from sentence-transformers 6 on)."""
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(get())


def _document_prompt(encoder) -> str | None:
    prompts = getattr(encoder, "prompts", None) or {}
    return next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), None)


def _export_onnx(graph, tokenizer, path: Path, output: str) -> None:
    """``torch.onnx.export`` (the dynamo exporter) with batch and sequence length dynamic."""
    import torch

    require("onnx", "onnx", "onnx")
    require("onnxscript", "onnx", "onnxscript")
    sample = tokenizer(["retrieval by distillation", "a second, longer example passage"], padding=True,
                       return_tensors="pt")
    args = (sample["input_ids"].to(torch.int64), sample["attention_mask"].to(torch.int64))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir"):   # their INFO lines are one per rewritten graph node
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        program = torch.onnx.export(graph, args, dynamo=True, input_names=["input_ids", "attention_mask"],
                                    output_names=[output], dynamic_shapes=shapes, opset_version=OPSET,
                                    external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def _quantize_int8(src: Path, dst: Path) -> None:
    quantization = require("onnxruntime.quantization", "onnx-int8", "onnxruntime")
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8, per_channel=True,
                                  op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})


def _write_export(model: str, folder: Path, kind: str, graph_format: str, normalize: bool,
                  max_seq_length: int | None, backend: str) -> dict:
    """Export ``model`` into ``folder`` (an empty temporary folder): graph, tokenizer, ``rkd_export.json``."""
    from retrieval_kd import __version__
    from retrieval_kd.encoders.graphs import dense_graph, sparse_graph
    from retrieval_kd.models.revision import model_revision

    encoder = _source_model(model, kind, max_seq_length)
    tokenizer = encoder.tokenizer
    if kind == "dense":
        graph, output, siamese = dense_graph(encoder, normalize), "sentence_embedding", True
        dimension = _dimension(encoder)
    else:
        (graph, siamese), output = sparse_graph(encoder), "sparse_embedding"
        dimension = graph.mlm.config.vocab_size
    onnx_path = folder / "model.onnx"
    fp32 = folder / ".model-fp32.onnx" if graph_format == "onnx-int8" else onnx_path
    _export_onnx(graph, tokenizer, fp32, output)
    if graph_format == "onnx-int8":
        _quantize_int8(fp32, onnx_path)
        fp32.unlink()
    tokenizer.save_pretrained(str(folder))
    meta = {"format": EXPORT_FORMAT, "kind": kind, "backend": backend, "graph": graph_format,
            "inputs": ["input_ids", "attention_mask"], "output": output, "dimension": int(dimension),
            "normalized": bool(normalize) if kind == "dense" else False,
            "include_prompt": getattr(graph, "include_prompt", True), "siamese": siamese,
            "lowercase": graph.lowercase, "document_prompt": _document_prompt(encoder),
            "max_seq_length": int(max_seq_length or getattr(graph, "max_seq_length", None) or encoder.max_seq_length),
            "source": {"model": str(model), "revision": model_revision(model)}, "opset": OPSET,
            "writer": f"retrieval-kd {__version__}"}
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def exported_model(model: str, kind: str, backend: str, normalize: bool = True) -> Path:
    """The cached export of ``model`` for ``backend`` (``onnx``, ``onnx-int8``, ``openvino``), built on first use.

    Keyed by the model's revision and the export settings; two processes sharing the cache export it once (the
    second waits for the first, then reads its folder).
    """
    from retrieval_kd.encoders.embeddings import model_cache_file
    from retrieval_kd.utils.fs import atomic_folder, file_lock

    if backend not in _GRAPH_OF:
        raise ConfigError(f"no exported graph for encoding {backend!r}; choose one of {', '.join(_GRAPH_OF)}")
    graph_format = _GRAPH_OF[backend]
    fields = {"export": kind, "graph": graph_format, "normalize": bool(normalize) if kind == "dense" else None,
              "format": EXPORT_FORMAT}
    folder = model_cache_file(model, "exported", fields, "")
    if read_export_meta(folder) is not None:
        return folder
    with file_lock(folder.with_name(folder.name + ".build"), what="an export", wait=True):
        if read_export_meta(folder) is not None:  # exported by another process while this one waited
            return folder
        logger.info("exporting %s (%s, %s) to %s", model, kind, graph_format, folder)
        with atomic_folder(folder, "exported-model", overwrite=True) as tmp:
            _write_export(model, tmp, kind, graph_format, normalize, None, "onnx-int8" if graph_format ==
                          "onnx-int8" else "onnx")
    return folder


def export_model(model: str, output: str | os.PathLike, backend: str = "onnx", kind: str | None = None,
                 normalize: bool = True, max_seq_length: int | None = None, overwrite: bool = False) -> dict:
    """Write ``model`` exported for ``backend`` to the folder ``output`` (``rkd export-model``); returns its meta.

    The folder loads wherever the project takes a model (:func:`~retrieval_kd.encoders.load_encoder`,
    :func:`~retrieval_kd.encoders.sparse.load_sparse_encoder`, the corpus caches) and runs in a plain
    onnxruntime session.
    """
    from retrieval_kd.utils.fs import atomic_folder

    if backend not in _GRAPH_OF:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(_GRAPH_OF)}")
    require("onnxruntime" if backend != "openvino" else "openvino", backend)
    kind = kind or model_kind(model)
    if kind not in ("dense", "sparse"):
        raise ConfigError(f"--kind {kind!r}: choose dense or sparse")
    with atomic_folder(output, "exported-model", overwrite=overwrite,
                       meta={"backend": backend, "source": str(model)}) as tmp:
        meta = _write_export(model, tmp, kind, _GRAPH_OF[backend], normalize, max_seq_length, backend)
    return meta
