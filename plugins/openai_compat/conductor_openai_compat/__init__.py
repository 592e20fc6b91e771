"""conductor-openai-compat: a Conductor backend for OpenAI-compatible chat-completions servers."""

from .backend import OpenAICompatBackend, build_body
from .plugin import OpenAIConfig
from .sse import SSEEvent, SSEParser

__all__ = ["OpenAICompatBackend", "OpenAIConfig", "SSEEvent", "SSEParser", "build_body"]
