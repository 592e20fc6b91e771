"""Fixtures for the Ollama plugin's tests: a real emulator on loopback and backends pointed at it."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.backends import Timeouts
from conductor_core.testing.ollama_emulator import OllamaEmulator
from conductor_ollama.backend import OllamaBackend
from conductor_ollama.plugin import OllamaConfig


@pytest.fixture
async def emulator():
    async with OllamaEmulator(models=["llama3.2", "qwen3:4b"]) as emu:
        yield emu


@pytest.fixture
async def free_port() -> int:
    """A port nothing listens on (bound, read back, closed)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    return port


@pytest.fixture
async def running():
    """``await running(backend)`` starts its run() task; stopped at teardown."""
    async with anyio.create_task_group() as tg:
        started = []

        async def start(backend: OllamaBackend) -> OllamaBackend:
            await tg.start(backend.run)
            started.append(backend)
            return backend

        yield start
        tg.cancel_scope.cancel()
    for backend in started:
        await backend.aclose()


@pytest.fixture
async def backend(emulator, running):
    b = OllamaBackend("test", OllamaConfig(url=emulator.url, timeouts=Timeouts(between_chunks=30.0)))
    await running(b)
    yield b
    await b.aclose()
