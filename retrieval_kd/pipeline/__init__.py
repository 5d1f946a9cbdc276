"""The whole job in one command: ``rkd pipeline CONFIG`` runs mine -> teach -> train dense -> train sparse ->
build indexes -> retrieve -> evaluate -> report, each stage skipped when its outputs exist with the same
fingerprint, so a killed run resumes where it stopped. Artefacts live under ``experiments/<name>/``.
"""

from retrieval_kd.pipeline.config import EvalSet, PipelineConfig, load_pipeline_config
from retrieval_kd.pipeline.runner import Pipeline, Stage

__all__ = ["EvalSet", "Pipeline", "PipelineConfig", "Stage", "load_pipeline_config"]
