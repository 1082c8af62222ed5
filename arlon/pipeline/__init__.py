"""The chain that makes a video: `pipeline` (ARLONPipeline, streamed), `coarse` (the AR's codes ->
coarse latent -> coarse video) and `folders` (pipeline folders and the one loader)."""

from arlon.models.ar_sampler import ARSampling
from arlon.pipeline.pipeline import ARLONPipeline, ARLONPipelineOutput, DiTSampling

__all__ = ["ARLONPipeline", "ARLONPipelineOutput", "ARSampling", "DiTSampling"]
