"""The backend conformance suite for the ``openai`` backend, over real sockets against the
Ollama emulator's OpenAI-compatible /v1 routes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from conductor_core.backends import ChatRequest, Message
from conductor_core.testing.conformance import BackendConformance
from conductor_core.testing.ollama_emulator import OllamaEmulator

from conductor_openai_compat.plugin import OpenAIConfig, make_backend


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestOpenAICompatConformance(BackendConformance):
    @pytest.fixture
    async def emulator(self) -> AsyncIterator[OllamaEmulator]:
        async with OllamaEmulator(models=["llama3.2"], token_delay=0.001) as emu:
            yield emu

    @pytest.fixture
    async def backend(self, emulator):
        backend = make_backend("conf", OpenAIConfig(base_url=f"{emulator.url}/v1", trust_env=False, default_model="llama3.2"))
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def unreachable_backend(self):
        backend = make_backend("gone", OpenAIConfig(base_url=f"http://127.0.0.1:{_closed_port()}/v1", trust_env=False))
        yield backend
        await backend.aclose()

    @pytest.fixture
    def model(self):
        return "llama3.2"

    @pytest.fixture
    def long_request(self, model, emulator):
        emulator.token_count = 100_000  # streams until the client goes away
        return ChatRequest(messages=[Message("user", "go on forever")], model=model)

    @pytest.fixture
    def upstream_cancelled(self, emulator):
        async def wait() -> None:
            await emulator.wait_until(lambda s: s.streams_cancelled >= 1)

        return wait
