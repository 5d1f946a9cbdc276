"""Students: retrievers trained from teacher scores.

* dense bi-encoders (:func:`train_dense`): Margin-MSE, listwise KL, TAS-B's dual teacher, TAS-Balanced sampling,
  on sentence-transformers' trainer;
* inference-free sparse encoders (:func:`train_sparse`): SPLADE documents, tokens x IDF queries, IDF-aware FLOPS.

Heavy libraries load on first use of a submodule.
"""

from __future__ import annotations

__all__ = ["DenseTrainingConfig", "SparseTrainingConfig", "load_config", "load_sparse_config", "train_dense",
           "train_sparse"]


def __getattr__(name: str):
    if name in ("DenseTrainingConfig", "SparseTrainingConfig", "load_config", "load_sparse_config"):
        from retrieval_kd.students import config

        return getattr(config, name)
    if name == "train_dense":
        from retrieval_kd.students.dense import train_dense

        return train_dense
    if name == "train_sparse":
        from retrieval_kd.students.sparse import train_sparse

        return train_sparse
    raise AttributeError(name)
