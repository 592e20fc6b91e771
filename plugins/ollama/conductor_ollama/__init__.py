"""conductor-ollama: the Ollama backend for the conductor (backend type ``ollama``)."""

from .backend import OllamaBackend
from .plugin import OllamaConfig

__all__ = ["OllamaBackend", "OllamaConfig"]
