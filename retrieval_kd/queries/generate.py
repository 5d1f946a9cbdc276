"""Queries generated from documents by a language model: few-shot prompted causal LMs, or doc2query seq2seq models.

* **Causal LM, few-shot** (Promptagator, Dai et al. 2022; InPars, Bonifacio et al. 2022): a task instruction and
  up to 8 (document, query) examples of the target task (:mod:`retrieval_kd.queries.examples`), then the document;
  the model writes the query. With a chat template (instruction-tuned models) the examples are earlier turns of
  the conversation (user: the document, assistant: its query); without one, a plain ``Document: ... Query: ...``
  prompt. Any ``transformers`` causal LM id or folder: e.g. ``meta-llama/Llama-3.1-8B-Instruct`` or
  ``Qwen/Qwen2.5-7B-Instruct`` for Promptagator-style queries (a GPU); the offline pack has
  ``HuggingFaceTB/SmolLM2-135M-Instruct`` (slow on a CPU, and small enough to copy its example back).
* **Seq2seq doc2query** (Nogueira et al. 2019; GPL, Wang et al. 2022): an encoder-decoder trained on MS MARCO to
  map a passage to queries, e.g. ``BeIR/query-gen-msmarco-t5-base-v1`` (what GPL uses) or
  ``castorini/doc2query-t5-base-msmarco``; the input is the document itself, no prompt or examples.

Sampling is seeded per batch (``torch.manual_seed`` of a seed drawn from (``seed``, batch number)), so a batch
gives the same queries whether it runs first or after a restart. :func:`generate_queries` runs the generator over
a corpus resumably: each finished batch is committed to ``<output>.parts/`` (:class:`BatchParts`), the final
``queries.jsonl`` and its provenance are written atomically and the parts removed; a killed run's rerun continues
and writes what an uninterrupted run writes.

References:
    Dai, Z., et al. (2022). Promptagator: Few-shot Dense Retrieval From 8 Examples. ICLR 2023.
    Bonifacio, L., et al. (2022). InPars: Data Augmentation for Information Retrieval using Large Language Models.
    Nogueira, R., Yang, W., Lin, J., Cho, K. (2019). Document Expansion by Query Prediction. arXiv:1904.08375.
    Wang, K., et al. (2022). GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense
    Retrieval. NAACL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_kd.queries.examples import DEFAULT_EXAMPLES, DEFAULT_PROMPT, Example, prompt_sha256
from retrieval_kd.queries.filters import QueryFilters, apply_filters, normalise_query
from retrieval_kd.queries.query_set import QuerySet, collect_queries

logger = logging.getLogger(__name__)

GENERATOR_DTYPES = ("auto", "float32", "bfloat16", "float16")

__all__ = ["GENERATOR_DTYPES", "QueryGenerator", "auto_dtype", "clean_query", "generate_queries"]

_LABEL = re.compile(r"^\s*(search\s+)?(query|question)\s*[:\-]\s*", re.IGNORECASE)


def clean_query(text: str) -> str:
    """The query in a model's output: its first non-empty line, without a ``Query:`` label or enclosing quotes."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    line = _LABEL.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return " ".join(line.split())


def auto_dtype(device: str, flags: frozenset[str] | None = None) -> str:
    """The generator's dtype for ``dtype="auto"`` on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ...): ``bfloat16``
    where the device computes in it natively (a CUDA GPU with bf16 units, not emulation; a CPU with AMX or
    AVX-512 BF16), else ``float32`` (emulated bf16 is slower than fp32)."""
    import torch

    from retrieval_kd.encoders.backends import isa_target

    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        reason = "the GPU has bf16 units" if native else "the GPU has no bf16 units (only emulation)"
    elif dev.type == "cpu":
        native = isa_target("torch-bf16", flags) != "bf16-emulated"  # the encoders' test for native bf16
        reason = "the CPU has bf16 instructions" if native else "no bf16 instructions (AMX or AVX-512 BF16) on this CPU"
    else:
        native, reason = False, f"device type {dev.type!r}"
    chosen = "bfloat16" if native else "float32"
    logger.info("query generator dtype=auto: %s (%s)", chosen, reason)
    return chosen


class QueryGenerator:
    """Writes queries for documents with a causal LM (few-shot prompt) or a seq2seq doc2query model.

    Args:
        model: hub id or folder (the kind is read from its config: encoder-decoder = seq2seq).
        examples: few-shot (document, query) examples (causal only; default :data:`DEFAULT_EXAMPLES`; ``[]``: none).
        prompt: the task instruction (causal only).
        queries_per_document: sampled queries per document (``num_return_sequences``).
        max_new_tokens: the longest query, in tokens.
        temperature, top_p, top_k: sampling (top_k None: off).
        max_document_tokens: documents (and example documents) are truncated to this many tokens.
        use_chat_template: prompt through the tokenizer's chat template when it has one.
        device: ``cuda``/``cpu``/...; default: cuda when available.
        dtype: the model's torch dtype, or ``auto`` (:func:`auto_dtype`): ``bfloat16`` on a GPU that has it and on
            a CPU with bf16 instructions (AMX or AVX-512 BF16; 1.8x fp32 for SmolLM2-135M on a 2-core EPYC),
            ``float32`` elsewhere. The dtype and the device type change the sampled text, so both are part of
            :meth:`config` (the resume key).
    """

    def __init__(self, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", examples: Sequence[Example] | None = None,
                 prompt: str = DEFAULT_PROMPT, queries_per_document: int = 3, max_new_tokens: int = 32,
                 temperature: float = 1.0, top_p: float = 0.95, top_k: int | None = None,
                 max_document_tokens: int = 256, use_chat_template: bool = True, device: str | None = None,
                 dtype: str = "auto"):
        from retrieval_kd.errors import ConfigError

        if queries_per_document < 1 or max_new_tokens < 1 or max_document_tokens < 1:
            raise ConfigError("queries_per_document, max_new_tokens and max_document_tokens must be >= 1")
        if not temperature > 0 or not 0 < top_p <= 1 or (top_k is not None and top_k < 1):
            raise ConfigError(f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 1 (got {temperature}, "
                              f"{top_p}, {top_k})")
        if dtype not in GENERATOR_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(GENERATOR_DTYPES)}, got {dtype!r}")
        self.model_name = str(model)
        self.examples = list(DEFAULT_EXAMPLES if examples is None else examples)
        self.prompt = prompt
        self.queries_per_document = queries_per_document
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_document_tokens = max_document_tokens
        self.use_chat_template = use_chat_template
        self.device = device
        self.dtype = dtype
        self._model = self._tokenizer = None
        self._revision: str | None = None

    # -- model -------------------------------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

            from retrieval_kd.models.resolve import resolve_model

            resolve_model(self.model_name, "query generator")
            seq2seq = bool(getattr(AutoConfig.from_pretrained(self.model_name), "is_encoder_decoder", False))
            loader = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = auto_dtype(str(device)) if self.dtype == "auto" else self.dtype
            model = loader.from_pretrained(self.model_name, dtype=getattr(torch, dtype)).to(device)
            self.set_model(model, AutoTokenizer.from_pretrained(self.model_name))
        return self._model, self._tokenizer

    def set_model(self, model, tokenizer, revision: str | None = None) -> QueryGenerator:
        """Use an already loaded model and tokenizer (tests, notebooks); ``revision`` names it in the provenance."""
        self._model, self._tokenizer = model.eval(), tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if revision is not None:
            self._revision = revision
        return self

    @property
    def seq2seq(self) -> bool:
        model, _ = self._load()
        return bool(getattr(model.config, "is_encoder_decoder", False))

    @property
    def chat(self) -> bool:
        _, tok = self._load()
        return not self.seq2seq and self.use_chat_template and bool(getattr(tok, "chat_template", None))

    def revision(self) -> str:
        if self._revision is None:
            from retrieval_kd.models.revision import model_revision

            self._revision = model_revision(self.model_name)
        return self._revision

    def config(self) -> dict[str, Any]:
        """What the generated queries depend on (recorded in their provenance and the resume settings)."""
        model, _ = self._load()
        cfg = {"kind": "seq2seq" if self.seq2seq else "causal", "model": self.model_name,
               "revision": self.revision(), "queries_per_document": self.queries_per_document,
               "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
               "top_k": self.top_k, "max_document_tokens": self.max_document_tokens, "chat_template": self.chat,
               **_numerics(model)}
        if not self.seq2seq:
            cfg.update(prompt_sha256=prompt_sha256(self.prompt, self.examples), examples=len(self.examples))
        return cfg

    # -- prompts -----------------------------------------------------------------------------------------------
    def truncate(self, texts: list[str]) -> list[str]:
        _, tok = self._load()
        ids = tok(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_document_tokens)
        return tok.batch_decode(ids["input_ids"], skip_special_tokens=True)

    def prompts(self, documents: list[str]) -> list[str]:
        """The model inputs for ``documents``: the documents themselves (seq2seq) or few-shot prompts."""
        documents = self.truncate(documents)
        if self.seq2seq:
            return documents
        _, tok = self._load()
        shots = list(zip(self.truncate([e.document for e in self.examples]), [e.query for e in self.examples]))
        out = []
        for doc in documents:
            if self.chat:
                turns = []
                for i, (ex_doc, ex_query) in enumerate(shots):
                    head = f"{self.prompt}\n\n" if i == 0 else ""
                    turns += [{"role": "user", "content": f"{head}Document: {ex_doc}"},
                              {"role": "assistant", "content": ex_query}]
                turns.append({"role": "user", "content": f"{self.prompt}\n\nDocument: {doc}"})
                out.append(tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
            else:
                body = "".join(f"Document: {d}\nQuery: {q}\n\n" for d, q in shots)
                out.append(f"{self.prompt}\n\n{body}Document: {doc}\nQuery:")
        return out

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, documents: list[str], seed: int = 0) -> list[list[str]]:
        """``queries_per_document`` cleaned queries (:func:`clean_query`; may be empty) for each document."""
        import torch

        model, tok = self._load()
        prompts = self.prompts(documents)
        tok.padding_side = "right" if self.seq2seq else "left"  # a causal LM continues the prompt's last token
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.chat).to(model.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                 top_k=self.top_k or 0, max_new_tokens=self.max_new_tokens,
                                 num_return_sequences=self.queries_per_document, pad_token_id=tok.pad_token_id)
        new = out if self.seq2seq else out[:, enc["input_ids"].shape[1]:]
        texts = [clean_query(t) for t in tok.batch_decode(new, skip_special_tokens=True)]
        n = self.queries_per_document
        return [texts[i * n:(i + 1) * n] for i in range(len(documents))]


def _numerics(model) -> dict[str, str]:
    """What the sampled text's arithmetic depends on: the dtype, the device type, and for bf16 on a CPU the
    instruction set (AMX and AVX-512 BF16 kernels round differently; the encoders' cache keys hold it too)."""
    from retrieval_kd.encoders.backends import isa_target

    dtype, device = str(model.dtype).removeprefix("torch."), model.device.type
    isa = isa_target("torch-bf16") if device == "cpu" and dtype == "bfloat16" else ""
    return {"dtype": dtype, "device": device, "isa": isa}


def _batch_seed(seed: int, batch: int) -> int:
    return int(np.random.default_rng([seed, batch]).integers(0, 2**31 - 1))


def generate_queries(generator: QueryGenerator, collection, output: str | os.PathLike, batch_size: int = 8,
                     seed: int = 0, max_documents: int | None = None, skip_empty: bool = False,
                     filters: QueryFilters | None = None, restart: bool = False, id_prefix: str = "gen",
                     exclude_documents: Collection[str] | None = None) -> QuerySet:
    """Generate queries for ``collection``'s documents into ``output`` (``queries.jsonl`` + provenance), resumably.

    Args:
        generator: the model and its sampling settings.
        batch_size: documents per generation batch (a batch is the unit committed to ``<output>.parts/``).
        seed: the document sample and every batch's sampling seed.
        max_documents, skip_empty, exclude_documents: which documents
            (:func:`~retrieval_kd.queries.documents.select_documents`); ``exclude_documents`` extends an earlier
            set to the documents it has no query for.
        filters: applied once all batches are done; queries equal to an example's query (a small model copying
            it) are dropped first as ``example_copy``, empty outputs as ``empty``.
        restart: drop the finished batches of an earlier, unfinished run.
        id_prefix: query ids are ``<prefix>-<doc>-<n>``.

    Returns the query set written. An ``output`` already written with the same settings is returned as it is.
    """
    from retrieval_kd.queries.documents import select_documents
    from retrieval_kd.queries.parts import BatchParts, parts_folder
    from retrieval_kd.queries.query_set import read_query_set, sidecar_path, write_query_set
    from retrieval_kd.utils.fs import file_lock
    from retrieval_kd.utils.progress import progress

    output = Path(output)
    corpus = collection.corpus
    with file_lock(output, what="the generated queries"):
        selection = select_documents(collection, max_documents, seed, skip_empty, exclude_documents)
        settings = {"generator": generator.config(), "seed": seed, "batch_size": batch_size,
                    "max_documents": max_documents, "skip_empty": skip_empty, "id_prefix": id_prefix,
                    "corpus": corpus.store_path.name,
                    "documents_sha256": hashlib.sha256("\n".join(selection.ids).encode()).hexdigest()}
        if exclude_documents:
            settings["excluded_documents"] = len(selection.skipped["excluded"])
        provenance = {"settings": settings, "model": {"name": generator.model_name, "revision": generator.revision()},
                      "seed": seed, "filter_settings": filters.settings() if filters is not None else None}
        if not generator.seq2seq:
            provenance["prompt_sha256"] = settings["generator"]["prompt_sha256"]
        if output.is_file() and sidecar_path(output).is_file() and not restart:
            try:
                done = read_query_set(output)
                if json.loads(json.dumps(provenance)) == done.provenance:
                    logger.info("%s: already generated with these settings", output)
                    return done
            except (ValueError, OSError) as exc:
                logger.info("%s: generating again (%s)", output, exc)
        parts = BatchParts(parts_folder(output), settings, restart=restart)
        batches = [selection.ids[i:i + batch_size] for i in range(0, len(selection.ids), batch_size)]
        todo = [b for b in range(len(batches)) if not parts.has(b)]
        for b in progress(todo, desc="generating queries", unit="batch"):
            ids = batches[b]
            made = generator.generate(corpus.texts(ids), seed=_batch_seed(seed, b))
            parts.put(b, [{"doc": d, "queries": q} for d, q in zip(ids, made)])
        rows = [row for b in range(len(batches)) for row in parts.get(b)]
        queries, sources, dropped = collect_queries(((r["doc"], r["queries"]) for r in rows), id_prefix)
        copies = {normalise_query(e.query) for e in generator.examples} if not generator.seq2seq else set()
        keep = [q for q, text in queries.items() if normalise_query(text) not in copies]
        if len(keep) < len(queries):
            dropped["example_copy"] = len(queries) - len(keep)
        counts = {**selection.counts(), "candidates": sum(len(r["queries"]) for r in rows), "dropped": dropped}
        query_set = QuerySet(queries, sources, "generate", provenance, counts,
                             corpus=corpus.store_path.name).subset(keep)
        query_set = apply_filters(query_set, filters, collection)
        write_query_set(query_set, output)
        parts.remove()
    return query_set
