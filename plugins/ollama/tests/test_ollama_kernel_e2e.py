"""The real kernel with ``[backends.x] type = "ollama"`` pointed at the emulator, chatting
through the in-process transport: a streamed reply with Ollama's stats, and every Ollama
failure reaching the client as the right ``error{code}`` with a clear message."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.errors import ErrorCode
from conductor_core.protocol import Cancel, Chat, Done, Error, Token, Welcome
from conductor_core.testing.fakes import running_conductor
from conductor_core.testing.ollama_emulator import Fault
from conductor_core.testing.wire import collect, handshake


def config(url: str, **extra) -> dict:
    return {
        "backends": {"x": {"type": "ollama", "url": url, "keep_alive": "12m", "timeouts": {"between_chunks": 5}, **extra}},
        "shutdown_grace_s": 0.5,
    }


async def test_chat_streams_end_to_end_with_stats_and_keep_alive(emulator):
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        assert isinstance(await handshake(client), Welcome)
        await client.send(Chat("c1", "hello kernel", model="llama3.2"))
        text, tokens, final = await collect(client, "c1")
        assert text == "Emulated reply to: hello kernel" and 1 <= tokens <= 5  # the relay may coalesce
        assert isinstance(final, Done)
        assert final.stats.backend == "x" and final.stats.model == "llama3.2"
        assert final.stats.tokens == 5 and final.stats.finish_reason == "stop"
        body = emulator.stats.last_bodies["/api/chat"]
        assert body["keep_alive"] == "12m" and body["stream"] is True
        assert body["messages"][-1] == {"role": "user", "content": "hello kernel"}


async def test_cancel_from_the_client_reaches_ollama(emulator):
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        await handshake(client)
        emulator.faults.append(Fault(hang_after=2))
        await client.send(Chat("c1", "long one", model="llama3.2"))
        msg = await client.receive()
        while not isinstance(msg, Token):
            msg = await client.receive()
        await client.send(Cancel("c1"))
        await emulator.wait_until(lambda s: s.streams_cancelled == 1)


CASES = [
    (Fault(status=404), ErrorCode.UNKNOWN_MODEL, "ollama pull llama3.2"),
    (Fault(status=400, message="invalid options"), ErrorCode.BAD_REQUEST, "invalid options"),
    (Fault(status=429), ErrorCode.RATE_LIMITED, "too many requests"),
    (Fault(status=500), ErrorCode.BACKEND_ERROR, "an unexpected error occurred"),
    (Fault(status=503), ErrorCode.BACKEND_UNAVAILABLE, "maximum pending requests exceeded"),
    (Fault(error_after=2, message="runner crashed"), ErrorCode.BACKEND_ERROR, "runner crashed"),
    (Fault(die_after=2), ErrorCode.BACKEND_ERROR, "broke"),
    (Fault(no_done=True), ErrorCode.BACKEND_ERROR, "without its final (done) line"),
    (Fault(garbage_after=1), ErrorCode.BACKEND_ERROR, "this is not json"),
]


@pytest.mark.parametrize(("fault", "code", "fragment"), CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
async def test_every_ollama_failure_reaches_the_client_as_its_code(emulator, fault, code, fragment):
    emulator.model("llama3.2").fault = fault
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Chat("c1", "hello there", model="llama3.2"))
        text, _, final = await collect(client, "c1")
        assert isinstance(final, Error), final
        assert final.code == code, final
        assert fragment in final.message, final.message
        assert final.retryable == (code in (ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.RATE_LIMITED))


async def test_unknown_model_reaches_the_client(emulator):
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Chat("c1", "hi", model="mistral"))
        _, _, final = await collect(client, "c1")
        assert isinstance(final, Error) and final.code == ErrorCode.UNKNOWN_MODEL
        assert "mistral" in final.message


async def test_ollama_down_is_backend_unavailable_with_url_hint(free_port):
    url = f"http://127.0.0.1:{free_port}"
    async with running_conductor(config(url)) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Chat("c1", "hi", model="llama3.2"))
        _, _, final = await collect(client, "c1")
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_UNAVAILABLE
        assert final.retryable


async def test_silence_past_between_chunks_is_an_error(emulator):
    emulator.model("llama3.2").fault = Fault(hang_after=1)
    async with running_conductor(config(emulator.url, timeouts={"between_chunks": 0.2})) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Chat("c1", "hi", model="llama3.2"))
        text, _, final = await collect(client, "c1")
        assert text == "Emulated"
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert "timeouts.between_chunks" in final.message
    emulator.release()


async def test_status_shows_preload(emulator):
    async with running_conductor(config(emulator.url, preload=["llama3.2"])) as kernel:
        await emulator.wait_until(lambda s: s.loads == 1)
        backend = kernel.conductor.backends["x"]
        with anyio.fail_after(5):
            while backend.status()["preload"]["llama3.2"]["state"] != "loaded":
                await anyio.sleep(0.01)
        assert emulator.stats.bodies[0] == {"model": "llama3.2", "messages": [], "keep_alive": "12m", "stream": False}


async def test_cancel_during_model_load_keeps_the_load(emulator):
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        await handshake(client)
        emulator.faults.append(Fault(load_time=0.3))
        await client.send(Chat("c1", "hi", model="llama3.2"))
        await emulator.wait_until(lambda s: s.requests["/api/chat"] == 1)
        await client.send(Cancel("c1"))
        _, tokens, final = await collect(client, "c1")
        assert isinstance(final, Error) and final.code == ErrorCode.CANCELLED and tokens == 0
        backend = kernel.conductor.backends["x"]
        stats = await emulator.wait_until(lambda s: s.loads == 1)
        assert stats.loads_aborted == 0 and emulator.is_loaded("llama3.2")
        await client.send(Chat("c2", "again", model="llama3.2"))
        _, _, final = await collect(client, "c2")
        assert isinstance(final, Done)
        assert emulator.stats.loads == 1 and backend.status()["loads_kept"] == 1


async def test_one_upstream_connection_and_keep_alive_for_every_chat(emulator):
    async with running_conductor(config(emulator.url)) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Chat("c0", "warm", model="llama3.2"))
        await collect(client, "c0")
        opened = emulator.stats.connections_opened
        for i in range(5):
            await client.send(Chat(f"c{i + 1}", f"turn {i}", model="llama3.2"))
            _, _, final = await collect(client, f"c{i + 1}")
            assert isinstance(final, Done)
        assert emulator.stats.connections_opened == opened  # every chat reused the pooled connection
        chats = [b for b in emulator.stats.bodies if b.get("messages")]
        assert len(chats) == 6 and all(b["keep_alive"] == "12m" for b in chats)
        assert len(chats[-1]["messages"]) > 2  # the conversation history went upstream
