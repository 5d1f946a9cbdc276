"""An HTTP JSON search service over index folders (``rkd serve``): FastAPI on uvicorn, micro-batched dense search.

Importing this package imports FastAPI; ``import retrieval_kd`` does not.
"""

from __future__ import annotations

from retrieval_kd.serve.app import HybridSpec, create_app
from retrieval_kd.serve.batcher import BatchStats, MicroBatcher
from retrieval_kd.serve.config import ServeConfig
from retrieval_kd.serve.server import BackgroundServer, bind, uvicorn_server

__all__ = ["BackgroundServer", "BatchStats", "HybridSpec", "MicroBatcher", "ServeConfig", "bind", "create_app",
           "uvicorn_server"]
