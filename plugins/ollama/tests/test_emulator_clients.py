"""The emulator driven by real clients of Ollama's API: the official ``ollama`` Python client
(its pydantic models validate every field type) and the ``openai`` client on the /v1 routes."""

from __future__ import annotations

import ollama
import openai
import pytest

from conductor_core.testing.ollama_emulator import Fault


@pytest.fixture
async def client(emulator):
    async with ollama.AsyncClient(host=emulator.url) as client:
        yield client


async def test_ollama_client_chat_stream(client, emulator):
    parts = []
    last = None
    async for part in await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True,
                                        keep_alive="5m", options={"num_predict": 4}):
        parts.append(part.message.content)
        last = part
    assert "".join(parts) == "Emulated reply to: hi"
    assert last.done and last.done_reason == "stop" and last.eval_count == 4
    assert emulator.stats.last_bodies["/api/chat"]["keep_alive"] == "5m"


async def test_ollama_client_non_stream_generate_and_admin_routes(client, emulator):
    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "yo"}])
    assert reply.message.content == "Emulated reply to: yo" and reply.total_duration > 0
    generated = await client.generate(model="llama3.2", prompt="sky")
    assert generated.response == "Emulated reply to: sky" and generated.context == [1, 2, 3]
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "qwen3:4b"]
    assert listed.models[0].details.family == "llama"
    running = await client.ps()
    assert [m.model for m in running.models] == ["llama3.2:latest"]
    assert running.models[0].expires_at is not None and running.models[0].size_vram > 0
    shown = await client.show("llama3.2")
    assert shown.modelinfo["llama.context_length"] == 4096 and "completion" in shown.capabilities


async def test_ollama_client_load_unload(client, emulator):
    loaded = await client.chat(model="llama3.2", messages=[])
    assert loaded.done_reason == "load" and emulator.is_loaded("llama3.2")
    unloaded = await client.chat(model="llama3.2", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and not emulator.is_loaded("llama3.2")


@pytest.mark.parametrize(("status", "fragment"), [(404, "not found, try pulling it first"), (503, "server busy")])
async def test_ollama_client_errors(client, emulator, status, fragment):
    emulator.faults.append(Fault(status=status))
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status and fragment in info.value.error


async def test_ollama_client_sees_in_stream_error(client, emulator):
    emulator.faults.append(Fault(error_after=1, message="runner died"))
    with pytest.raises(ollama.ResponseError, match="runner died"):
        async for _ in await client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True):
            pass


async def test_openai_client_stream_with_usage(emulator):
    client = openai.AsyncOpenAI(base_url=f"{emulator.url}/v1", api_key="ollama", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hey"}], stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, reasons = [], None, []
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                if choice.finish_reason:
                    reasons.append(choice.finish_reason)
        assert "".join(text) == "Emulated reply to: hey"
        assert reasons == ["stop"] and usage.completion_tokens == 4
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    finally:
        await client.close()


async def test_openai_client_non_stream_models_and_errors(emulator):
    client = openai.AsyncOpenAI(base_url=f"{emulator.url}/v1", api_key="ollama", max_retries=0)
    try:
        reply = await client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "a"}],
                                                     max_tokens=2)
        assert reply.choices[0].message.content == "Emulated reply" and reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 2
        models = await client.models.list()
        assert [m.id async for m in models] == ["llama3.2:latest", "qwen3:4b"]
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "a"}])
        assert 'model "nope" not found' in str(info.value)
        emulator.faults.append(Fault(status=503))
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "a"}])
        assert info.value.status_code == 503
    finally:
        await client.close()
