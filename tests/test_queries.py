"""Training queries without human labels (issue 19): query sources, filters, pseudo-qrels, a label-free training set,
resume of generation after SIGKILL, and bad inputs. Tiny data and a tiny random causal LM only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retrieval_kd.data import load_collection
from retrieval_kd.data.formats import DataFormatError
from retrieval_kd.errors import ConfigError, IntegrityError
from retrieval_kd.queries import (
    QueryFilters,
    QueryGenerator,
    QuerySet,
    apply_filters,
    crop_queries,
    generate_queries,
    import_queries,
    merge_query_sets,
    normalise_query,
    pseudo_qrels,
    read_examples,
    read_query_set,
    sample_queries,
    sentence_spans,
    sidecar_path,
    write_query_set,
)
from tests.conftest import ROOT, write_jsonl

SENTENCES = [
    {"_id": "s1", "title": "Fish", "text": "Goldfish grow in ponds. They eat flakes! Do they sleep? yes they do."},
    {"_id": "s2", "title": "", "text": "Wifi is radio. Bluetooth is radio too."},
    {"_id": "s3", "title": "War", "text": "The war began in 1914."},
]


def _folder(tmp_path, docs, name="beir"):
    folder = tmp_path / name
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "goldfish"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    return folder


def _tiny_generator(tiny_causal_lm, n=2, **kw) -> QueryGenerator:
    model, tokenizer = tiny_causal_lm
    return QueryGenerator("tiny-llama", queries_per_document=n, max_new_tokens=6, **kw).set_model(
        model, tokenizer, revision="random-init")


# -- crop --------------------------------------------------------------------------------------------------------
def test_sentence_spans_split_after_end_marks_not_abbreviations():
    text = "Goldfish grow in ponds. They eat flakes! Do they sleep? yes they do."
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Goldfish grow in ponds.", "They eat flakes!", "Do they sleep?", "yes they do."]
    text = "the flow . it is shown in figs. 3 and 4 by J. Smith et al. (x.) next one"
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "the flow .", "it is shown in figs. 3 and 4 by J. Smith et al. (x.)", "next one"]
    assert sentence_spans("   ") == []


def test_crop_title_skips_documents_without_title(tiny_beir):
    qs = crop_queries(load_collection(str(tiny_beir)), "title")
    assert qs.queries == {"title-d1-0": "Goldfish", "title-d2-0": "Wifi", "title-d4-0": "Ponds",
                          "title-d5-0": "Bluetooth"}
    assert qs.sources == {q: q.split("-")[1] for q in qs.queries}
    assert qs.counts["skipped_documents"] == {"no_title": 1} and qs.counts["documents"] == 5
    assert qs.method == "crop-title" and qs.counts["kept"] == 4


def test_crop_sentence_inverse_cloze_with_removal(tmp_path):
    coll = load_collection(str(_folder(tmp_path, SENTENCES)))
    qs = crop_queries(coll, "sentence", queries_per_document=2, seed=3, remove_sentence=1.0)
    # s3 has one sentence: removing it would leave no positive, so its query is dropped
    assert sorted(qs.sources.values()) == ["s1", "s1", "s2", "s2"]
    assert qs.counts["dropped"]["no_context"] == 1 and qs.counts["candidates"] == 5
    texts = qs.positive_texts(coll.corpus)
    for qid, (start, end) in qs.removed.items():
        doc = coll.corpus[qs.sources[qid]]
        assert doc["text"][start:end] == qs.queries[qid]                     # the query is the removed sentence
        assert qs.queries[qid] not in texts[qid]
        assert texts[qid].startswith(doc["title"])
    assert set(qs.removed) == set(qs.queries)
    s2 = [q for q in qs.queries if qs.sources[q] == "s2"]
    assert sorted(texts[q] for q in s2) == ["Bluetooth is radio too.", "Wifi is radio."]
    # the same seed gives the same queries; without removal, nothing is removed
    assert crop_queries(coll, "sentence", 2, seed=3, remove_sentence=1.0).queries == qs.queries
    kept = crop_queries(coll, "sentence", 1, seed=3)
    assert not kept.removed and len(kept) == 3


def test_crop_span_is_a_contiguous_run_of_words(tmp_path):
    coll = load_collection(str(_folder(tmp_path, SENTENCES)))
    qs = crop_queries(coll, "span", queries_per_document=3, seed=1, span_ratio=(0.3, 0.5), min_span_words=2,
                      filters=QueryFilters(dedup=False))
    assert len(qs) == 9
    for qid, text in qs.queries.items():
        words = coll.corpus[qs.sources[qid]]["text"].split()
        n = len(text.split())
        assert " ".join(words).find(text) >= 0 and 2 <= n <= max(2, round(0.5 * len(words)))
    assert qs.provenance["settings"]["span_ratio"] == [0.3, 0.5]


# -- generate ----------------------------------------------------------------------------------------------------
def test_generate_with_a_tiny_causal_lm(tiny_beir, tiny_causal_lm, tmp_path, monkeypatch):
    coll = load_collection(str(tiny_beir))
    gen = _tiny_generator(tiny_causal_lm)
    prompt = gen.prompts(["Goldfish grow larger in big ponds."])[0]
    assert gen.chat and "Goldfish grow larger" in prompt and gen.examples[0].query in prompt  # few-shot chat turns
    out = tmp_path / "gen" / "queries.jsonl"
    qs = generate_queries(gen, coll, out, batch_size=2, seed=5)
    assert qs.counts["candidates"] == 10 and qs.counts["documents"] == 5
    assert qs.counts["kept"] + sum(qs.counts["dropped"].values()) == 10 and len(qs) == qs.counts["kept"] > 0
    assert all(q == f"gen-{qs.sources[q]}-{q.rsplit('-', 1)[1]}" for q in qs.queries)
    assert qs.provenance["model"] == {"name": "tiny-llama", "revision": "random-init"}
    assert len(qs.provenance["prompt_sha256"]) == 64 and qs.provenance["seed"] == 5
    back = read_query_set(out)
    assert back.queries == qs.queries and back.sources == qs.sources and back.counts == qs.counts
    assert not out.with_name("queries.jsonl.parts").exists()
    # the same settings again: read back, nothing generated; the same seed elsewhere: the same queries
    monkeypatch.setattr(QueryGenerator, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert generate_queries(gen, coll, out, batch_size=2, seed=5).queries == qs.queries
    monkeypatch.undo()
    again = generate_queries(gen, coll, tmp_path / "again.jsonl", batch_size=2, seed=5)
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes() and again.sources == qs.sources


def test_generate_with_a_tiny_seq2seq_doc2query(tiny_beir, tiny_causal_lm):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    _, tok = tiny_causal_lm
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                             num_heads=2, decoder_start_token_id=tok.pad_token_id or 0,
                                             pad_token_id=tok.pad_token_id or 0, eos_token_id=tok.eos_token_id))
    gen = QueryGenerator("tiny-t5", queries_per_document=2, max_new_tokens=5).set_model(t5, tok, "random-init")
    assert gen.seq2seq and not gen.chat
    assert gen.prompts(["Goldfish grow larger in big ponds."]) == ["Goldfish grow larger in big ponds."]
    made = gen.generate(["Goldfish grow larger in big ponds.", "Wifi and bluetooth."], seed=1)
    assert [len(m) for m in made] == [2, 2]
    assert gen.config()["kind"] == "seq2seq" and "prompt_sha256" not in gen.config()


def test_clean_query_takes_the_first_line_without_label_or_quotes():
    from retrieval_kd.queries import clean_query

    assert clean_query('\n  Query: "do goldfish grow?"\nDocument: x') == "do goldfish grow?"
    assert clean_query("search query - wifi  vs bluetooth") == "wifi vs bluetooth"
    assert clean_query("\n\n") == ""


# -- import ------------------------------------------------------------------------------------------------------
def test_import_beir_gpl_and_tsv(tiny_beir, tmp_path):
    coll = load_collection(str(tiny_beir))
    beir = write_jsonl(tmp_path / "gen.jsonl", [
        {"_id": "d1", "title": "Goldfish", "text": "...", "query": "do goldfish grow"},
        {"_id": "d1", "title": "Goldfish", "text": "...", "query": "goldfish pond size"},
        {"_id": "d2", "title": "Wifi", "text": "...", "query": "wifi vs bluetooth"},
    ])
    qs = import_queries(beir, coll)
    assert qs.queries == {"gen-d1-0": "do goldfish grow", "gen-d1-1": "goldfish pond size",
                          "gen-d2-0": "wifi vs bluetooth"}
    assert qs.sources == {"gen-d1-0": "d1", "gen-d1-1": "d1", "gen-d2-0": "d2"} and qs.method == "import"

    gpl = tmp_path / "generated"
    write_jsonl(gpl / "qgen-queries.jsonl", [{"_id": "genQ1", "text": "pond water"}, {"_id": "genQ2", "text": "war"}])
    (gpl / "qgen-qrels").mkdir()
    (gpl / "qgen-qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\ngenQ1\td4\t1\ngenQ2\td3\t1\n")
    qs = import_queries(gpl, coll)
    assert qs.sources == {"genQ1": "d4", "genQ2": "d3"} and qs.provenance["settings"]["format"] == "gpl"

    tsv = tmp_path / "q.tsv"
    tsv.write_text("a1\theadphones pairing\td5\na2\t   \td1\n")
    qs = import_queries(tsv, coll)
    assert qs.queries == {"a1": "headphones pairing"} and qs.counts["dropped"] == {"empty": 1}


def test_import_errors_name_file_line_and_id(tiny_beir, tmp_path):
    coll = load_collection(str(tiny_beir))
    tsv = tmp_path / "q.tsv"
    tsv.write_text("a1\tok\td5\na2\tnot in corpus\td99\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: source document 'd99' is not in"):
        import_queries(tsv, coll)
    tsv.write_text("a1\tok\td5\na2 only two\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: expected 'qid<TAB>query<TAB>doc_id'"):
        import_queries(tsv, coll)
    tsv.write_text("a1\tok\td5\na1\tagain\td4\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: duplicate query id 'a1' \(first at .*q\.tsv:1\)"):
        import_queries(tsv, coll)
    beir = write_jsonl(tmp_path / "gen.jsonl", [{"_id": "d1", "text": "no query field"}])
    with pytest.raises(DataFormatError, match=r"gen\.jsonl:1: a generated query needs '_id'"):
        import_queries(beir, coll)
    gpl = tmp_path / "generated"
    write_jsonl(gpl / "qgen-queries.jsonl", [{"_id": "genQ1", "text": "pond water"}])
    (gpl / "qgen-qrels").mkdir()
    (gpl / "qgen-qrels" / "train.tsv").write_text("genQ2\td3\t1\n")
    with pytest.raises(DataFormatError, match="query 'genQ1' has 0 source documents"):
        import_queries(gpl, coll)
    with pytest.raises(FileNotFoundError, match="other-queries.jsonl: not found"):
        import_queries(gpl, coll, prefix="other")


# -- filters -----------------------------------------------------------------------------------------------------
def test_filters_count_each_reason(tiny_beir):
    coll = load_collection(str(tiny_beir))
    qs = QuerySet({"a": "do goldfish grow", "b": "Do goldfish, grow?", "c": "x",
                   "d": "wifi bluetooth radio standards wireless phone extra", "e": "pond still water",
                   "f": "bluetooth headphones"},
                  {"a": "d1", "b": "d1", "c": "d2", "d": "d2", "e": "d1", "f": "d5"}, "import",
                  counts={"candidates": 6})
    out = apply_filters(qs, QueryFilters(min_words=2, max_words=6, round_trip="bm25", round_trip_k=1), coll)
    # c is one word, d seven; b repeats a once normalised; "pond still water" finds d4 first, not its source d1
    assert out.queries == {"a": "do goldfish grow", "f": "bluetooth headphones"}
    assert out.counts["dropped"] == {"too_short": 1, "too_long": 1, "duplicate": 1, "round_trip": 1}
    assert out.counts["kept"] == 2 and out.counts["candidates"] == 6
    assert [f["filter"] for f in out.filters] == ["too_short", "too_long", "duplicate", "round_trip"]
    assert out.filters[-1] == {"filter": "round_trip", "retriever": "bm25", "k": 1, "dropped": 1, "kept": 2}
    # a looser round trip keeps e: d1 ("ponds") is BM25's second hit for it
    loose = apply_filters(qs, QueryFilters(round_trip="bm25", round_trip_k=2, dedup=False), coll)
    assert "e" in loose.queries and len(qs) == 6                      # the input set is not changed
    assert normalise_query("  Do GOLDFISH, grow? ") == "do goldfish grow"
    with pytest.raises(ConfigError, match="min_words"):
        QueryFilters(min_words=5, max_words=2)


def test_sample_queries_is_a_seeded_ordered_cap():
    qs = QuerySet({f"q{i}": f"query {i}" for i in range(10)}, {f"q{i}": "d1" for i in range(10)}, "import")
    a, b = sample_queries(qs, 4, seed=3), sample_queries(qs, 4, seed=3)
    assert list(a.queries) == list(b.queries) and len(a) == 4
    assert list(a.queries) == sorted(a.queries, key=lambda q: int(q[1:]))  # the set's order kept
    assert a.counts["dropped"] == {"max_queries": 6} and a.filters[-1]["filter"] == "max_queries"
    assert list(sample_queries(qs, 4, seed=4).queries) != list(a.queries)
    assert len(sample_queries(qs, 20)) == 10 and sample_queries(qs, None) is qs
    with pytest.raises(ConfigError, match="max_queries=0"):
        sample_queries(qs, 0)


def test_filter_cli_prints_counts_and_writes_provenance(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    src = tmp_path / "title.jsonl"
    assert main(["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "title", "--output", str(src)]) == 0
    assert ("kept 4 of 4 queries from 5 documents (dropped: duplicate 0, too_short 0; documents skipped: no_title 1)"
            in capsys.readouterr().out)
    out = tmp_path / "rt.jsonl"
    assert main(["-q", "queries", "filter", "--dataset", str(tiny_beir), "--queries", str(src), "--round-trip", "bm25",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["method"] == "crop-title" and meta["filters"][-1]["filter"] == "round_trip"
    assert meta["filters"][-1]["dropped"] == 0 and "kept 4 of 4 queries" in printed and "round_trip 0" in printed


def _titles_and_rest(tiny_beir, tmp_path):
    """Title crops (d3 has no title), then sentence crops of the documents the titles left without a query."""
    from retrieval_kd.cli.main import main

    titles, rest = tmp_path / "title.jsonl", tmp_path / "rest.jsonl"
    assert main(["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "title", "--output", str(titles)]) == 0
    assert main(["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "sentence", "--exclude-sources",
                 str(titles), "--output", str(rest)]) == 0
    return titles, rest


def test_exclude_sources_leaves_out_the_documents_an_earlier_set_covers(tiny_beir, tmp_path, capsys):
    titles, rest = _titles_and_rest(tiny_beir, tmp_path)
    assert "kept 1 of 1 queries from 1 documents" in capsys.readouterr().out
    made = read_query_set(rest)
    assert made.sources == {"ict-d3-0": "d3"} and made.counts["skipped_documents"] == {"excluded": 4}
    assert made.provenance["settings"]["excluded_documents"] == 4


def test_exclude_sources_refuses_its_output_an_empty_rest_and_a_missing_file(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    titles, rest = _titles_and_rest(tiny_beir, tmp_path)
    before = titles.read_bytes()
    crop = ["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "span"]
    capsys.readouterr()
    assert main([*crop, "--exclude-sources", str(titles), "--output", str(titles)]) == 2
    assert "is both --output and an --exclude-sources file" in capsys.readouterr().err
    assert titles.read_bytes() == before
    out = tmp_path / "none.jsonl"
    assert main([*crop, "--exclude-sources", str(titles), "--exclude-sources", str(rest), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "all 5 documents with text are excluded" in err and str(titles) in err and str(rest) in err
    assert not out.exists()
    assert main([*crop, "--exclude-sources", str(tmp_path / "nope.jsonl"), "--output", str(out)]) == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such file or folder" in capsys.readouterr().err


def test_generation_excludes_before_sampling_and_keys_its_output_by_the_selection(tiny_beir, tiny_causal_lm,
                                                                                  tmp_path):
    coll = load_collection(str(tiny_beir))
    gen, out = _tiny_generator(tiny_causal_lm, n=1), tmp_path / "gen.jsonl"
    qs = generate_queries(gen, coll, out, batch_size=2, exclude_documents={"d1", "d4", "not-in-corpus"})
    assert qs.counts["documents"] == 3 and qs.provenance["settings"]["excluded_documents"] == 2
    assert qs.counts["candidates"] == 3 and set(qs.sources.values()) <= {"d2", "d3", "d5"}  # (filters may drop)
    again = generate_queries(gen, coll, out, batch_size=2, exclude_documents={"d1"})  # not the finished run's set
    assert again.counts["documents"] == 4 and set(read_query_set(out).sources.values()) <= {"d2", "d3", "d4", "d5"}


def test_merged_sets_count_each_document_once_and_refuse_a_clash(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    titles, rest = _titles_and_rest(tiny_beir, tmp_path)
    both = tmp_path / "both.jsonl"
    capsys.readouterr()
    assert main(["-q", "queries", "filter", "--dataset", str(tiny_beir), "--queries", str(titles), str(rest),
                 "--output", str(both)]) == 0
    assert "kept 5 of 5 queries from 5 documents" in capsys.readouterr().out
    merged = read_query_set(both)
    assert sorted(merged.sources.values()) == ["d1", "d2", "d3", "d4", "d5"] and merged.method == "mixed"
    assert [p["method"] for p in merged.provenance["merged"]] == ["crop-title", "crop-sentence"]
    assert merge_query_sets([merged]) is merged
    with pytest.raises(IntegrityError, match="'title-d1-0' is in two of the sets"):
        merge_query_sets([read_query_set(titles), read_query_set(titles)])
    assert main(["-q", "queries", "filter", "--dataset", str(tiny_beir), "--queries", str(titles), str(titles),
                 "--output", str(both)]) == 2
    assert "a file is named twice" in capsys.readouterr().err


# -- pseudo-qrels ------------------------------------------------------------------------------------------------
def test_pseudo_qrels_by_hand():
    run = {"q1": {"d1": 0.2, "d2": 0.9, "d3": 0.9}, "q2": {"d4": 0.5}, "q3": {"d1": 0.1}}
    sources = {"q1": "d1", "q2": "d5"}
    assert pseudo_qrels(run, sources, "source") == {"q1": {"d1": 1}, "q2": {"d5": 1}}   # q3 has no source
    assert pseudo_qrels(run, positive="teacher-top1") == {"q1": {"d2": 1}, "q2": {"d4": 1}, "q3": {"d1": 1}}
    assert pseudo_qrels(run, positive="teacher-top2") == {"q1": {"d2": 1, "d3": 1}, "q2": {"d4": 1},
                                                         "q3": {"d1": 1}}
    assert pseudo_qrels(run, sources, "both", grade=2) == {"q1": {"d1": 2, "d2": 2}, "q2": {"d5": 2, "d4": 2},
                                                           "q3": {"d1": 2}}
    with pytest.raises(ConfigError, match="teacher-topN"):
        pseudo_qrels(run, sources, "teacher-top0")
    with pytest.raises(ValueError, match="source documents"):
        pseudo_qrels(run, None, "source")


# -- label-free training data ------------------------------------------------------------------------------------
def _config(folder, store, queries, **data):
    from retrieval_kd.students import load_config

    return load_config({"name": "lf", "model": "unused", "data": {
        "dataset": str(folder), "split": "test", "store": str(store), "teacher": "bm25", "max_negatives": 2,
        "dev_fraction": 0.0, "queries": str(queries) if queries else None, "positives": "source", **data},
        "sampler": {"kind": "random"}})


def test_label_free_pairs_from_generated_queries_and_bm25_teacher(tiny_beir, tiny_causal_lm, tmp_path):
    from retrieval_kd.students.dense import prepare_training_data
    from retrieval_kd.teachers import ScoreStore, score_candidates
    from retrieval_kd.teachers.bm25 import BM25Teacher

    coll = load_collection(str(tiny_beir))
    out = tmp_path / "queries.jsonl"
    qs = generate_queries(_tiny_generator(tiny_causal_lm), coll, out, batch_size=2, seed=5)
    candidates = {q: {d: 0.0 for d in coll.corpus.ids} for q in qs.queries}   # all five documents
    score_candidates(BM25Teacher(), coll, candidates, tmp_path / "scores", queries=qs.queries)
    data = prepare_training_data(_config(tiny_beir, tmp_path / "scores", out), coll)
    with ScoreStore(tmp_path / "scores") as store:
        run = store.get(store.resolve("bm25"))
    assert data.qrels == {q: {qs.sources[q]: 1} for q in qs.queries}
    rows = data.dataset.to_list()
    assert len(rows) == 2 * len(qs)                                # one positive x the two hardest negatives
    for q in qs.queries:
        mine = [r for r in rows if r["query_id"] == q]
        negatives = sorted((d for d in run[q] if d != qs.sources[q]), key=lambda d: (-run[q][d], d))[:2]
        assert [r["negative_id"] for r in mine] == negatives
        assert {r["positive_id"] for r in mine} == {qs.sources[q]} and {r["query"] for r in mine} == {qs.queries[q]}
        assert [r["score_positive"] for r in mine] == [run[q][qs.sources[q]]] * 2
        assert [r["score_negative"] for r in mine] == [run[q][d] for d in negatives]
    assert data.train_q == sorted(qs.queries) and data.query_texts == qs.queries


def test_label_free_removed_sentence_teacher_positives_and_mixing(tiny_beir, tmp_path):
    from retrieval_kd.students.dense import prepare_training_data
    from retrieval_kd.teachers import ScoreStore

    folder = _folder(tmp_path, SENTENCES + [{"_id": "d1", "title": "", "text": "Goldfish grow larger in big ponds."}])
    coll = load_collection(str(folder))
    qs = crop_queries(coll, "sentence", seed=0, remove_sentence=1.0)    # one query each from s1 and s2
    write_query_set(qs, tmp_path / "ict.jsonl")
    q_s1 = next(q for q in qs.queries if qs.sources[q] == "s1")
    q_s2 = next(q for q in qs.queries if qs.sources[q] == "s2")
    with ScoreStore(tmp_path / "scores") as store:
        store.register("bm25-x", "bm25", {})
        store.put_query("bm25-x", q_s1, {"s1": 3.0, "s2": 1.0, "s3": 2.0})
        store.put_query("bm25-x", q_s2, {"s1": 5.0, "s2": 4.0})
        store.put_query("bm25-x", "q1", {"d1": 1.0, "s1": 0.5})
    data = prepare_training_data(_config(folder, tmp_path / "scores", tmp_path / "ict.jsonl"), coll)
    rows = {(r["query_id"], r["positive_id"], r["negative_id"]): r for r in data.dataset.to_list()}
    assert set(rows) == {(q_s1, "s1", "s3"), (q_s1, "s1", "s2"), (q_s2, "s2", "s1")}
    positive = rows[(q_s1, "s1", "s3")]["positive"]                    # s1 without the query sentence
    assert qs.queries[q_s1] not in positive and positive.startswith("Fish ")
    assert rows[(q_s1, "s1", "s3")]["query"] == qs.queries[q_s1]
    # the teacher's top document as positive: s1 for both (q_s2's source s2 becomes a negative)
    data = prepare_training_data(_config(folder, tmp_path / "scores", tmp_path / "ict.jsonl", positives="teacher"),
                                 coll)
    rows = {(r["query_id"], r["positive_id"], r["negative_id"]): r for r in data.dataset.to_list()}
    assert set(rows) == {(q_s1, "s1", "s3"), (q_s1, "s1", "s2"), (q_s2, "s1", "s2")}
    assert rows[(q_s2, "s1", "s2")]["negative"] == qs.positive_texts(coll.corpus)[q_s2]   # s2 without its query
    assert rows[(q_s1, "s1", "s2")]["negative"] == "Wifi is radio. Bluetooth is radio too."
    # the source left out: q_s1 learns s3 over s2 (its source s1 gone), q_s2 has only s1 left (no pair)
    data = prepare_training_data(_config(folder, tmp_path / "scores", tmp_path / "ict.jsonl", positives="teacher",
                                         exclude_source=True), coll)
    assert {(r["query_id"], r["positive_id"], r["negative_id"]) for r in data.dataset.to_list()} == {
        (q_s1, "s3", "s2")}
    assert data.qrels[q_s1] == {"s3": 1} and data.qrels[q_s2] == {"s1": 1}
    assert data.excluded == {q_s1: "s1", q_s2: "s2"}                  # the in-batch teacher leaves them out too
    # labelled + generated: q1 joins with its judged positive d1
    data = prepare_training_data(_config(folder, tmp_path / "scores", tmp_path / "ict.jsonl", mix_labeled=True),
                                 coll)
    assert data.qrels["q1"] == {"d1": 1} and ("q1", "d1", "s1") in {
        (r["query_id"], r["positive_id"], r["negative_id"]) for r in data.dataset.to_list()}


def test_label_free_command_line_flow(tiny_beir, tmp_path, capsys):
    """rkd queries crop -> rkd teach mine --queries (sources added) -> rkd teach --queries -> the pairs."""
    from retrieval_kd.cli.main import main
    from retrieval_kd.data import read_run
    from retrieval_kd.students.dense import prepare_training_data

    q, cands, store = tmp_path / "q.jsonl", tmp_path / "cands.run", tmp_path / "scores"
    assert main(["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "title", "--output", str(q)]) == 0
    assert main(["-q", "teach", "mine", "--dataset", str(tiny_beir), "--queries", str(q), "--top-k", "1",
                 "--output", str(cands)]) == 0
    run = read_run(cands)
    qs = read_query_set(q)
    assert set(run) == set(qs.queries) and all(qs.sources[x] in run[x] for x in run)
    assert main(["-q", "teach", "--dataset", str(tiny_beir), "--queries", str(q), "--candidates", str(cands),
                 "--teacher", "bm25", "--store", str(store)]) == 0
    # top-1 candidates are the sources themselves (titles find their documents): no negative, so no pair yet
    with pytest.raises(ValueError, match="no \\(positive, negative\\) pair"):
        prepare_training_data(_config(tiny_beir, store, q))
    assert main(["-q", "teach", "mine", "--dataset", str(tiny_beir), "--queries", str(q), "--top-k", "5",
                 "--output", str(cands)]) == 0
    assert main(["-q", "teach", "--dataset", str(tiny_beir), "--queries", str(q), "--candidates", str(cands),
                 "--teacher", "bm25", "--store", str(store)]) == 0
    data = prepare_training_data(_config(tiny_beir, store, q))
    # BM25 finds "Ponds" also in d1 ("big ponds"), "Bluetooth" also in d2; "Goldfish" and "Wifi" only in their source
    assert {(r["query_id"], r["positive_id"], r["negative_id"]) for r in data.dataset.to_list()} == {
        ("title-d4-0", "d4", "d1"), ("title-d5-0", "d5", "d2")}
    capsys.readouterr()
    assert main(["-q", "teach", "mine", "--dataset", str(tiny_beir), "--output", str(cands)]) == 2
    assert "needs --split (judged queries) or --queries" in capsys.readouterr().err


def test_label_free_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="set data.queries"):
        _config(tmp_path, tmp_path, None)
    with pytest.raises(ConfigError, match="data.positives qrels"):
        _config(tmp_path, tmp_path, tmp_path / "q.jsonl", positives="qrels")
    with pytest.raises(ConfigError, match="positive 'gold'"):
        _config(tmp_path, tmp_path, tmp_path / "q.jsonl", positives="gold")
    with pytest.raises(ConfigError, match="mix_labeled"):
        _config(tmp_path, tmp_path, None, positives="teacher", mix_labeled=True)
    with pytest.raises(ConfigError, match="exclude_source"):
        _config(tmp_path, tmp_path, tmp_path / "q.jsonl", positives="both", exclude_source=True)
    from retrieval_kd.students import load_config

    assert load_config({}).data.positives == "qrels" and load_config({}).data.queries is None   # the default


# -- resume after SIGKILL ----------------------------------------------------------------------------------------
KILLER = """
import os, signal, sys
from retrieval_kd.queries.generate import QueryGenerator

real, calls = QueryGenerator.generate, []
def generate(self, documents, seed=0):
    calls.append(1)
    if len(calls) == 3:                      # batches 0 and 1 are committed, batch 2 is under way
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, documents, seed)
QueryGenerator.generate = generate
from retrieval_kd.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_generation_killed_after_two_batches_resumes_to_the_uninterrupted_result(tiny_beir, tiny_causal_lm, tmp_path,
                                                                                   monkeypatch):
    from retrieval_kd.cli.main import main

    model, tok = tiny_causal_lm
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    args = ["-q", "queries", "generate", "--dataset", str(tiny_beir), "--model", str(tmp_path / "lm"),
            "--per-document", "2", "--batch-size", "2", "--max-new-tokens", "6", "--seed", "3"]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = tmp_path / "killed" / "queries.jsonl"
    first = subprocess.run([sys.executable, str(killer), *args, "--output", str(killed)], capture_output=True,
                           text=True, cwd=ROOT, timeout=600)
    assert first.returncode == -9, first.stderr[-3000:]
    parts = killed.with_name("queries.jsonl.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["batch-000000.jsonl", "batch-000001.jsonl", "settings.json"]
    assert not killed.exists() and not sidecar_path(killed).exists()

    calls = []
    real = QueryGenerator.generate
    monkeypatch.setattr(QueryGenerator, "generate", lambda self, docs, seed=0: calls.append(1) or real(self, docs, seed))
    assert main([*args, "--output", str(killed)]) == 0
    assert len(calls) == 1 and not parts.exists()                      # only batch 2 was generated again
    whole = tmp_path / "whole" / "queries.jsonl"
    assert main([*args, "--output", str(whole)]) == 0
    assert killed.read_bytes() == whole.read_bytes()
    assert sidecar_path(killed).read_bytes() == sidecar_path(whole).read_bytes()
    # other settings over the finished batches of an unfinished run are refused, naming what differs
    settings = {"generator": {}, "seed": 3}
    from retrieval_kd.queries.parts import BatchParts

    BatchParts(tmp_path / "p", settings)
    with pytest.raises(ConfigError, match=r"seed differ.*--restart"):
        BatchParts(tmp_path / "p", {**settings, "seed": 4})
    assert BatchParts(tmp_path / "p", {**settings, "seed": 4}, restart=True).done() == set()


def test_generated_queries_are_keyed_by_the_dtype_and_device_they_were_sampled_in(tiny_beir, tiny_causal_lm,
                                                                                   tmp_path, monkeypatch):
    import copy

    import torch

    from retrieval_kd.queries.generate import auto_dtype

    assert auto_dtype("cpu", frozenset({"avx2", "avx512_bf16"})) == "bfloat16"
    assert auto_dtype("cpu", frozenset({"amx_bf16"})) == "bfloat16"
    assert auto_dtype("cpu", frozenset({"avx2", "avx512f"})) == "float32"   # emulated bf16 is slower than fp32
    assert auto_dtype("mps") == "float32"
    with pytest.raises(ConfigError, match="dtype must be one of auto"):
        QueryGenerator("tiny-llama", dtype="fp8")
    model, tok = tiny_causal_lm
    fp32 = _tiny_generator(tiny_causal_lm)
    bf16 = QueryGenerator("tiny-llama", queries_per_document=2, max_new_tokens=6).set_model(
        copy.deepcopy(model).to(torch.bfloat16), tok, revision="random-init")
    assert (fp32.config()["dtype"], fp32.config()["device"]) == ("float32", "cpu")
    assert bf16.config()["dtype"] == "bfloat16"
    collection = load_collection(str(tiny_beir))
    # an fp32 run killed after its first batch: a bf16 rerun would mix batches of two dtypes, so it is refused
    out = tmp_path / "q.jsonl"
    real = QueryGenerator.generate
    calls = []

    def dies_on_the_second_batch(self, docs, seed=0):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, docs, seed)

    monkeypatch.setattr(QueryGenerator, "generate", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate_queries(fp32, collection, out, batch_size=2, seed=1)
    monkeypatch.setattr(QueryGenerator, "generate", real)
    with pytest.raises(ConfigError, match=r"generator\.dtype, generator\.isa differ"):
        generate_queries(bf16, collection, out, batch_size=2, seed=1)
    done = generate_queries(fp32, collection, out, batch_size=2, seed=1)
    assert done.provenance["settings"]["generator"]["dtype"] == "float32"
    # and a finished fp32 output is not handed back for a bf16 request: it is generated again, in bf16
    again = generate_queries(bf16, collection, out, batch_size=2, seed=1)
    assert again.provenance["settings"]["generator"]["dtype"] == "bfloat16"
    assert read_query_set(out).provenance == again.provenance


# -- bad inputs --------------------------------------------------------------------------------------------------
def test_empty_corpus_and_documents_without_text(tmp_path):
    empty = _folder(tmp_path, [], "empty")
    with pytest.raises(DataFormatError, match="holds no documents"):
        crop_queries(load_collection(str(empty)), "title")
    docs = [{"_id": "a", "title": "T", "text": "Some text."}, {"_id": "b", "title": "", "text": "  "},
            {"_id": "c", "title": "", "text": ""}]
    coll = load_collection(str(_folder(tmp_path, docs)))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: document 'b' \(and 1 more\) has no text.*--skip-empty"):
        crop_queries(coll, "sentence")
    qs = crop_queries(coll, "sentence", skip_empty=True)
    assert qs.queries == {"ict-a-0": "Some text."} and qs.counts["skipped_documents"] == {"no_text": 2}
    blank = load_collection(str(_folder(tmp_path, docs[1:], "blank")))
    with pytest.raises(DataFormatError, match="none of its 2 documents has text"):
        crop_queries(blank, "span", skip_empty=True)


NINE = "".join(json.dumps({"document": f"d{i}", "query": f"q{i}"}) + "\n" for i in range(9))


@pytest.mark.parametrize("content, match", [
    ('{"document": "A doc.", "query": "a query"}\n{"document": "B doc."}\n',
     r"ex\.jsonl:2: an example needs .*'query' missing"),
    ('{"document": "A doc.", "query": "a query"}\n\n{not json\n', r"ex\.jsonl:3: malformed JSON"),
    (NINE, "holds 9 examples; .* at most 8"),
    ("\n", "holds no examples"),
])
def test_bad_examples_files_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "ex.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=match):
        read_examples(path)


def test_examples_read_and_a_bad_file_fails_before_the_model_loads(tmp_path, tiny_beir, capsys):
    from retrieval_kd.cli.main import main

    assert [e.query for e in read_examples(_examples(tmp_path))] == ["do goldfish grow", "wifi vs bluetooth"]
    path = tmp_path / "ex.jsonl"
    path.write_text("\n")
    capsys.readouterr()
    assert main(["-q", "queries", "generate", "--dataset", str(tiny_beir), "--model", "no/such-model", "--examples",
                 str(path), "--output", str(tmp_path / "q.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"rkd queries: error: {path}: holds no examples" in err and "Traceback" not in err


def _examples(tmp_path):
    return write_jsonl(tmp_path / "good.jsonl", [{"document": "Goldfish grow in ponds.", "query": "do goldfish grow"},
                                                  {"document": "Wifi vs bluetooth.", "query": "  wifi vs\tbluetooth "}])


def test_query_set_files_are_checked(tiny_beir, tmp_path):
    coll = load_collection(str(tiny_beir))
    qs = crop_queries(coll, "title")
    out = write_query_set(qs, tmp_path / "q.jsonl")
    assert sidecar_path(out).name == "q.provenance.json"
    out.write_text(out.read_text().replace("Goldfish", "Carp"))
    with pytest.raises(IntegrityError, match="sha256 differs"):
        read_query_set(out)
    sidecar_path(out).unlink()
    with pytest.raises(FileNotFoundError, match="no provenance sidecar"):
        read_query_set(out)
    with pytest.raises(ValueError, match="no query was kept"):
        write_query_set(qs.subset([]), tmp_path / "none.jsonl")
    other = load_collection(str(_folder(tmp_path, SENTENCES)))
    with pytest.raises(IntegrityError, match="made from corpus"):
        qs.check_corpus(other)


def test_an_output_over_a_file_the_command_reads_is_refused_and_the_file_kept(tiny_beir, tmp_path, capsys):
    """``--output`` (or its sidecar) on the collection's corpus, queries or qrels, or on the imported file, is
    refused before anything is written; an in-place ``filter`` stays allowed (read whole, replaced atomically)."""
    from retrieval_kd.cli.main import main

    files = [tiny_beir / "corpus.jsonl", tiny_beir / "queries.jsonl", tiny_beir / "qrels" / "test.tsv"]
    before = [f.read_bytes() for f in files]
    crop = ["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "sentence"]
    capsys.readouterr()
    for target in files:
        assert main([*crop, "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"would replace or shadow {target.resolve()}, which this command reads" in err and "Traceback" not in err
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"_id": "d1", "title": "", "text": "", "query": "goldfish size"}])
    odd = write_jsonl(tmp_path / "odd.provenance.json", [{"_id": "d2", "title": "", "text": "", "query": "wifi"}])
    kept = {gen: gen.read_bytes(), odd: odd.read_bytes()}
    imp = ["-q", "queries", "import", "--dataset", str(tiny_beir)]
    assert main([*imp, "--input", str(gen), "--output", str(gen)]) == 2
    assert f"--output ({gen.resolve()}) would replace or shadow {gen.resolve()}" in capsys.readouterr().err
    assert main([*imp, "--input", str(odd), "--output", str(tmp_path / "odd.jsonl")]) == 2
    assert f"the provenance sidecar of --output ({odd.resolve()}) would replace or shadow {odd.resolve()}" \
        in capsys.readouterr().err
    assert [f.read_bytes() for f in files] == before and {f: f.read_bytes() for f in kept} == kept
    assert not (tmp_path / "gen.provenance.json").exists() and not (tmp_path / "odd.jsonl").exists()
    out = tmp_path / "q.jsonl"
    assert main([*crop, "--output", str(out)]) == 0
    made = read_query_set(out).queries
    assert main(["-q", "queries", "filter", "--dataset", str(tiny_beir), "--queries", str(out), "--min-words", "7",
                 "--output", str(out)]) == 0
    kept = read_query_set(out).queries
    assert kept == {q: t for q, t in made.items() if len(t.split()) >= 7} and 0 < len(kept) < len(made)


def test_duplicate_document_ids_name_both_lines(tmp_path):
    docs = [{"_id": "a", "title": "", "text": "One sentence here."}, {"_id": "b", "title": "", "text": "Two."},
            {"_id": "a", "title": "", "text": "Another text."}]
    coll = load_collection(str(_folder(tmp_path, docs)))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:3: duplicate document id 'a' \(first on line 1\)"):
        crop_queries(coll, "sentence")


def test_a_sidecar_path_that_is_a_folder_leaves_no_queries_file(tiny_beir, tmp_path):
    qs = crop_queries(load_collection(str(tiny_beir)), "title")
    (tmp_path / "q.provenance.json").mkdir()
    with pytest.raises(IsADirectoryError):
        write_query_set(qs, tmp_path / "q.jsonl")
    assert not (tmp_path / "q.jsonl").exists()


def test_an_empty_import_file_is_named(tiny_beir, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.tsv: holds no queries"):
        import_queries(empty, load_collection(str(tiny_beir)))


def test_a_negative_seed_is_refused_naming_the_flag(tiny_beir, tmp_path, capsys):
    from retrieval_kd.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["-q", "queries", "crop", "--dataset", str(tiny_beir), "--method", "title", "--seed", "-1",
              "--output", str(tmp_path / "q.jsonl")])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err
    assert not (tmp_path / "q.jsonl").exists()


def test_batch_parts_never_delete_what_they_did_not_write(tmp_path):
    from retrieval_kd.queries.parts import BatchParts

    foreign = tmp_path / "q.jsonl.parts"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for restart in (False, True):
        with pytest.raises(ConfigError, match="not written by retrieval-kd"):
            BatchParts(foreign, {"seed": 0}, restart=restart)
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    parts = BatchParts(foreign, {"seed": 0})  # an empty folder is taken over
    parts.put(0, [{"x": 1}])
    (foreign / "added-later.txt").write_text("mine too")
    assert BatchParts(foreign, {"seed": 1}, restart=True).done() == set()  # restart drops only the batches
    BatchParts(foreign, {"seed": 1}).remove()
    assert sorted(p.name for p in foreign.iterdir()) == ["added-later.txt"]  # kept, and so the folder
    (foreign / "added-later.txt").unlink()
    parts = BatchParts(foreign, {"seed": 2})
    parts.put(3, [{"x": 1}])
    parts.remove()
    assert not foreign.exists()


def test_an_output_that_would_shadow_or_replace_what_is_read_is_refused(tiny_beir, tmp_path, capsys):
    """Beyond the exact files: the gzipped / plain twin a later load would read instead, a name the BEIR layout
    looks for (a new qrels split), a query set's shared sidecar, the examples file, a file of a GPL folder."""
    import gzip
    import shutil

    from retrieval_kd.cli.main import main

    gz = tmp_path / "gz"
    shutil.copytree(tiny_beir, gz)
    (gz / "corpus.jsonl.gz").write_bytes(gzip.compress((gz / "corpus.jsonl").read_bytes()))
    (gz / "corpus.jsonl").unlink()
    crop = ["-q", "queries", "crop", "--dataset", str(gz), "--method", "sentence"]
    capsys.readouterr()
    for target in (gz / "corpus.jsonl", gz / "queries.tsv", gz / "qrels" / "train.tsv"):
        assert main([*crop, "--output", str(target)]) == 2
        assert "would replace or shadow" in capsys.readouterr().err and not target.exists()
    assert sorted(p.name for p in gz.rglob("*") if p.is_file()) == ["corpus.jsonl.gz", "queries.jsonl", "test.tsv"]
    a = tmp_path / "a.jsonl"
    assert main([*crop, "--output", str(a)]) == 0
    sidecar = sidecar_path(a).read_bytes()
    filt = ["-q", "queries", "filter", "--dataset", str(gz), "--queries", str(a)]
    assert main([*filt, "--output", str(tmp_path / "a.jsonl.gz")]) == 2  # a.jsonl.gz's sidecar is a's
    assert f"would replace or shadow {sidecar_path(a).resolve()}" in capsys.readouterr().err
    assert main([*crop, "--exclude-sources", str(a), "--output", str(tmp_path / "a.jsonl.gz")]) == 2
    assert sidecar_path(a).read_bytes() == sidecar and not (tmp_path / "a.jsonl.gz").exists()
    examples = _examples(tmp_path)
    assert main(["-q", "queries", "generate", "--dataset", str(gz), "--model", "no/such-model", "--examples",
                 str(examples), "--output", str(examples)]) == 2
    assert f"would replace or shadow {examples.resolve()}" in capsys.readouterr().err
    gpl = tmp_path / "generated"
    write_jsonl(gpl / "qgen-queries.jsonl", [{"_id": "genQ1", "text": "pond water"}])
    (gpl / "qgen-qrels").mkdir()
    (gpl / "qgen-qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\ngenQ1\td4\t1\n")
    kept = (gpl / "qgen-queries.jsonl").read_bytes()
    imp = ["-q", "queries", "import", "--dataset", str(gz), "--input", str(gpl)]
    assert main([*imp, "--output", str(gpl / "qgen-queries.jsonl")]) == 2
    assert (gpl / "qgen-queries.jsonl").read_bytes() == kept
    assert main([*imp, "--output", str(gpl / "imported.jsonl")]) == 0  # a new file beside them is fine


def test_a_parts_folder_holding_only_a_killed_jobs_files_is_taken_over(tmp_path):
    """A job killed while writing its settings, or while removing its folder, leaves files of its own and no
    settings: the next run starts afresh instead of refusing the folder as someone else's."""
    from retrieval_kd.queries.parts import BatchParts

    for leftovers in ([".settings.json.123.abc.tmp"], ["batch-000000.jsonl", "batch-000001.jsonl"]):
        folder = tmp_path / f"p{len(leftovers)}"
        folder.mkdir()
        for name in leftovers:
            (folder / name).write_text("{}\n")
        parts = BatchParts(folder, {"seed": 0})
        assert parts.done() == set() and sorted(p.name for p in folder.iterdir()) == ["settings.json"]
