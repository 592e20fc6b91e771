"""Failure paths of the kernel: backend errors, fallback, slow consumers, limits, bad input,
heartbeat, shutdown. Every error code a surface can cause is reached here (too_large is a
transport's frame limit and is tested with the transports)."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from conductor_core.connection import check_token
from conductor_core.errors import ErrorCode
from conductor_core.protocol import (
    Cancel,
    Chat,
    ClientPong,
    Done,
    Error,
    HistoryReply,
    HistoryRequest,
    ServerPing,
    Token,
    Welcome,
)
from conductor_core.testing.fakes import Script, running_conductor
from conductor_core.testing.wire import collect, handshake

WORDS = [f"w{i} " for i in range(200)]


def two_backends(**extra):
    return {
        "backends": {
            "first": {"type": "fake", "models": ["m"]},
            "second": {"type": "fake", "models": ["m"], "reply": "from second"},
        },
        **extra,
    }


async def expect_closed(client):
    with anyio.fail_after(5):
        with pytest.raises((anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)):
            while True:
                await client.receive()


# ---------------------------------------------------------------- handshake and bad input


async def test_first_message_must_be_hello():
    async with running_conductor() as kernel, kernel.connect() as client:
        await client.send(Chat("c", "hi"))
        error = await client.receive()
        assert isinstance(error, Error) and error.code == ErrorCode.PROTOCOL_MISMATCH
        assert "first message must be hello" in error.message
        await expect_closed(client)


async def test_unknown_protocol_version_names_the_supported_ones():
    async with running_conductor() as kernel, kernel.connect() as client:
        from conductor_core.protocol import Hello

        await client.send(Hello(protocol=99))
        error = await client.receive()
        assert error.code == ErrorCode.PROTOCOL_MISMATCH and "supported: 1" in error.message
        await expect_closed(client)


async def test_hello_timeout_closes_a_silent_client():
    async with running_conductor({"backends": {"f": {"type": "fake"}}, "limits": {"hello_timeout_s": 0.05}}) as kernel:
        async with kernel.connect() as client:
            error = await client.receive()
            assert error.code == ErrorCode.PROTOCOL_MISMATCH and "no hello" in error.message
            await expect_closed(client)


async def test_token_is_checked():
    async with running_conductor() as kernel:
        async with kernel.connect(authenticate=check_token("s3cret")) as client:
            error = await handshake(client, token="wrong")
            assert error.code == ErrorCode.UNAUTHORIZED
            await expect_closed(client)
        async with kernel.connect(authenticate=check_token("s3cret")) as client:
            assert (await handshake(client)).code == ErrorCode.UNAUTHORIZED
        async with kernel.connect(authenticate=check_token("s3cret")) as client:
            assert isinstance(await handshake(client, token="s3cret"), Welcome)


async def test_malformed_messages_get_bad_message_and_the_connection_survives():
    async with running_conductor() as kernel, kernel.connect(codec="json") as client:
        await handshake(client)
        for raw in (b"{not json", b'{"type":"chat","id":5,"content":"x"}', b'{"type":"launch"}', b"[]"):
            await client.send_raw(raw)
            error = await client.receive()
            assert isinstance(error, Error) and error.code == ErrorCode.BAD_MESSAGE, raw
        await client.send_raw(b'{"type":"chat","id":5,"content":"x"}')
        assert "$.id" in (await client.receive()).message  # says where the problem is
        await client.send(Chat("ok", "still there?"))
        _, _, final = await collect(client, "ok")
        assert isinstance(final, Done)


async def test_second_hello_and_empty_id_and_huge_content_are_bad_messages():
    config = {"backends": {"f": {"type": "fake"}}, "limits": {"max_content_chars": 10}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        from conductor_core.protocol import Hello

        await client.send(Hello(protocol=1))
        assert (await client.receive()).code == ErrorCode.BAD_MESSAGE
        await client.send(Chat("", "x"))
        assert (await client.receive()).code == ErrorCode.BAD_MESSAGE
        await client.send(Chat("big", "x" * 11))
        error = await client.receive()
        assert error.code == ErrorCode.BAD_MESSAGE and error.id == "big"


async def test_message_rate_limit_answers_rate_limited_with_retry_after():
    config = {"backends": {"f": {"type": "fake"}}, "limits": {"messages_per_second": 1, "message_burst": 2}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        from conductor_core.protocol import ClientPing

        for seq in range(3):
            await client.send(ClientPing(seq))
        replies = [await client.receive() for _ in range(3)]
        limited = [r for r in replies if isinstance(r, Error)]
        assert len(limited) == 1 and limited[0].code == ErrorCode.RATE_LIMITED
        assert limited[0].retryable and limited[0].retry_after_ms > 0


async def test_concurrent_chat_cap_per_connection():
    config = {"backends": {"f": {"type": "fake"}}, "limits": {"max_chats_per_connection": 1}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        kernel.conductor.backends["f"].push(Script(tokens=list("abc"), ttft=0.05))
        await handshake(client)
        await client.send(Chat("a", "x", conversation="1"))
        await client.send(Chat("b", "y", conversation="2"))
        others: list = []
        await collect(client, "a", others=others)
        assert any(isinstance(m, Error) and m.id == "b" and m.code == ErrorCode.RATE_LIMITED for m in others)


# ---------------------------------------------------------------- backend failures


async def test_unknown_model_names_what_is_available():
    async with running_conductor() as kernel, kernel.connect() as client:
        await handshake(client)
        await kernel.conductor.refresh_catalog()
        await client.send(Chat("c", "hi", model="nonexistent"))
        _, _, final = await collect(client, "c")
        assert final.code == ErrorCode.UNKNOWN_MODEL and "fake-1" in final.message


async def test_failure_before_first_token_falls_back_to_the_next_backend():
    async with running_conductor(two_backends()) as kernel, kernel.connect() as client:
        kernel.conductor.backends["first"].push(Script(fail_before_first="unavailable"))
        await handshake(client)
        await client.send(Chat("c", "hi", model="m"))
        text, _, final = await collect(client, "c")
        assert isinstance(final, Done), final
        assert text == "from second" and final.stats.backend == "second" and final.stats.attempts == 2


async def test_every_backend_unavailable_is_backend_unavailable():
    async with running_conductor(two_backends()) as kernel, kernel.connect() as client:
        for name in ("first", "second"):
            kernel.conductor.backends[name].push(Script(fail_before_first="unavailable"))
        await handshake(client)
        await client.send(Chat("c", "hi", model="m"))
        _, _, final = await collect(client, "c")
        assert final.code == ErrorCode.BACKEND_UNAVAILABLE and final.retryable


async def test_failure_after_first_token_is_an_error_never_a_silent_retry():
    async with running_conductor(two_backends()) as kernel, kernel.connect() as client:
        kernel.conductor.backends["first"].push(Script(tokens=list("abcdef"), fail_after=3))
        await handshake(client)
        await client.send(Chat("c", "hi", model="m"))
        text, _, final = await collect(client, "c")
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert text == "abc"
        assert kernel.conductor.backends["second"].requests == 0
        await client.send(HistoryRequest())
        history = await client.receive()
        assert history.messages[-1].content == "abc" and history.messages[-1].interrupted


async def test_backend_bug_is_internal_without_details():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]

        async def broken(request):
            raise RuntimeError("/secret/path leaked")
            yield  # pragma: no cover

        fake.chat = broken
        await handshake(client)
        await client.send(Chat("c", "hi"))
        _, _, final = await collect(client, "c")
        assert final.code == ErrorCode.INTERNAL and "secret" not in final.message
        await client.send(Chat("d", "hi"))  # the connection survived
        assert isinstance(await client.receive(), Error)


async def test_stream_without_final_message_is_an_error():
    async with running_conductor() as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["fake"]

        async def truncated(request):
            yield "partial"

        fake.chat = truncated
        await handshake(client)
        await client.send(Chat("c", "hi"))
        text, _, final = await collect(client, "c")
        assert text == "partial" and final.code == ErrorCode.BACKEND_ERROR and "final" in final.message


# ---------------------------------------------------------------- slow consumers


async def test_slow_client_gets_coalesced_tokens_and_nothing_is_lost():
    async with running_conductor() as kernel, kernel.connect(buffer=0) as client:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=WORDS, token_delay=0.0005))
        await handshake(client)
        await client.send(Chat("c", "go"))
        completed = fake.completed_event
        first = await client.receive()
        with anyio.fail_after(10):
            await completed.wait()  # not reading while the backend produces everything
        text, messages, final = await collect(client, "c")
        assert isinstance(final, Done)
        assert first.text + text == "".join(WORDS)
        assert messages + 1 < len(WORDS)  # coalesced into fewer messages


async def test_client_that_stops_reading_is_closed_past_the_bound_and_others_continue():
    config = {"backends": {"f": {"type": "fake"}}, "limits": {"max_pending_bytes": 200}}
    async with running_conductor(config) as kernel:
        fake = kernel.conductor.backends["f"]
        async with kernel.connect(buffer=0) as stuck, kernel.connect() as healthy:
            await handshake(stuck)
            await handshake(healthy)
            fake.push(Script(tokens=WORDS, token_delay=0.0005))
            cancelled = fake.cancelled_event
            await stuck.send(Chat("s", "flood me"))
            with anyio.fail_after(10):
                await cancelled.wait()  # the overflow closed the connection and its stream
            await healthy.send(Chat("h", "hi"))
            _, _, final = await collect(healthy, "h")
            assert isinstance(final, Done)
            seen = []
            with anyio.fail_after(5):
                try:
                    while True:
                        seen.append(await stuck.receive())
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass
            assert not any(isinstance(m, Done) for m in seen)


# ---------------------------------------------------------------- history


async def test_history_window_and_system_prompt():
    config = {"backends": {"f": {"type": "fake", "echo": True}}, "system_prompt": "be brief", "history": {"max_messages": 2}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["f"]
        await handshake(client)
        for i in range(3):
            await client.send(Chat(f"c{i}", f"q{i}"))
            await collect(client, f"c{i}")
        sent = fake.requests_seen[-1].messages
        assert [(m.role, m.content) for m in sent] == [
            ("system", "be brief"),
            ("user", "q1"),
            ("assistant", "q1"),
            ("user", "q2"),
        ]
        await client.send(Chat("s", "q3", system="be verbose"))
        await collect(client, "s")
        assert fake.requests_seen[-1].messages[0].content == "be verbose"
        assert sum(m.role == "system" for m in fake.requests_seen[-1].messages) == 1


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_pings_a_silent_client_and_closes_it_after_misses():
    limits = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.05, "heartbeat_misses": 2}
    async with running_conductor({"backends": {"f": {"type": "fake"}}, "limits": limits}) as kernel:
        fake = kernel.conductor.backends["f"]
        fake.push(Script(tokens=WORDS, token_delay=0.05))
        async with kernel.connect() as client:
            await handshake(client)
            await client.send(Chat("c", "hi"))
            pings = []
            with anyio.fail_after(10):
                try:
                    while True:
                        msg = await client.receive()
                        if isinstance(msg, ServerPing):
                            pings.append(msg.seq)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass
            assert pings[:2] == [1, 2]
        assert fake.cancelled == 1


async def test_answered_pings_keep_the_connection():
    limits = {"heartbeat_interval_s": 0.02, "heartbeat_timeout_s": 0.02, "heartbeat_misses": 1}
    async with running_conductor({"backends": {"f": {"type": "fake"}}, "limits": limits}) as kernel:
        async with kernel.connect() as client:
            await handshake(client)
            for _ in range(5):
                msg = await client.receive()
                assert isinstance(msg, ServerPing)
                await client.send(ClientPong(msg.seq))
            await client.send(Chat("c", "still here"))
            _, _, final = await collect(client, "c")
            assert isinstance(final, Done)


# ---------------------------------------------------------------- shutdown


async def test_shutdown_lets_short_replies_finish_and_ends_long_ones_with_shutting_down():
    config = {"backends": {"f": {"type": "fake"}}, "shutdown_grace_s": 0.3}
    async with running_conductor(config) as kernel:
        fake = kernel.conductor.backends["f"]
        fake.push(Script(tokens=list("abc"), token_delay=0.02), Script(tokens=WORDS, token_delay=0.05))
        async with kernel.connect() as short, kernel.connect() as long:
            await handshake(short)
            await handshake(long)
            await short.send(Chat("s", "short"))
            await long.send(Chat("l", "long"))
            assert isinstance(await long.receive(), Token)
            kernel.conductor.request_stop()
            text, _, final = await collect(short, "s")
            assert text == "abc" and isinstance(final, Done)
            _, _, final = await collect(long, "l")
            assert final.code == ErrorCode.SHUTTING_DOWN and final.retryable
            await expect_closed(long)
            with anyio.fail_after(10):
                await kernel.conductor.stopped.wait()
        assert fake.closed and fake.active == 0


async def test_new_chat_during_shutdown_is_refused():
    config = {"backends": {"f": {"type": "fake"}}, "shutdown_grace_s": 1}
    async with running_conductor(config) as kernel:
        fake = kernel.conductor.backends["f"]
        fake.push(Script(tokens=WORDS, token_delay=0.02))
        async with kernel.connect() as busy, kernel.connect() as late:
            await handshake(busy)
            await handshake(late)
            await busy.send(Chat("b", "keep going"))
            assert isinstance(await busy.receive(), Token)
            kernel.conductor.request_stop()
            await kernel.conductor.stopping.wait()
            await late.send(Chat("x", "hello?"))
            error = await late.receive()
            assert error.code == ErrorCode.SHUTTING_DOWN and error.id == "x"


async def test_an_endless_stream_is_cut_at_the_reply_cap():
    config = {"backends": {"f": {"type": "fake"}}, "limits": {"max_reply_pieces": 20}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        fake = kernel.conductor.backends["f"]
        fake.push(Script(tokens=WORDS))  # 200 pieces
        cancelled = fake.cancelled_event
        await handshake(client)
        await client.send(Chat("c", "never stop"))
        text, _, final = await collect(client, "c")
        assert final.code == ErrorCode.BACKEND_ERROR and "max_reply_pieces" in final.message
        assert text == "".join(WORDS[:21])  # what was sent stays sent; nothing more
        with anyio.fail_after(5):
            await cancelled.wait()  # and the upstream stream is closed
