"""The Ollama backend against the emulator over real loopback HTTP: streaming, keep_alive on
every request, load/unload, cancellation reaching the server, a disconnect during a model load
not discarding the load, connection reuse, preload state and the default model."""

from __future__ import annotations

import anyio

from conductor_core.backends import ChatRequest, Finish, Message, Timeouts
from conductor_core.testing.ollama_emulator import Fault
from conductor_ollama.backend import OllamaBackend
from conductor_ollama.plugin import OllamaConfig


def ask(text: str = "hello there", model: str | None = "llama3.2", **kw) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], model=model, **kw)


async def collect(backend, request):
    items = [item async for item in backend.chat(request)]
    return items[:-1], items[-1]


async def test_streams_the_emulated_reply_and_stats(backend, emulator):
    pieces, finish = await collect(backend, ask("hello there"))
    assert "".join(pieces) == "Emulated reply to: hello there"
    assert pieces == ["Emulated", " reply", " to:", " hello", " there"]
    assert isinstance(finish, Finish)
    assert finish.model == "llama3.2" and finish.finish_reason == "stop"
    assert finish.completion_tokens == 5 and finish.prompt_tokens == 2
    assert finish.generation_s is not None and finish.generation_s > 0
    assert emulator.stats.streams_completed == 1


async def test_request_body_carries_messages_options_and_stream(backend, emulator):
    await collect(backend, ask("x", options={"temperature": 0.2, "num_predict": 3, "seed": 7}, format="json", think=True))
    body = emulator.stats.last_bodies["/api/chat"]
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "x"}]
    assert body["options"] == {"temperature": 0.2, "num_predict": 3, "seed": 7}
    assert body["format"] == "json" and body["think"] is True


async def test_num_predict_limits_tokens_with_length_reason(backend):
    pieces, finish = await collect(backend, ask("a b c", options={"num_predict": 12}))
    assert len(pieces) == 12 and finish.finish_reason == "length" and finish.completion_tokens == 12


async def test_keep_alive_sent_on_every_request(emulator, running):
    backend = await running(OllamaBackend("k", OllamaConfig(url=emulator.url, keep_alive="45m")))
    await collect(backend, ask())
    await collect(backend, ask(keep_alive=-1))
    await backend.load("qwen3:4b")
    await backend.unload("qwen3:4b")
    await collect(backend, ask(model="qwen3:4b"))
    assert [b["keep_alive"] for b in emulator.stats.bodies] == ["45m", -1, "45m", 0, "45m"]


async def test_load_and_unload(backend, emulator):
    assert not emulator.is_loaded("llama3.2")
    assert await backend.load("llama3.2") == "load"
    assert emulator.is_loaded("llama3.2")
    assert await backend.loaded_models() == ["llama3.2:latest"]
    assert await backend.unload("llama3.2") == "unload"
    assert not emulator.is_loaded("llama3.2")
    assert await backend.loaded_models() == []
    assert (emulator.stats.loads, emulator.stats.unloads) == (1, 1)


async def test_chat_with_keep_alive_zero_unloads_after_the_reply(backend, emulator):
    await collect(backend, ask(keep_alive=0))
    assert not emulator.is_loaded("llama3.2")


async def test_context_length_from_show(backend):
    assert await backend.context_length("llama3.2") == 4096


async def test_default_model_is_the_first_installed_one(backend, emulator):
    pieces, finish = await collect(backend, ask(model=None))
    assert emulator.stats.last_bodies["/api/chat"]["model"] == "llama3.2:latest"
    assert finish.model == "llama3.2:latest"
    await collect(backend, ask(model=None))
    assert emulator.stats.requests["/api/tags"] == 1  # cached


async def test_configured_default_model(emulator, running):
    backend = await running(OllamaBackend("d", OllamaConfig(url=emulator.url, default_model="qwen3:4b")))
    await collect(backend, ask(model=None))
    assert emulator.stats.last_bodies["/api/chat"]["model"] == "qwen3:4b"
    assert emulator.stats.requests["/api/tags"] == 0


async def test_cancel_mid_stream_reaches_the_server(backend, emulator):
    emulator.faults.append(Fault(hang_after=2))
    stream = backend.chat(ask())
    assert await stream.__anext__() == "Emulated"
    await stream.aclose()
    stats = await emulator.wait_until(lambda s: s.streams_cancelled == 1)
    assert stats.streams_completed == 0


async def test_disconnect_during_model_load_keeps_the_load(emulator, running):
    backend = await running(OllamaBackend("l", OllamaConfig(url=emulator.url)))
    emulator.faults.append(Fault(load_time=0.3))
    with anyio.CancelScope() as scope:
        async def cancel_when_loading():
            await emulator.wait_until(lambda s: s.requests["/api/chat"] == 1)
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_loading)
            await collect(backend, ask())
    assert scope.cancelled_caught
    stats = await emulator.wait_until(lambda s: s.loads == 1 and backend.loads_kept == 1)
    assert stats.loads_aborted == 0
    assert emulator.is_loaded("llama3.2")
    await collect(backend, ask())
    assert emulator.stats.loads == 1  # the next request found the model warm


async def test_without_run_a_disconnect_during_load_aborts_it(emulator):
    """The control experiment: the same cancel without the backend's run() loses the load,
    which is what the emulator (like Ollama) does to a client that goes away mid-load."""
    backend = OllamaBackend("bare", OllamaConfig(url=emulator.url))
    emulator.faults.append(Fault(load_time=30))
    with anyio.CancelScope() as scope:
        async def cancel_when_loading():
            await emulator.wait_until(lambda s: s.requests["/api/chat"] == 1)
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_loading)
            await collect(backend, ask())
    stats = await emulator.wait_until(lambda s: s.loads_aborted == 1)
    assert stats.loads == 0 and stats.statuses[499] == 1
    assert not emulator.is_loaded("llama3.2")
    await backend.aclose()


async def test_one_connection_is_reused_across_requests(backend, emulator):
    for _ in range(5):
        await collect(backend, ask())
    await backend.models()
    await backend.health()
    await backend.load("llama3.2")
    assert emulator.stats.connections_opened == 1


async def test_long_stream_is_not_cut_by_any_total_deadline(emulator, running):
    """between_chunks is per read: a stream longer than it in total still completes."""
    backend = await running(OllamaBackend("t", OllamaConfig(url=emulator.url, timeouts=Timeouts(between_chunks=0.2))))
    emulator.faults.append(Fault(token_delay=0.02))
    pieces, finish = await collect(backend, ask(options={"num_predict": 20}))  # ~0.4 s in total
    assert len(pieces) == 20 and finish.finish_reason == "length"


async def test_preload_runs_in_background_and_shows_in_status(emulator, running):
    emulator.model("llama3.2").fault = Fault(load_time=0.2)
    backend = OllamaBackend("p", OllamaConfig(url=emulator.url, preload=["llama3.2", "missing"]))
    assert backend.status()["preload"] == {"llama3.2": {"state": "pending"}, "missing": {"state": "pending"}}
    await running(backend)  # returns at once: start-up never waits on a backend
    await emulator.wait_until(lambda s: s.requests["/api/chat"] == 2)
    states = backend.status()["preload"]
    assert states["llama3.2"]["state"] == "loading"
    await emulator.wait_until(lambda s: s.loads == 1)
    while backend.status()["preload"]["llama3.2"]["state"] == "loading":
        await anyio.sleep(0)  # the backend records the result right after the reply
    status = backend.status()
    assert status["preload"]["llama3.2"]["state"] == "loaded"
    assert status["preload"]["missing"]["state"] == "failed"
    assert "ollama pull missing" in status["preload"]["missing"]["error"]
    assert emulator.stats.bodies[0]["keep_alive"] == "30m"


async def test_health_and_models(backend):
    health = await backend.health()
    assert health.state == "up" and health.detail == "ollama 0.12.6" and health.latency_ms >= 0
    assert await backend.models() == ["llama3.2:latest", "qwen3:4b"]


async def test_ollama_host_is_used_when_no_url(emulator, monkeypatch, running):
    monkeypatch.setenv("OLLAMA_HOST", f"0.0.0.0:{emulator.port}")
    backend = await running(OllamaBackend("h", OllamaConfig()))
    assert backend.url == f"http://127.0.0.1:{emulator.port}"
    pieces, _ = await collect(backend, ask())
    assert pieces


async def test_concurrent_streams_share_the_pool(backend, emulator):
    async def one(i):
        pieces, finish = await collect(backend, ask(f"n{i}"))
        assert "".join(pieces).endswith(f"n{i}")

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert emulator.stats.streams_completed == 20
    assert emulator.stats.connections_opened <= 20
