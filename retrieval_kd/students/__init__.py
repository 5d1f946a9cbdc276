"""Students: retrievers trained from teacher scores.

* dense bi-encoders (:func:`train_dense`): Margin-MSE, listwise KL, TAS-B's dual teacher, TAS-Balanced sampling,
  on sentence-transformers' trainer;

Heavy libraries load on first use of a submodule.
"""

from __future__ import annotations

__all__ = ["DenseTrainingConfig", "load_config", "train_dense"]


def __getattr__(name: str):
    if name in ("DenseTrainingConfig", "load_config"):
        from retrieval_kd.students import config

        return getattr(config, name)
    if name == "train_dense":
        from retrieval_kd.students.dense import train_dense

        return train_dense
    raise AttributeError(name)
