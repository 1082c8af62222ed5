"""ARLON: long text-to-video generation, an autoregressive transformer guiding a diffusion transformer."""

__version__ = "0.1.0"
