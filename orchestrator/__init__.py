"""Local AI model runner: Docker Model Runner's API on llama.cpp's llama-server."""

__version__ = "0.1.0"
