"""Rectified flow: the DiT's training objective and its few-step sampler."""
