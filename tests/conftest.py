"""Shared fixtures: a private cache and index folder per test session, the offline data mirror, tiny collections."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
