"""Conductor: a local daemon between chat surfaces and LLM backends."""

from .backends import Backend, BackendHealth, ChatRequest, Finish, Message, Timeouts
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendHealth",
    "ChatRequest",
    "Finish",
    "Message",
    "Timeouts",
    "__version__",
    "hookimpl",
]
