"""A scripted fake backend and an in-process transport, so the kernel is tested end to end
without sockets, and plugin authors can drive a real kernel in their tests.

The fake is also a registered backend type (``fake``) in :mod:`conductor_core.testing.fake_plugin`,
so ``conductor serve`` subprocess tests can use it through ``CONDUCTOR_EXTRA_PLUGINS``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from ..backends import BackendHealth, ChatRequest, Finish
from ..config import Config
from ..errors import BackendError, BackendUnavailable, ModelNotFound
from ..kernel import Conductor
from ..plugins import get_registry, pm
from ..protocol import ClientMessage, ServerMessage, decode_client, decode_server, encode

__all__ = [
    "FakeBackend",
    "FakeConfig",
    "Script",
    "channel_pair",
    "running_conductor",
]


class Script(msgspec.Struct, forbid_unknown_fields=True):
    """How one fake reply goes. Times are in seconds."""

    tokens: list[str] | None = None  # default: the backend's reply split into words
    ttft: float = 0.0
    token_delay: float = 0.0
    fail_before_first: str | None = None  # "unavailable" | "model" | "error"
    fail_after: int | None = None  # raise BackendError after this many tokens
    hang_after: int | None = None  # stop sending (never finishes) after this many tokens
    finish_reason: str = "stop"


class FakeConfig(msgspec.Struct, forbid_unknown_fields=True):
    models: list[str] = msgspec.field(default_factory=lambda: ["fake-1"])
    reply: str = "Hello from the fake backend."
    echo: bool = False  # reply with the last user message instead
    ttft_ms: float = 0.0
    token_delay_ms: float = 0.0
    fail_before_first: str | None = None


class FakeBackend:
    """A backend whose replies follow :class:`Script`s (queued per call, else the default).

    Counters: ``requests``, ``completed``, ``cancelled`` (the consumer stopped early), ``active``;
    ``requests_seen`` keeps every :class:`ChatRequest`; ``cancelled_event`` / ``completed_event``
    are set (then replaced) on each cancel / completion: grab one before acting, then wait on it.
    """

    def __init__(self, name: str = "fake", config: FakeConfig | None = None) -> None:
        self.name = name
        self.config = config or FakeConfig()
        self.default_model = self.config.models[0] if self.config.models else None
        self.scripts: deque[Script] = deque()
        self.requests = self.completed = self.cancelled = self.active = 0
        self.requests_seen: list[ChatRequest] = []
        self.cancelled_event = anyio.Event()
        self.completed_event = anyio.Event()
        self.started_event = anyio.Event()
        self.closed = False
        self.down = False

    def default_script(self) -> Script:
        c = self.config
        return Script(ttft=c.ttft_ms / 1000, token_delay=c.token_delay_ms / 1000, fail_before_first=c.fail_before_first)

    def push(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def _tokens(self, request: ChatRequest, script: Script) -> list[str]:
        if script.tokens is not None:
            return script.tokens
        text = request.messages[-1].content if self.config.echo else self.config.reply
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    async def chat(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        script = self.scripts.popleft() if self.scripts else self.default_script()
        self.requests += 1
        self.requests_seen.append(request)
        model = request.model or self.default_model or "fake"
        if self.down:
            raise BackendUnavailable(f"fake backend {self.name} is down", backend=self.name)
        if request.model is not None and self.config.models and request.model not in self.config.models:
            raise ModelNotFound(f"model {request.model!r} not found", backend=self.name, model=request.model)
        self.active += 1
        self.started_event.set()
        finished = False
        start = time.perf_counter()
        try:
            if script.ttft:
                await anyio.sleep(script.ttft)
            if script.fail_before_first == "unavailable":
                raise BackendUnavailable(f"fake backend {self.name} refused the connection", backend=self.name)
            if script.fail_before_first == "model":
                raise ModelNotFound(f"model {model!r} not found", backend=self.name, model=model)
            if script.fail_before_first:
                raise BackendError(f"fake backend {self.name} failed: {script.fail_before_first}", backend=self.name)
            tokens = self._tokens(request, script)
            for i, token in enumerate(tokens):
                if script.fail_after is not None and i == script.fail_after:
                    raise BackendError(f"fake backend {self.name} failed after {i} tokens", backend=self.name)
                if script.hang_after is not None and i == script.hang_after:
                    await anyio.sleep_forever()
                if i and script.token_delay:
                    await anyio.sleep(script.token_delay)
                yield token
            finished = True
            self.completed += 1
            self.completed_event.set()
            self.completed_event = anyio.Event()
            yield Finish(model, script.finish_reason, len(tokens), generation_s=time.perf_counter() - start)
        finally:
            self.active -= 1
            if not finished:
                self.cancelled += 1
                self.cancelled_event.set()
                self.cancelled_event = anyio.Event()

    async def models(self) -> list[str]:
        if self.down:
            raise BackendUnavailable(f"fake backend {self.name} is down", backend=self.name)
        return list(self.config.models)

    async def health(self) -> BackendHealth:
        return BackendHealth("down" if self.down else "up")

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeBackend {self.name} requests={self.requests} active={self.active} cancelled={self.cancelled}>"


# ---------------------------------------------------------------------- in-process transport


class _ServerEnd:
    """The kernel's side of an in-process connection. Messages cross as encoded bytes so the
    codec is exercised exactly as on a socket."""

    def __init__(self, rx, tx, codec: str, peer: str) -> None:
        self._rx, self._tx, self._codec, self.peer = rx, tx, codec, peer
        self.batches: list[int] = []

    async def receive(self) -> ClientMessage:
        data = await self._rx.receive()
        return decode_client(data, self._codec)

    async def send(self, messages: Sequence[ServerMessage]) -> None:
        self.batches.append(len(messages))
        for m in messages:
            await self._tx.send(encode(m, self._codec))

    async def aclose(self) -> None:
        await self._tx.aclose()
        await self._rx.aclose()


class ClientEnd:
    """The surface's side: send structs or raw bytes, receive decoded server messages."""

    def __init__(self, rx, tx, codec: str) -> None:
        self._rx, self._tx, self._codec = rx, tx, codec

    async def send(self, message: ClientMessage) -> None:
        await self._tx.send(encode(message, self._codec))

    async def send_raw(self, data: bytes) -> None:
        await self._tx.send(data)

    async def receive(self) -> ServerMessage:
        return decode_server(await self._rx.receive(), self._codec)

    async def aclose(self) -> None:
        await self._tx.aclose()
        await self._rx.aclose()


def channel_pair(buffer: int = 0, codec: str = "msgpack", peer: str = "inprocess") -> tuple[_ServerEnd, ClientEnd]:
    """A connected (kernel channel, client channel) pair. ``buffer`` is how many messages the
    kernel may write ahead of a client that is not reading (0 = like a full socket)."""
    c2s_tx, c2s_rx = anyio.create_memory_object_stream[bytes](64)
    s2c_tx, s2c_rx = anyio.create_memory_object_stream[bytes](buffer)
    return _ServerEnd(c2s_rx, s2c_tx, codec, peer), ClientEnd(s2c_rx, c2s_tx, codec)


class InProcess:
    """A running kernel plus a way to open in-process connections to it."""

    def __init__(self, conductor: Conductor, tg: anyio.abc.TaskGroup) -> None:
        self.conductor = conductor
        self._tg = tg

    @asynccontextmanager
    async def connect(self, *, buffer: int = 64, codec: str = "msgpack", authenticate=None) -> AsyncIterator[ClientEnd]:
        server, client = channel_pair(buffer, codec)
        done = anyio.Event()

        async def serve() -> None:
            try:
                await self.conductor.serve_channel(server, authenticate=authenticate)
            finally:
                done.set()

        self._tg.start_soon(serve)
        try:
            yield client
        finally:
            await client.aclose()
            with anyio.move_on_after(5):
                await done.wait()


def _ensure_fake_plugin() -> None:
    from . import fake_plugin

    if pm.get_plugin("conductor_core.testing.fake_plugin") is None:
        pm.register(fake_plugin, name="conductor_core.testing.fake_plugin")


@asynccontextmanager
async def running_conductor(config: dict[str, Any] | Config | None = None) -> AsyncIterator[InProcess]:
    """A kernel built from ``config`` (a dict shaped like conductor.toml) and running until the
    block ends. The ``fake`` backend type is available. Default: one fake backend, no transports."""
    _ensure_fake_plugin()
    if config is None:
        config = {"backends": {"fake": {"type": "fake"}}}
    if isinstance(config, dict):
        config = msgspec.convert({"source": "test config", **config}, Config)
    conductor = Conductor.from_config(config, get_registry())
    async with anyio.create_task_group() as tg:
        await tg.start(conductor.run)
        try:
            yield InProcess(conductor, tg)
        finally:
            conductor.request_stop()
            with anyio.move_on_after(config.shutdown_grace_s + 5):
                await conductor.stopped.wait()
            tg.cancel_scope.cancel()
