"""``rkd export-model``: an encoder (a trained student, a hub model) as an ONNX graph folder for deployment."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-model",
        help="export a dense or SPLADE encoder to ONNX (fp32 or int8), loadable wherever rkd takes a model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Writes model.onnx (inputs input_ids, attention_mask; output sentence_embedding, pooled and "
        "normalised, or sparse_embedding, SPLADE pooling fused), the tokenizer and rkd_export.json. The folder "
        "runs in a plain onnxruntime session and wherever rkd takes a model (--model of index build and search).",
        epilog="examples:\n  rkd export-model experiments/scifact-dense/student --backend onnx-int8 "
        "--output exported/dense-int8\n  rkd export-model rkd-local/splade-tiny --backend onnx --output exported/splade")
    p.add_argument("model", help="SentenceTransformer / SparseEncoder folder or hub id (a masked LM is SPLADE)")
    p.add_argument("--backend", choices=["onnx", "onnx-int8", "openvino"], default="onnx",
                   help="onnx: fp32; onnx-int8: dynamic int8 weights; openvino: the fp32 graph, run by OpenVINO")
    p.add_argument("--output", type=Path, required=True, help="the folder to write")
    p.add_argument("--kind", choices=["dense", "sparse"], default=None,
                   help="dense embeddings or SPLADE document vectors (default: from the model's files)")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="truncation recorded for loaders (default: the model's); the graph takes any length")
    p.add_argument("--no-normalize", action="store_true", help="dense: output the pooled vector un-normalised")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder rkd did not write")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from retrieval_kd.encoders.export import export_model

    meta = export_model(args.model, args.output, backend=args.backend, kind=args.kind,
                        normalize=not args.no_normalize, max_seq_length=args.max_seq_length,
                        overwrite=args.overwrite)
    size = (Path(args.output) / "model.onnx").stat().st_size / 2**20
    print(f"wrote {args.output}: {meta['kind']} {args.backend} graph ({size:.1f} MiB), output {meta['output']} "
          f"of width {meta['dimension']}, max_seq_length {meta['max_seq_length']}")
    return 0
