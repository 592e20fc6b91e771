"""The backend conformance suite for the embedded ``llamacpp`` backend, on the real llama.cpp
server with SmolLM2-135M (one fresh server per test: each test owns its backend's lifetime)."""

from __future__ import annotations

import anyio
import pytest
from conductor_core.backends import ChatRequest, Message
from conductor_core.testing.conformance import BackendConformance

from conductor_llamacpp.plugin import LlamaCppConfig, make_backend

LONG_TOKENS = 1500


class TestLlamaCppConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):
        backend = make_backend("conf", LlamaCppConfig(max_tokens=24))  # short replies keep the suite fast
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def unreachable_backend(self, tmp_path):
        # The embedded backend's "server cannot be reached": the model it must serve is missing.
        backend = make_backend("gone", LlamaCppConfig(model_path=str(tmp_path / "missing.gguf"), alias="smollm2-135m"))
        yield backend
        await backend.aclose()

    @pytest.fixture
    def model(self):
        return "smollm2-135m"

    @pytest.fixture
    def long_request(self, model):
        return ChatRequest(
            messages=[Message("user", "Tell me a very long story.")],
            model=model,
            options={"max_tokens": LONG_TOKENS, "ignore_eos": True},
        )

    @pytest.fixture
    def upstream_cancelled(self, backend):
        async def wait() -> None:
            while any(slot["is_processing"] for slot in await backend.slots()):
                await anyio.sleep(0.02)  # llama.cpp has no push channel: poll its /slots
            # uncancelled, the slot would only go idle after decoding all LONG_TOKENS tokens
            assert (await backend.metrics())["tokens_predicted_total"] < LONG_TOKENS

        return wait
