"""``rkd queries``: training queries from a corpus (generated, cropped, imported) and their filters."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval_kd.cli.argtypes import non_negative_int, output_file, positive_float, positive_int, unit_float

EPILOG = """examples:
  rkd queries generate --dataset scifact --model Qwen/Qwen2.5-7B-Instruct --examples scifact-8.jsonl \\
      --per-document 3 --round-trip bm25 --round-trip-k 5 --output experiments/scifact-lf/queries.jsonl
  rkd queries generate --dataset scifact --model BeIR/query-gen-msmarco-t5-base-v1 --output q.jsonl   # doc2query
  rkd queries crop --dataset cranfield --method sentence --remove-sentence 0.9 --skip-empty --output ict.jsonl
  rkd queries import --dataset scifact --input generated/scifact --format gpl --output gpl.jsonl
  rkd queries filter --dataset scifact --queries q.jsonl --max-words 32 --round-trip bm25 --output q-rt.jsonl
  rkd queries generate --dataset scifact --exclude-sources q.jsonl --output q-rest.jsonl  # documents without a query
  rkd queries filter --dataset scifact --queries q.jsonl q-rest.jsonl --output q-all.jsonl           # merged
each writes a BEIR queries.jsonl and a provenance sidecar (queries.provenance.json: the source document of every
query, method, model and revision, prompt hash, seed, counts kept and dropped); generation resumes after a kill
(finished batches are kept in OUTPUT.parts/). Train on them with data.queries / data.positives (rkd train)."""


def _filter_args(p) -> None:
    g = p.add_argument_group("filters")
    g.add_argument("--min-words", type=non_negative_int, default=1, help="drop shorter queries (default 1)")
    g.add_argument("--max-words", type=positive_int, default=None, help="drop longer queries")
    g.add_argument("--keep-duplicates", action="store_true", help="do not drop queries equal once normalised")
    g.add_argument("--round-trip", default=None, metavar="RETRIEVER",
                   help="keep a query only when RETRIEVER (bm25, or a SentenceTransformer) ranks its source document "
                        "in the top --round-trip-k")
    g.add_argument("--round-trip-k", type=positive_int, default=1)


def _common(p, output: bool = True) -> None:
    p.add_argument("--dataset", required=True, help="the collection whose corpus the queries come from")
    if output:
        p.add_argument("--output", required=True, type=output_file, help="queries.jsonl to write (+ its sidecar)")


def _selection_args(p) -> None:
    p.add_argument("--per-document", type=positive_int, default=None, help="queries per document")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--max-documents", type=positive_int, default=None, help="a seeded sample of the corpus")
    p.add_argument("--skip-empty", action="store_true", help="leave out documents without text (else an error)")
    p.add_argument("--id-prefix", default=None, help="query ids are PREFIX-DOC-N")
    p.add_argument("--exclude-sources", type=Path, action="append", default=[], metavar="QUERIES",
                   help="leave out the source documents of the queries kept in this file (made by rkd queries; "
                        "repeatable): extends an earlier set to the documents it has no query for")


def add_parser(sub) -> None:
    from retrieval_kd.queries.generate import GENERATOR_DTYPES
    p = sub.add_parser("queries", help="training queries from a corpus: generate, crop, import, filter",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    action = p.add_subparsers(dest="action", metavar="ACTION")
    gen = action.add_parser("generate", help="an LM writes queries for documents (few-shot causal LM or doc2query)",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _common(gen)
    gen.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                     help="causal LM or seq2seq doc2query model (hub id or folder)")
    gen.add_argument("--examples", type=Path, default=None,
                     help='few-shot examples, JSON lines {"document", "query"} (1-8; default: generic ones)')
    gen.add_argument("--prompt", default=None, help="the task instruction (default: a generic one)")
    gen.add_argument("--batch-size", type=positive_int, default=8, help="documents per batch (the resume unit)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=32)
    gen.add_argument("--max-document-tokens", type=positive_int, default=256)
    gen.add_argument("--temperature", type=positive_float, default=1.0)
    gen.add_argument("--top-p", type=unit_float, default=0.95)
    gen.add_argument("--top-k", type=positive_int, default=None)
    gen.add_argument("--no-chat-template", action="store_true", help="a plain prompt even if the tokenizer has one")
    gen.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    gen.add_argument("--dtype", default="auto", choices=GENERATOR_DTYPES,
                     help="auto (default): bfloat16 on a GPU or CPU with native bf16, else float32")
    gen.add_argument("--restart", action="store_true", help="drop the finished batches of an unfinished run")
    _selection_args(gen)
    _filter_args(gen)
    gen.set_defaults(func=_generate)
    crop = action.add_parser("crop", help="pseudo-queries cut from documents: title, sentence (ICT), span (Contriever)")
    _common(crop)
    crop.add_argument("--method", required=True, choices=["title", "sentence", "span"])
    crop.add_argument("--remove-sentence", type=unit_float, default=0.0,
                      help="sentence: probability of removing the query sentence from its positive (ICT: 0.9)")
    crop.add_argument("--span-ratio", type=unit_float, nargs=2, default=[0.1, 0.5], metavar=("LOW", "HIGH"),
                      help="span: share of the document's words (Contriever: 0.1 0.5)")
    crop.add_argument("--min-span-words", type=positive_int, default=1)
    crop.add_argument("--max-span-words", type=positive_int, default=None)
    _selection_args(crop)
    _filter_args(crop)
    crop.set_defaults(func=_crop)
    imp = action.add_parser("import", help="queries generated elsewhere: BEIR generated-queries, GPL output, TSV")
    _common(imp)
    imp.add_argument("--input", required=True, type=Path, help="the file, or GPL's data folder")
    imp.add_argument("--format", default="auto", choices=["auto", "beir", "gpl", "tsv"])
    imp.add_argument("--prefix", default="qgen", help="gpl: the file prefix (GPL's qgen_prefix)")
    imp.add_argument("--id-prefix", default="gen", help="beir: query ids are PREFIX-DOC-N")
    _filter_args(imp)
    imp.set_defaults(func=_import)
    filt = action.add_parser("filter", help="filter a query set made by rkd queries")
    _common(filt)
    filt.add_argument("--queries", required=True, type=Path, nargs="+",
                      help="queries.jsonl with its provenance sidecar; several: merged (ids must not clash), then "
                           "filtered")
    _filter_args(filt)
    filt.set_defaults(func=_filter)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _filters(args):
    from retrieval_kd.queries import QueryFilters

    return QueryFilters(args.min_words, args.max_words, not args.keep_duplicates, args.round_trip,
                        args.round_trip_k)


def _report(query_set, output) -> int:
    counts = query_set.counts
    dropped = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("dropped") or {}).items())) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("skipped_documents") or {}).items()) if v)
    print(f"wrote {output}: kept {len(query_set)} of {counts.get('candidates', len(query_set))} queries from "
          f"{counts.get('documents', '?')} documents (dropped: {dropped}"
          + (f"; documents skipped: {skipped})" if skipped else ")"))
    return 0


def _check_output(args, collection, *inputs: Path | None, query_sets: tuple[Path, ...] = (),
                  in_place: bool = False) -> None:
    """Refuse an ``--output`` that would replace, itself or by its provenance sidecar, a file this command reads:
    the collection's files (or shadow them: :meth:`Collection.source_of`), an input (a file, or a file in an input
    folder such as GPL's), or a query set read with its sidecar (``query_sets``; ``in_place``: the exact same file
    may be rewritten, read whole first and replaced atomically)."""
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.queries import sidecar_path

    output = Path(args.output).resolve()
    read = [Path(p).resolve() for p in inputs if p is not None]
    for path in query_sets:
        if not (in_place and Path(path).resolve() == output):
            read += [Path(path).resolve(), sidecar_path(path).resolve()]
    for target, what in ((output, "--output"), (sidecar_path(output), "the provenance sidecar of --output")):
        source = collection.source_of(target) or next(
            (s for s in read if target == s or (s.is_dir() and s in target.parents and target.exists())), None)
        if source is not None:
            raise ConfigError(f"{args.output}: {what} ({target}) would replace or shadow {source}, which this "
                              "command reads; write the queries to another file")


def _excluded_sources(args, collection) -> dict[str, str] | None:
    """Source document -> file, of the query sets ``--exclude-sources`` names (each checked against ``collection``'s
    corpus; none may be ``--output``, which the rest would overwrite)."""
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.queries import read_query_set

    sources: dict[str, str] = {}
    for path in args.exclude_sources:
        if path.resolve() == args.output.resolve():
            raise ConfigError(f"{path}: is both --output and an --exclude-sources file (the rest would overwrite "
                              "it); write the rest to another file and merge the two with `rkd queries filter "
                              "--queries A B`")
        sources.update({doc: str(path) for doc in read_query_set(path, collection).sources.values()
                        if doc not in sources})
    return sources or None


def _generate(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.queries import DEFAULT_PROMPT, QueryGenerator, generate_queries, read_examples

    filters = _filters(args)
    examples = read_examples(args.examples) if args.examples else None  # a bad file fails before the model loads
    collection = load_collection(args.dataset)
    excluded = _excluded_sources(args, collection)  # a bad file fails before the model loads, too
    _check_output(args, collection, args.examples, query_sets=tuple(args.exclude_sources))
    generator = QueryGenerator(args.model, examples, args.prompt or DEFAULT_PROMPT, args.per_document or 3,
                               args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                               args.max_document_tokens, not args.no_chat_template, args.device, args.dtype)
    query_set = generate_queries(generator, collection, args.output, args.batch_size, args.seed, args.max_documents,
                                 args.skip_empty, filters, args.restart, args.id_prefix or "gen", excluded)
    return _report(query_set, args.output)


def _crop(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.queries import crop_queries, write_query_set

    filters = _filters(args)
    collection = load_collection(args.dataset)
    excluded = _excluded_sources(args, collection)
    _check_output(args, collection, query_sets=tuple(args.exclude_sources))
    query_set = crop_queries(collection, args.method, args.per_document or 1, args.seed,
                             args.remove_sentence, tuple(args.span_ratio), args.min_span_words, args.max_span_words,
                             args.max_documents, args.skip_empty, filters, args.id_prefix, excluded)
    write_query_set(query_set, args.output)
    return _report(query_set, args.output)


def _import(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.queries import import_queries, write_query_set

    collection = load_collection(args.dataset)
    _check_output(args, collection, args.input)
    query_set = import_queries(args.input, collection, args.format, args.prefix, args.id_prefix, _filters(args))
    write_query_set(query_set, args.output)
    return _report(query_set, args.output)


def _filter(args) -> int:
    from retrieval_kd.data import load_collection
    from retrieval_kd.errors import ConfigError
    from retrieval_kd.queries import apply_filters, merge_query_sets, read_query_set, write_query_set

    collection = load_collection(args.dataset)
    _check_output(args, collection, query_sets=tuple(args.queries), in_place=True)
    if len({path.resolve() for path in args.queries}) < len(args.queries):
        raise ConfigError(f"--queries {' '.join(map(str, args.queries))}: a file is named twice")
    sets = [read_query_set(path, collection) for path in args.queries]
    query_set = apply_filters(merge_query_sets(sets), _filters(args), collection)
    write_query_set(query_set, args.output)
    return _report(query_set, args.output)
