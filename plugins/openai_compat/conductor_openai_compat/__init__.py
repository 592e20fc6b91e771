"""conductor-openai-compat: a Conductor backend for OpenAI-compatible chat-completions servers."""

from .plugin import OpenAIConfig
from .sse import SSEEvent, SSEParser


def __getattr__(name: str):
    """The backend (and httpx) load on first use, not when the plugin is discovered."""
    if name in ("OpenAICompatBackend", "build_body"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(name)

__all__ = ["OpenAICompatBackend", "OpenAIConfig", "SSEEvent", "SSEParser", "build_body"]
