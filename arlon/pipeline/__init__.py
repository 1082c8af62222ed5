"""The chain that makes a video: `pipeline` (ARLONPipeline, streamed), `job` (what a generation
asks for, checked), `coarse` (the AR's codes -> coarse latent -> coarse video) and `folders`
(pipeline folders and the one loader)."""

from arlon.models.ar_sampler import ARSampling
from arlon.pipeline.job import DiTSampling
from arlon.pipeline.pipeline import ARLONPipeline, ARLONPipelineOutput

__all__ = ["ARLONPipeline", "ARLONPipelineOutput", "ARSampling", "DiTSampling"]
