"""r1proxy: a local caching gateway between Roo Code and OpenRouter, made for DeepSeek R1."""

__version__ = "0.1.0"
