"""The conformance suites: every backend, transport and avatar cache plugin must pass its own.

A backend that runs in process (no server to reach) needs one line::

    from conductor_core.testing.conformance import backend_conformance

    TestMarkovConformance = backend_conformance(lambda: MarkovBackend("conformance", MarkovConfig()), model="markov")

A backend that talks to a server subclasses :class:`BackendConformance` in its tests (the
class name must start with ``Test`` for pytest to collect it) and overrides the fixtures that
say how to reach the server::

    from conductor_core.testing.conformance import BackendConformance

    class TestOllamaConformance(BackendConformance):
        @pytest.fixture
        async def backend(self, emulator):
            backend = OllamaBackend("conf", OllamaConfig(url=emulator.url))
            yield backend
            await backend.aclose()

        @pytest.fixture
        def model(self):
            return "llama3.2"

        @pytest.fixture
        async def unreachable_backend(self, free_port):
            ...

        @pytest.fixture
        def long_request(self, model):
            ...  # a request whose reply streams until the client goes away

        @pytest.fixture
        def upstream_cancelled(self, emulator):
            async def wait():
                await emulator.wait_until(lambda s: s.streams_cancelled >= 1)
            return wait

Why these checks: they are the contract the kernel's relay relies on (text pieces then exactly
one Finish; closing the iterator stops the server; typed errors only; no blocking calls), and
every one was a real bug in the system this project replaces.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from ..backends import Backend, BackendHealth, ChatRequest, Finish, Message
from ..errors import BackendError, BackendUnavailable, ModelNotFound

__all__ = [
    "AvatarCacheConformance",
    "BackendConformance",
    "BlockingCallDetected",
    "FramedConnection",
    "RawConnection",
    "TransportConformance",
    "avatar_cache_conformance",
    "backend_conformance",
    "no_blocking_calls",
]


class BlockingCallDetected(AssertionError):
    """A blocking call ran on the event loop's thread."""


class no_blocking_calls:
    """Context manager: fail if ``time.sleep`` or a synchronous DNS/socket connect runs on
    this (the event loop's) thread while inside. asyncio itself resolves names in a worker
    thread, so a legitimate backend never trips it."""

    _targets: tuple[tuple[Any, str], ...] = (
        (time, "sleep"),
        (socket, "getaddrinfo"),
        (socket, "gethostbyname"),
        (socket, "create_connection"),
    )

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> no_blocking_calls:
        for owner, attr in self._targets:
            original = getattr(owner, attr)
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._wrap(f"{owner.__name__}.{attr}", original))
        return self

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._thread:
                self.calls.append(name)
            return original(*args, **kwargs)

        return guarded

    def __exit__(self, *exc: Any) -> None:
        for owner, attr, original in self._saved:
            setattr(owner, attr, original)
        if self.calls and exc[0] is None:
            raise BlockingCallDetected(f"blocking calls on the event loop: {sorted(set(self.calls))}")


def _ask(model: str | None, text: str = "Say hello.") -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], model=model)


async def _collect(backend: Backend, request: ChatRequest) -> tuple[list[str], list[Finish]]:
    pieces: list[str] = []
    finishes: list[Finish] = []
    async for item in backend.chat(request):
        if isinstance(item, Finish):
            finishes.append(item)
        else:
            assert not finishes, "a text piece came after the Finish"
            assert isinstance(item, str), f"chat() yielded {type(item).__name__}, not str or Finish"
            pieces.append(item)
    return pieces, finishes


class BackendConformance:
    """Mix-in test class; see the module docstring for the fixtures to override."""

    concurrency = 8

    @pytest.fixture
    async def backend(self) -> Backend:
        raise NotImplementedError("override the `backend` fixture: a Backend connected to a working server")

    @pytest.fixture
    async def unreachable_backend(self) -> Backend:
        raise NotImplementedError("override `unreachable_backend`: the same backend type pointed at a closed port")

    @pytest.fixture
    def model(self) -> str:
        raise NotImplementedError("override `model`: a model the server serves")

    @pytest.fixture
    def unknown_model(self) -> str:
        return "no-such-model-conformance"

    @pytest.fixture
    def long_request(self, model: str) -> ChatRequest:
        """A request whose reply keeps streaming until the client goes away."""
        raise NotImplementedError("override `long_request`: a request that streams until cancelled")

    @pytest.fixture
    def upstream_cancelled(self) -> Callable[[], Awaitable[None]]:
        """A coroutine function that returns once the server saw the client go away."""
        raise NotImplementedError("override `upstream_cancelled`: wait until the server saw the stream cancelled")

    async def test_streams_text_then_exactly_one_finish(self, backend: Backend, model: str) -> None:
        pieces, finishes = await _collect(backend, _ask(model))
        assert pieces, "no text before the Finish"
        assert all(isinstance(p, str) and p for p in pieces)
        assert len(finishes) == 1
        assert isinstance(finishes[0].model, str) and finishes[0].model
        assert isinstance(finishes[0].finish_reason, str)

    async def test_default_model_when_request_names_none(self, backend: Backend) -> None:
        pieces, finishes = await _collect(backend, _ask(None))
        assert pieces and len(finishes) == 1

    async def test_aclose_mid_stream_closes_upstream(
        self, backend: Backend, long_request: ChatRequest, upstream_cancelled: Callable[[], Awaitable[None]]
    ) -> None:
        stream = backend.chat(long_request)
        first = await stream.__anext__()
        assert isinstance(first, str)
        await stream.aclose()  # type: ignore[attr-defined]
        with anyio.fail_after(30):  # a hang guard, not a latency assertion
            await upstream_cancelled()

    async def test_cancel_scope_mid_stream_closes_upstream(
        self, backend: Backend, long_request: ChatRequest, upstream_cancelled: Callable[[], Awaitable[None]]
    ) -> None:
        got_one = anyio.Event()

        async def consume() -> None:
            async for item in backend.chat(long_request):
                assert isinstance(item, str)
                got_one.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await got_one.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):
            await upstream_cancelled()

    async def test_unknown_model_raises_model_not_found(self, backend: Backend, unknown_model: str) -> None:
        with pytest.raises(ModelNotFound) as info:
            await _collect(backend, _ask(unknown_model))
        assert unknown_model in info.value.message

    async def test_unreachable_server_raises_backend_unavailable(self, unreachable_backend: Backend, model: str) -> None:
        with pytest.raises(BackendUnavailable) as info:
            await _collect(unreachable_backend, _ask(model))
        assert info.value.retryable
        assert info.value.message

    async def test_unreachable_server_health_is_down(self, unreachable_backend: Backend) -> None:
        health = await unreachable_backend.health()
        assert isinstance(health, BackendHealth)
        assert health.state == "down" and health.detail

    async def test_models_and_health_are_typed(self, backend: Backend, model: str) -> None:
        names = await backend.models()
        assert isinstance(names, list) and all(isinstance(n, str) for n in names)
        assert any(n == model or n.split(":")[0] == model.split(":")[0] for n in names), names
        health = await backend.health()
        assert isinstance(health, BackendHealth)
        assert health.state == "up"

    async def test_concurrent_chats_all_complete(self, backend: Backend, model: str) -> None:
        results: dict[int, tuple[list[str], list[Finish]]] = {}

        async def one(i: int) -> None:
            results[i] = await _collect(backend, _ask(model, f"request number {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(self.concurrency):
                tg.start_soon(one, i)
        assert sorted(results) == list(range(self.concurrency))
        for pieces, finishes in results.values():
            assert pieces and len(finishes) == 1

    async def test_no_blocking_calls(self, backend: Backend, model: str) -> None:
        with no_blocking_calls():
            await _collect(backend, _ask(model))
            await backend.models()
            await backend.health()

    async def test_only_typed_errors_escape(self, unreachable_backend: Backend, model: str) -> None:
        for call in (unreachable_backend.models, lambda: _collect(unreachable_backend, _ask(model))):
            with pytest.raises(BackendError):
                await call()

    async def test_aclose_is_idempotent(self, backend: Backend) -> None:
        await backend.aclose()
        await backend.aclose()


def backend_conformance(
    make_backend: Callable[[], Backend],
    *,
    model: str,
    long_request: ChatRequest | None = None,
    unreachable: Callable[[], Backend] | None = None,
    upstream_cancelled: Callable[[Backend], Callable[[], Awaitable[None]]] | None = None,
    name: str = "TestBackendConformance",
) -> type[BackendConformance]:
    """A ready :class:`BackendConformance` test class; assign it to a ``Test*`` name.

    ``make_backend()`` builds a fresh backend per test. ``long_request`` must stream until the
    client goes away (default: ``options={"num_predict": 1_000_000}``). ``unreachable()``
    builds one whose server cannot be reached; without it the three unreachable-server tests
    skip (an in-process backend has no server). ``upstream_cancelled(backend)`` returns the
    coroutine function that waits until the server saw the client go away; the default, for
    in-process backends, waits until every ``chat()`` generator the test started has finished
    (its ``finally`` ran), which is what "upstream closed" means when there is no upstream.
    """

    class Suite(BackendConformance):
        @pytest.fixture
        async def backend(self):
            backend = make_backend()
            if upstream_cancelled is None:
                _track_streams(backend)
            yield backend
            await backend.aclose()

        @pytest.fixture
        async def unreachable_backend(self):
            if unreachable is None:
                pytest.skip("no unreachable_backend given: the backend has no server to be unreachable")
            backend = unreachable()
            yield backend
            await backend.aclose()

        @pytest.fixture
        def model(self):
            return model

        @pytest.fixture
        def long_request(self, model):
            if long_request is not None:
                return long_request
            return ChatRequest(messages=[Message("user", "tell me a long story")], model=model, options={"num_predict": 1_000_000})

        @pytest.fixture
        def upstream_cancelled(self, backend):
            if upstream_cancelled is not None:
                return upstream_cancelled(backend)
            streams = backend.conformance_streams

            async def wait() -> None:
                while any(getattr(s, "ag_frame", None) is not None for s in streams):
                    await anyio.sleep(0.005)

            return wait

    Suite.__name__ = Suite.__qualname__ = name
    return Suite


def _track_streams(backend: Any) -> None:
    """Record every stream ``backend.chat()`` returns (in ``backend.conformance_streams``)."""
    streams: list[Any] = []
    original = backend.chat

    def chat(request: ChatRequest) -> Any:
        stream = original(request)
        streams.append(stream)
        return stream

    try:
        backend.chat = chat
        backend.conformance_streams = streams
    except AttributeError:
        raise TypeError(
            f"{type(backend).__name__} does not allow instance attributes (__slots__?): pass "
            "upstream_cancelled= to backend_conformance()"
        ) from None


from .avatar_cache_conformance import AvatarCacheConformance, avatar_cache_conformance  # noqa: E402
from .transport_conformance import FramedConnection, RawConnection, TransportConformance  # noqa: E402
