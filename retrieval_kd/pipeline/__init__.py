"""The whole job in one command: ``rkd pipeline CONFIG`` runs [queries ->] mine -> teach -> train dense -> train
sparse -> build indexes -> retrieve -> evaluate -> report, each stage skipped when its outputs exist with the same
fingerprint, so a killed run resumes where it stopped. Artefacts live under ``experiments/<name>/``. The
``queries`` stage makes the training queries from the corpus (label-free distillation, the config's ``queries``
section).
"""

from retrieval_kd.pipeline.config import EvalSet, PipelineConfig, load_pipeline_config
from retrieval_kd.pipeline.runner import Pipeline, Stage

__all__ = ["EvalSet", "Pipeline", "PipelineConfig", "Stage", "load_pipeline_config"]
