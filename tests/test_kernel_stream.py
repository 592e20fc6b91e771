"""The kernel end to end through the in-process transport with the fake backend."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.errors import ErrorCode
from conductor_core.protocol import (
    Cancel,
    Chat,
    ClientPing,
    Done,
    Error,
    HistoryReply,
    HistoryRequest,
    ModelsReply,
    ModelsRequest,
    ServerPong,
    State,
    StatusReply,
    StatusRequest,
    Token,
    Welcome,
)
from conductor_core.testing.fakes import Script, running_conductor

from conductor_core.testing.wire import collect, handshake

WORDS = [f"w{i} " for i in range(50)]


async def test_welcome_then_streamed_reply_with_stats():
    async with running_conductor() as kernel, kernel.connect() as client:
        welcome = await handshake(client)
        assert isinstance(welcome, Welcome)
        assert welcome.protocol == 1 and welcome.session
        await client.send(Chat("c1", "hi"))
        text, _, final = await collect(client, "c1")
        assert text == "Hello from the fake backend."
        assert isinstance(final, Done)
        assert final.stats.backend == "fake" and final.stats.model == "fake-1"
        assert final.stats.tokens == 5 and final.stats.finish_reason == "stop"
        assert final.stats.ttft_ms >= 0


async def test_tokens_are_forwarded_one_by_one_when_the_client_keeps_up():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=WORDS[:10], token_delay=0.005))
        await handshake(client)
        await client.send(Chat("c1", "count"))
        text, tokens, final = await collect(client, "c1")
        assert text == "".join(WORDS[:10]) and isinstance(final, Done)
        assert tokens == 10  # nothing buffered: every token left as it arrived


async def test_concurrent_chats_on_one_connection_interleave():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=list("abcdef"), token_delay=0.002), Script(tokens=list("123456"), token_delay=0.002))
        await handshake(client)
        await client.send(Chat("a", "x", conversation="one"))
        await client.send(Chat("b", "y", conversation="two"))
        texts: dict[str, str] = {"a": "", "b": ""}
        done = set()
        while len(done) < 2:
            msg = await client.receive()
            if isinstance(msg, Token):
                texts[msg.id] += msg.text
            elif isinstance(msg, Done):
                done.add(msg.id)
        assert texts == {"a": "abcdef", "b": "123456"}


async def test_busy_conversation_and_duplicate_id_are_refused_without_disturbing_the_stream():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=list("abc"), ttft=0.05))
        await handshake(client)
        await client.send(Chat("a", "x"))
        await client.send(Chat("b", "y"))  # same (default) conversation, still streaming
        await client.send(Chat("a", "z", conversation="other"))  # same id
        errors = []
        text, _, final = await collect(client, "a", others=errors)
        assert text == "abc" and isinstance(final, Done)
        codes = {(e.id, e.code) for e in errors if isinstance(e, Error)}
        assert ("b", ErrorCode.OVERLOADED) in codes
        assert (None, ErrorCode.BAD_MESSAGE) in codes  # the duplicate id must not end chat "a"


async def test_cancel_closes_the_backend_stream_and_keeps_partial_text():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=WORDS, token_delay=0.01))
        await handshake(client)
        await client.send(Chat("c1", "long please"))
        first = await client.receive()
        assert isinstance(first, Token)
        cancelled = fake.cancelled_event
        await client.send(Cancel("c1"))
        text, _, final = await collect(client, "c1")
        assert isinstance(final, Error) and final.code == ErrorCode.CANCELLED
        with anyio.fail_after(5):
            await cancelled.wait()
        assert fake.cancelled == 1 and fake.active == 0
        await client.send(HistoryRequest())
        history = await client.receive()
        assert isinstance(history, HistoryReply)
        assert [m.role for m in history.messages] == ["user", "assistant"]
        assert history.messages[1].interrupted
        assert history.messages[1].content == first.text + text


async def test_cancel_of_unknown_id_is_a_no_op():
    async with running_conductor() as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(Cancel("nope"))
        await client.send(ClientPing(7))
        assert await client.receive() == ServerPong(7)


async def test_client_disconnect_cancels_upstream():
    async with running_conductor() as kernel:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=WORDS, token_delay=0.01))
        async with kernel.connect() as client:
            await handshake(client)
            await client.send(Chat("c1", "go"))
            assert isinstance(await client.receive(), Token)
            cancelled = fake.cancelled_event
        with anyio.fail_after(5):
            await cancelled.wait()
        assert fake.cancelled == 1
        assert kernel.conductor.active_chats == 0


async def test_state_messages_only_for_surfaces_that_ask():
    async with running_conductor() as kernel:
        async with kernel.connect() as plain:
            await handshake(plain)
            await plain.send(Chat("c", "hi"))
            others: list = []
            await collect(plain, "c", others=others)
            assert not [m for m in others if isinstance(m, State)]
        async with kernel.connect() as capable:
            await handshake(capable, capabilities=["state"])
            await capable.send(Chat("c", "hi"))
            others = []
            await collect(capable, "c", others=others)
            phases = [m.phase for m in others if isinstance(m, State)]
            assert phases[:2] == ["waiting", "streaming"]
            assert (await capable.receive()) == State("c", "idle")


async def test_models_status_and_history_replies():
    config = {"backends": {"fake": {"type": "fake"}}, "router": {"type": "priority"}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        await client.send(ModelsRequest())
        models = await client.receive()
        assert isinstance(models, ModelsReply)
        assert [(m.name, m.backend) for m in models.models] == [("fake-1", "fake")]
        await client.send(StatusRequest())
        status = await client.receive()
        assert isinstance(status, StatusReply)
        assert status.sessions == 1 and status.router == "priority" and "fake" in status.backends
        await client.send(HistoryRequest("never-used"))
        assert await client.receive() == HistoryReply("never-used", [])


async def test_sessions_are_isolated():
    async with running_conductor() as kernel:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=WORDS, token_delay=0.01))
        async with kernel.connect() as alice, kernel.connect() as mallory:
            await handshake(alice)
            await handshake(mallory)
            await alice.send(Chat("secret", "my question"))
            assert isinstance(await alice.receive(), Token)
            await mallory.send(Cancel("secret"))
            await mallory.send(HistoryRequest())
            assert await mallory.receive() == HistoryReply("default", [])
            text, _, final = await collect(alice, "secret")
            assert isinstance(final, Done), final
            assert fake.cancelled == 0
