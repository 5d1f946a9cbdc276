"""Shared fixtures: a private cache and index folder per test session, the offline data mirror, tiny collections."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("RKD_DATA_MIRROR") or ROOT.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path_factory, monkeypatch):
    """Every test writes its caches and indexes under a temporary folder, never into the checkout."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("RKD_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("RKD_INDEX_DIR", str(base / "indexes"))


@pytest.fixture
def mirror(monkeypatch) -> Path:
    """The offline mirror of the real collections (skips where it is absent)."""
    if not (MIRROR / "scifact").is_dir():
        pytest.skip(f"no data mirror at {MIRROR} (set RKD_DATA_MIRROR)")
    monkeypatch.setenv("RKD_DATA_MIRROR", str(MIRROR))
    return MIRROR


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    """A five-document BEIR folder with two queries and a test split."""
    folder = tmp_path / "tiny"
    write_jsonl(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Goldfish", "text": "Goldfish grow larger in big ponds."},
        {"_id": "d2", "title": "Wifi", "text": "Wifi and bluetooth are wireless radio standards."},
        {"_id": "d3", "title": "", "text": "The first world war began in 1914."},
        {"_id": "d4", "title": "Ponds", "text": "A pond is a small body of still water."},
        {"_id": "d5", "title": "Bluetooth", "text": "Bluetooth pairs a phone with headphones."},
    ])
    write_jsonl(folder / "queries.jsonl", [
        {"_id": "q1", "text": "do goldfish grow"},
        {"_id": "q2", "text": "wifi vs bluetooth"},
        {"_id": "q3", "text": "unjudged query"},
    ])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td4\t1\nq2\td2\t1\nq2\td5\t1\n")
    return folder


def hub_model(hub_id: str) -> str:
    """A model of the offline pack, from the Hugging Face cache (skips where `make models` has not run)."""
    from retrieval_kd.models import snapshot_path

    if snapshot_path(hub_id) is None:
        pytest.skip(f"{hub_id} is not in the Hugging Face cache; run `make models` (rkd models pull-offline)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return hub_id


@pytest.fixture(scope="session")
def tiny_causal_lm():
    """A randomly initialised 1-layer Llama with SmolLM2's tokenizer: real code paths, no real weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hub_id = hub_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(hub_id)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(config).eval(), tokenizer


# ---------------------------------------------------------------------------------------- students (tiny models)
WORDS = ("fish pond water grow goldfish wifi bluetooth radio wireless phone war history battery solar power "
         "energy cell protein gene cancer tumor vaccine virus immune heart blood brain sleep memory").split()


@pytest.fixture(scope="session")
def tiny_st_folder(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a word-level vocabulary, saved as a SentenceTransformer folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-st")
    hf = folder / "hf"
    hf.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tokenizer("fish pond")["input_ids"] == [2, 5, 6, 3]
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(16, "mean"), Normalize()])
    model.save(str(folder / "st"))
    return folder / "st"


def write_word_collection(folder: Path, rng, n_docs: int, doc_words: int, splits: dict) -> None:
    """A BEIR folder of random-word documents; query ``qi`` takes three words of ``di``, its one positive (a
    learnable signal). ``splits``: ``{split: range of query numbers}``."""
    docs = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, doc_words))} for i in range(n_docs)]
    write_jsonl(folder / "corpus.jsonl", docs)
    n_queries = max(max(r) for r in splits.values()) + 1
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choice(docs[i]["text"].split(), 3))} for i in range(n_queries)]
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir()
    for split, numbers in splits.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in numbers))


@pytest.fixture
def tiny_distill(tmp_path, tiny_st_folder):
    """A 16-document BEIR folder, 12 judged train queries, and a score store with a hand-made ensemble teacher."""
    from retrieval_kd.teachers import ScoreStore

    rng = np.random.default_rng(0)
    folder = tmp_path / "beir"
    write_word_collection(folder, rng, n_docs=16, doc_words=6, splits={"train": range(12)})
    store = tmp_path / "scores"
    with ScoreStore(store) as s:
        s.register("ensemble-test", "ensemble(test)", {})
        for i in range(12):
            scores = {f"d{j}": float(rng.uniform(0, 0.6)) for j in rng.choice(16, 8, replace=False) if j != i}
            scores[f"d{i}"] = 0.9
            s.put_query("ensemble-test", f"q{i}", scores)
    config = {
        "name": "tiny", "model": str(tiny_st_folder), "max_seq_length": 32, "output_dir": str(tmp_path / "student"),
        "data": {"dataset": str(folder), "split": "train", "store": str(store), "max_negatives": 5,
                 "dev_fraction": 0.0},
        "loss": {"name": "margin-mse", "inbatch_teacher": str(tiny_st_folder)},
        "sampler": {"kind": "tas-balanced", "n_clusters": 3, "cluster_model": str(tiny_st_folder), "n_bins": 3},
        "training": {"per_device_train_batch_size": 4, "max_steps": 6, "learning_rate": 1e-3, "logging_steps": 1,
                     "save_strategy": "no", "seed": 7, "dataloader_pin_memory": False, "use_cpu": True},
    }
    return config


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory):
    """A randomly initialised 2-layer BERT masked LM with a word-level vocabulary (a stand-in for SPLADE)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-mlm")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer
