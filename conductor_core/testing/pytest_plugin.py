"""pytest plugin (``pytest11`` entry point ``conductor``), active wherever the kernel is installed.

It runs async tests on asyncio in debug mode and fails a test whose event loop ran a callback
longer than ``CONDUCTOR_SLOW_CALLBACK_MS`` (default 100 ms): the rule that the conductor never
blocks its loop, enforced at run time. And it gives plugin authors these fixtures:

- ``fake_backend``: a fresh :class:`~conductor_core.testing.fakes.FakeBackend` (scripted replies).
- ``conductor_config``: the config ``conductor_kernel`` runs (a dict shaped like conductor.toml;
  default: one ``fake`` backend, no transports). Override it in a test module or class.
- ``conductor_kernel``: a running kernel built from ``conductor_config``
  (:class:`KernelFixture`: ``.conductor``, ``.backends``, ``.fake``, ``.client()``, ``.connect()``).
- ``conductor_client``: a :class:`~conductor_core.client.Client` connected to
  ``conductor_kernel`` in process, hello/welcome done: ``await conductor_client.chat("hi").text()``.
- ``ollama_emulator``: a running :class:`~conductor_core.testing.ollama_emulator.OllamaEmulator`
  serving ``llama3.2`` on a free loopback port (``.url``, ``.faults``, ``.stats``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

SLOW_CALLBACK_S = float(os.environ.get("CONDUCTOR_SLOW_CALLBACK_MS", "100")) / 1000


def _loop_factory() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.slow_callback_duration = SLOW_CALLBACK_S
    return loop


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.records.append(message)


@pytest.fixture
def anyio_backend():
    return "asyncio", {"debug": True, "loop_factory": _loop_factory}


@pytest.fixture(autouse=True)
def _fail_on_slow_callbacks(request):
    """Fails the test if the asyncio loop logged a slow callback. Opt out with
    ``@pytest.mark.allow_slow_callbacks`` (for tests that measure a blocking thing on purpose)."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_slow_callbacks") is None:
        pytest.fail("the event loop was blocked:\n" + "\n".join(handler.records[:5]), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_slow_callbacks: do not fail on slow asyncio callbacks")


# ---------------------------------------------------------------------- fixtures for plugin authors


class KernelFixture:
    """A running kernel (``conductor_kernel``) and ways to talk to it in process."""

    def __init__(self, inprocess: Any) -> None:
        self.inprocess = inprocess
        self.conductor = inprocess.conductor

    @property
    def backends(self) -> dict[str, Any]:
        return self.conductor.backends

    @property
    def fake(self) -> Any:
        """The backend named ``fake`` (the default config's), to push scripts or read counters."""
        return self.conductor.backends["fake"]

    def connect(self, **kwargs: Any) -> Any:
        """A raw in-process connection (no hello sent): ``async with kernel.connect() as end``."""
        return self.inprocess.connect(**kwargs)

    @asynccontextmanager
    async def client(self, **kwargs: Any) -> AsyncIterator[Any]:
        """A :class:`~conductor_core.client.Client` over an in-process connection."""
        from ..client import Client

        async with self.inprocess.connect() as end:

            async def channel() -> Any:
                return end

            async with Client(channel, surface="pytest", **kwargs) as client:
                yield client

    def __repr__(self) -> str:
        return f"<KernelFixture {self.conductor!r}>"


@pytest.fixture
def fake_backend():
    """A fresh FakeBackend named ``fake``: ``fake_backend.push(Script(tokens=[...]))``."""
    from .fakes import FakeBackend

    return FakeBackend("fake")


@pytest.fixture
def conductor_config() -> dict[str, Any]:
    """The config ``conductor_kernel`` runs; override this fixture to change it."""
    return {"backends": {"fake": {"type": "fake"}}, "shutdown_grace_s": 0.5}


@pytest.fixture
async def conductor_kernel(conductor_config):
    """A running kernel built from ``conductor_config``, stopped at teardown."""
    from .fakes import running_conductor

    async with running_conductor(conductor_config) as inprocess:
        yield KernelFixture(inprocess)


@pytest.fixture
async def conductor_client(conductor_kernel):
    """A client connected to ``conductor_kernel`` in process (welcome in ``.welcome``)."""
    async with conductor_kernel.client() as client:
        yield client


@pytest.fixture
async def ollama_emulator():
    """A running Ollama emulator serving ``llama3.2``; adjust ``.faults``, ``.token_delay``, ..."""
    from .ollama_emulator import OllamaEmulator

    async with OllamaEmulator(models=["llama3.2"]) as emulator:
        yield emulator
