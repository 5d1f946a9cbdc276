"""retrieval-kd: train retrievers by knowledge distillation and build the ANN indexes that serve them.

The package follows the flow of the work: ``data`` -> ``teachers`` -> ``students`` -> ``quantization`` ->
``index`` -> ``eval``. Heavy parts (torch, transformers, faiss) are imported lazily by the modules that need
them, so ``import retrieval_kd`` stays fast.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
