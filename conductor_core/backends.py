"""The Backend contract every backend plugin implements, and the values that cross it.

Streaming is the only path. ``chat(request)`` is an async generator that yields ``str`` pieces
of reply text as they arrive and then exactly one :class:`Finish`. Plain strings keep the hot
path free of per-token allocations beyond the text itself. The consumer stops iterating (and
``aclose()``\\s the generator) to cancel: the backend must then close its upstream response at
once so the server stops generating. Errors are the typed ones of :mod:`conductor_core.errors`;
no httpx, socket or anyio exception may escape a backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import msgspec

__all__ = [
    "Backend",
    "BackendHealth",
    "ChatRequest",
    "Finish",
    "Message",
    "Timeouts",
]


class Message(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    images: list[str] | None = None  # base64, as Ollama takes them


class ChatRequest(msgspec.Struct, omit_defaults=True):
    """What the kernel asks a backend for. ``model`` None means the backend's default model."""

    messages: list[Message]
    model: str | None = None
    options: dict[str, Any] | None = None  # temperature, num_predict, stop, seed, ... passed through
    keep_alive: str | int | float | None = None  # per-request override (Ollama)
    format: str | dict[str, Any] | None = None
    think: bool | None = None


class Finish(msgspec.Struct, omit_defaults=True):
    """The last item of every successful stream."""

    model: str
    finish_reason: str = "stop"
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    generation_s: float | None = None  # the backend's own generation time, for tokens/s
    load_s: float | None = None


class BackendHealth(msgspec.Struct, omit_defaults=True):
    state: Literal["up", "starting", "down"]
    detail: str = ""
    latency_ms: float | None = None


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-phase timeouts in seconds. There is deliberately no total deadline over a stream:
    a long answer is not a failure. ``between_chunks`` is generous because a cold model load
    sends no byte for a long time.

    >>> Timeouts(connect=2.0).between_chunks
    300.0
    """

    connect: float = 5.0
    between_chunks: float = 300.0
    pool: float = 10.0
    write: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect", "between_chunks", "pool", "write"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeouts.{name} must be a positive number of seconds")


@runtime_checkable
class Backend(Protocol):
    """A configured backend instance. ``name`` is its key in the config (``[backends.NAME]``)."""

    name: str
    default_model: str | None

    def chat(self, request: ChatRequest) -> AsyncIterator[str | Finish]: ...

    async def models(self) -> list[str]: ...

    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None: ...


class Background(Protocol):
    """Optional: a backend with background work (warm-up, keeping loads) defines ``run``.

    The kernel starts it with ``await task_group.start(backend.run)`` after building every
    component, never waits on it before accepting connections, and cancels it at shutdown.
    Its ``status()`` dict, if it has one, appears in ``conductor status``.
    """

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    def status(self) -> dict[str, Any]: ...
