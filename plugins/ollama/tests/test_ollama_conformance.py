"""The Ollama backend passes the generic backend conformance suite, against the emulator."""

from __future__ import annotations

import pytest

from conductor_core.backends import ChatRequest, Message, Timeouts
from conductor_core.testing.conformance import BackendConformance
from conductor_core.testing.ollama_emulator import Fault
from conductor_ollama.backend import OllamaBackend
from conductor_ollama.plugin import OllamaConfig


class TestOllamaConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, emulator, running):
        backend = OllamaBackend("conformance", OllamaConfig(url=emulator.url, timeouts=Timeouts(between_chunks=30)))
        await running(backend)
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def unreachable_backend(self, free_port):
        backend = OllamaBackend("down", OllamaConfig(url=f"http://127.0.0.1:{free_port}"))
        yield backend
        await backend.aclose()

    @pytest.fixture
    def model(self):
        return "llama3.2"

    @pytest.fixture
    def long_request(self, emulator, model):
        emulator.model(model).fault = Fault(hang_after=3)
        return ChatRequest(messages=[Message(role="user", content="tell me a long story")], model=model)

    @pytest.fixture
    def upstream_cancelled(self, emulator):
        async def wait():
            await emulator.wait_until(lambda s: s.streams_cancelled >= 1)

        return wait
