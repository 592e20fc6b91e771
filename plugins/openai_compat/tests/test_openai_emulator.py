"""OpenAICompatBackend over real sockets against the Ollama emulator's /v1 routes (Ollama's
OpenAI-compatible API): role-only chunk, usage chunk, faults, cancellation, keep-alive."""

from __future__ import annotations

import anyio
import pytest
from conductor_core.backends import ChatRequest, Finish, Message
from conductor_core.errors import BackendUnavailable, ModelNotFound, StreamFailed
from conductor_core.testing.ollama_emulator import Fault, OllamaEmulator

from conductor_openai_compat.backend import OpenAICompatBackend

REQ = ChatRequest(messages=[Message("user", "hello there")], model="llama3.2")


def make(emu: OllamaEmulator) -> OpenAICompatBackend:
    return OpenAICompatBackend("emu", base_url=f"{emu.url}/v1", trust_env=False)


async def drain(b: OpenAICompatBackend, req: ChatRequest = REQ) -> list[str | Finish]:
    return [x async for x in b.chat(req)]


async def test_real_stream_text_finish_and_usage():
    async with OllamaEmulator(models=["llama3.2"], tokens=["Hi", " there", "!"]) as emu, make(emu) as b:
        out = await drain(b)
        assert out[:-1] == ["Hi", " there", "!"]  # no empty piece from the role-only chunk
        fin = out[-1]
        assert isinstance(fin, Finish)
        assert (fin.model, fin.finish_reason, fin.completion_tokens) == ("llama3.2", "stop", 3)
        assert fin.prompt_tokens and fin.prompt_tokens > 0
        body = emu.stats.last_bodies["/v1/chat/completions"]
        assert body["stream_options"] == {"include_usage": True}
        # the pooled connection is reused for the next request
        assert "".join(x for x in await drain(b) if isinstance(x, str)) == "Hi there!"
        assert emu.stats.connections_opened == 1
        assert await b.models() == ["llama3.2:latest"]
        assert (await b.health()).state == "up"


@pytest.mark.parametrize(
    ("fault", "exc", "text"),
    [
        (Fault(status=503), BackendUnavailable, "503"),
        (Fault(die_after=2), StreamFailed, "mid-stream|without \\[DONE\\]"),
        (Fault(error_after=1, message="out of memory"), StreamFailed, "out of memory"),
        (Fault(garbage_after=1), StreamFailed, "malformed event.*not json"),
        (Fault(no_done=True), StreamFailed, "without \\[DONE\\] or a finish_reason"),
    ],
)
async def test_faults_become_typed_errors(fault, exc, text):
    async with OllamaEmulator(models=["llama3.2"], tokens=["a", "b", "c", "d"]) as emu, make(emu) as b:
        emu.faults.append(fault)
        with pytest.raises(exc, match=text):
            await drain(b)


async def test_unknown_model_is_model_not_found():
    async with OllamaEmulator(models=["llama3.2"]) as emu, make(emu) as b:
        with pytest.raises(ModelNotFound):
            await drain(b, ChatRequest(messages=[Message("user", "x")], model="nope"))


async def test_connection_refused_is_unavailable_and_health_down():
    async with OllamaEmulator() as emu:
        url = emu.url
    async with OpenAICompatBackend("gone", base_url=f"{url}/v1", default_model="m", trust_env=False) as b:
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await drain(b)
        assert (await b.health()).state == "down"


async def test_closing_the_iterator_ends_the_server_stream():
    async with OllamaEmulator(models=["llama3.2"], token_count=10_000, token_delay=0.001) as emu, make(emu) as b:
        it = b.chat(REQ)
        assert isinstance(await it.__anext__(), str)
        await it.aclose()
        with anyio.fail_after(10):  # a hang guard, not a latency assertion
            stats = await emu.wait_until(lambda s: s.streams_cancelled == 1)
        assert stats.streams_completed == 0
