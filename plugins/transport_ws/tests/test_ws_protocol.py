"""The ``ws`` transport over real sockets with the websockets client: the protocol, the codecs,
the token, the limits and the close codes."""

from __future__ import annotations

import json

import anyio
import pytest
from conductor_core.errors import ErrorCode
from conductor_core.protocol import Cancel, Chat, ClientPing, Done, Error, ModelsReply, ModelsRequest, ServerPing, ServerPong, Token, Welcome
from conductor_core.testing.fakes import Script
from conductor_core.testing.wire import collect, handshake
from websockets.exceptions import InvalidStatus

WORDS = [f"w{i} " for i in range(40)]


async def test_hello_welcome_and_a_streamed_reply(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        welcome = await handshake(client, token=s.token)
        assert isinstance(welcome, Welcome) and welcome.protocol == 1 and welcome.models == ["fake-1"]
        s.backend.push(Script(tokens=WORDS[:10], token_delay=0.002))
        await client.send(Chat("c1", "count"))
        text, tokens, final = await collect(client, "c1")
        assert text == "".join(WORDS[:10]) and tokens == 10  # every token left as it arrived
        assert isinstance(final, Done) and final.stats.backend == "fake" and final.stats.tokens == 10


async def test_models_ping_and_token_in_header_or_query(serve_ws, ws_client):
    async with serve_ws() as s:
        async with ws_client(s, headers={"Authorization": f"Bearer {s.token}"}) as client:
            assert isinstance(await handshake(client), Welcome)  # no token needed in hello now
            await client.send(ClientPing(7))
            assert await client.receive() == ServerPong(7)
            await client.send(ModelsRequest())
            reply = await client.receive()
            assert isinstance(reply, ModelsReply) and [m.name for m in reply.models] == ["fake-1"]
        async with ws_client(s, query=f"?token={s.token}") as client:
            assert isinstance(await handshake(client), Welcome)


async def test_cancel_ends_the_reply_and_the_backend_stream(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        s.backend.push(Script(tokens=WORDS, hang_after=3))
        cancelled = s.backend.cancelled_event
        await client.send(Chat("c1", "go"))
        seen = ""
        while seen != "".join(WORDS[:3]):  # tokens may arrive coalesced
            msg = await client.receive()
            assert isinstance(msg, Token)
            seen += msg.text
        await client.send(Cancel("c1"))
        text, _, final = await collect(client, "c1")
        assert isinstance(final, Error) and final.code == ErrorCode.CANCELLED
        with anyio.fail_after(5):
            await cancelled.wait()
        assert s.backend.cancelled == 1 and s.backend.active == 0


async def test_concurrent_chats_on_one_connection_and_across_connections(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as one, ws_client(s) as two:
        await handshake(one, token=s.token)
        await handshake(two, token=s.token)
        for _ in range(3):
            s.backend.push(Script(tokens=list("abcdef"), token_delay=0.002))
        await one.send(Chat("a", "x", conversation="first"))
        await one.send(Chat("b", "y", conversation="second"))
        await two.send(Chat("a", "z"))  # same id on another connection: its own session
        texts = {"a": "", "b": ""}
        done = set()
        while len(done) < 2:
            msg = await one.receive()
            if isinstance(msg, Token):
                texts[msg.id] += msg.text
            elif isinstance(msg, Done):
                done.add(msg.id)
        assert texts == {"a": "abcdef", "b": "abcdef"}
        text, _, final = await collect(two, "a")
        assert text == "abcdef" and isinstance(final, Done)


async def test_msgpack_subprotocol_uses_binary_frames(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s, codec="msgpack") as client:
        assert client.ws.subprotocol == "conductor.msgpack"
        assert isinstance(await handshake(client, token=s.token), Welcome)  # WsClient asserts bytes frames
        await client.send(Chat("c", "hi"))
        text, _, final = await collect(client, "c")
        assert text == "Hello from the fake backend." and isinstance(final, Done)


async def test_without_subprotocol_json_text_frames_are_plain_json(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        assert client.ws.subprotocol is None
        await client.ws.send(json.dumps({"type": "hello", "protocol": 1, "token": s.token, "extra": "ignored"}))
        raw = await client.ws.recv()
        assert isinstance(raw, str) and json.loads(raw)["type"] == "welcome"


async def test_malformed_json_and_wrong_frame_type_are_errors_but_not_fatal(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        await client.send_raw("{not json")
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_MESSAGE and "json" in err.message
        await client.send_raw(b'{"type": "ping", "seq": 1}')  # JSON, but in a binary frame
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_MESSAGE and "text frames" in err.message
        await client.send_raw('{"type": "chat"}')  # valid JSON, missing fields
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_MESSAGE
        await client.send(Chat("c", "still here"))
        _, _, final = await collect(client, "c")
        assert isinstance(final, Done)


async def test_text_frame_on_a_msgpack_connection_is_a_bad_message(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s, codec="msgpack") as client:
        await handshake(client, token=s.token)
        await client.send_raw('{"type": "ping"}')
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_MESSAGE and "binary frames" in err.message


async def test_wrong_first_message_is_refused_and_closed_4400(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        await client.send(Chat("c", "no hello first"))
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.PROTOCOL_MISMATCH and "hello" in err.message
        assert await client.closed() == (4400, "protocol error")
    assert s.backend.requests == 0


async def test_malformed_first_message_is_refused_and_closed(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        await client.send_raw("][")
        err = await client.receive()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_MESSAGE
        assert await client.closed() == (4400, "protocol error")


async def test_no_token_is_unauthorized_4401(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        err = await handshake(client)
        assert isinstance(err, Error) and err.code == ErrorCode.UNAUTHORIZED
        assert await client.closed() == (4401, "unauthorized")
    assert s.backend.requests == 0


async def test_bad_token_in_hello_is_unauthorized_4401(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        err = await handshake(client, token="x" * len(s.token))
        assert isinstance(err, Error) and err.code == ErrorCode.UNAUTHORIZED
        assert await client.closed() == (4401, "unauthorized")


@pytest.mark.parametrize("where", ["header", "query"])
async def test_bad_token_at_the_handshake_is_http_401(serve_ws, ws_client, where):
    async with serve_ws() as s:
        kwargs = {"headers": {"Authorization": "Bearer wrong-token"}} if where == "header" else {"query": "?token=wrong"}
        with pytest.raises(InvalidStatus) as info:
            async with ws_client(s, **kwargs):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
        assert s.transport.connections == 0


async def test_oversize_message_closes_1009(serve_ws, ws_client):
    async with serve_ws(transport={"max_message_bytes": 4096}) as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        await client.send_raw("x" * 5000)
        code, reason = await client.closed()
        assert code == 1009 and "4096" in reason
        await s.transport.wait_connections(0)


async def test_content_just_under_the_limit_is_fine(serve_ws, ws_client):
    async with serve_ws(transport={"max_message_bytes": 4096}, backend={"echo": True}) as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        content = "y" * 3900
        await client.send(Chat("c", content))
        text, _, final = await collect(client, "c")
        assert text == content and isinstance(final, Done)


async def test_no_hello_in_time_closes_4408(serve_ws, ws_client):
    async with serve_ws(limits={"hello_timeout_s": 0.1}) as s, ws_client(s) as client:
        err = await client.receive()  # we say nothing
        assert isinstance(err, Error) and err.code == ErrorCode.PROTOCOL_MISMATCH and "no hello" in err.message
        assert await client.closed() == (4408, "no hello in time")


async def test_idle_client_that_ignores_heartbeat_pings_closes_4408(serve_ws, ws_client):
    limits = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.05, "heartbeat_misses": 2}
    async with serve_ws(limits=limits) as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        assert isinstance(await client.receive(), ServerPing)
        assert await client.closed() == (4408, "heartbeat timeout")


async def test_client_answering_pings_stays_connected(serve_ws, ws_client):
    limits = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.05, "heartbeat_misses": 1}
    async with serve_ws(limits=limits) as s, ws_client(s) as client:
        await handshake(client, token=s.token)
        for _ in range(5):
            ping = await client.receive()
            assert isinstance(ping, ServerPing)
            await client.ws.send(json.dumps({"type": "pong", "seq": ping.seq}))
        await client.send(Chat("c", "still open"))
        _, _, final = await collect(client, "c")
        assert isinstance(final, Done)


async def test_handshake_timeout_drops_a_silent_tcp_connection(serve_ws):
    async with serve_ws(transport={"open_timeout_s": 0.1}) as s:
        async with await anyio.connect_tcp("127.0.0.1", s.port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes the headers
            with anyio.fail_after(10):
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
            assert data == b""  # closed without a response


async def test_total_connection_cap_is_http_503(serve_ws, ws_client):
    async with serve_ws(transport={"max_connections": 2}) as s:
        async with ws_client(s) as a, ws_client(s) as b:
            await handshake(a, token=s.token)
            await handshake(b, token=s.token)
            with pytest.raises(InvalidStatus) as info:
                async with ws_client(s):
                    pass
            assert info.value.response.status_code == 503
            assert b"too many connections" in info.value.response.body
        await s.transport.wait_connections(0)
        async with ws_client(s) as c:  # slots come back when connections end
            assert isinstance(await handshake(c, token=s.token), Welcome)


async def test_per_origin_connection_cap(serve_ws, ws_client):
    async with serve_ws(transport={"max_connections_per_origin": 1}) as s:
        other = f"http://localhost:{s.port}"
        async with ws_client(s, origin=s.origin) as a, ws_client(s, origin=other) as b:
            await handshake(a, token=s.token)
            await handshake(b, token=s.token)
            with pytest.raises(InvalidStatus) as info:
                async with ws_client(s, origin=s.origin):
                    pass
            assert info.value.response.status_code == 503
            assert b"from this origin" in info.value.response.body


async def test_client_that_stops_reading_is_closed_and_its_stream_cancelled(serve_ws, ws_client):
    big = ["x" * 8192] * 4000  # 32 MiB: far more than socket buffers + write limit + outbox bound
    async with serve_ws(transport={"write_limit_bytes": 16384}, limits={"max_pending_bytes": 262144}) as s:
        async with ws_client(s, max_queue=1, close_timeout=0.5) as stuck, ws_client(s) as healthy:
            await handshake(stuck, token=s.token)
            await handshake(healthy, token=s.token)
            s.backend.push(Script(tokens=big, token_delay=0.0002))
            cancelled = s.backend.cancelled_event
            await stuck.send(Chat("s", "flood me"))  # then never read again
            with anyio.fail_after(30):
                await cancelled.wait()
            await healthy.send(Chat("h", "and me?"))
            _, _, final = await collect(healthy, "h")
            assert isinstance(final, Done)
            with anyio.fail_after(10):
                await s.transport.wait_connections(1)  # the stalled one is gone


async def test_shutdown_closes_with_1001_and_removes_the_token_file(serve_ws, ws_client, tmp_path):
    token_file = tmp_path / "ws.token"
    async with serve_ws() as s:
        assert token_file.read_text().strip() == s.token
        assert token_file.stat().st_mode & 0o777 == 0o600
        async with ws_client(s) as client:
            await handshake(client, token=s.token)
            s.conductor.request_stop()
            err = await client.receive()
            assert isinstance(err, Error) and err.code == ErrorCode.SHUTTING_DOWN
            assert await client.closed() == (1001, "conductor shutting down")
        assert not token_file.exists()


@pytest.mark.parametrize(
    ("error", "welcomed", "got_message", "pings", "expected"),
    [
        (None, True, True, 0, (1000, "")),
        (Error(ErrorCode.SHUTTING_DOWN, "bye", True), True, True, 0, (1001, "conductor shutting down")),
        (Error(ErrorCode.TOO_LARGE, "big"), True, True, 0, (1009, "message too big")),
        (Error(ErrorCode.OVERLOADED, "slow", False, "c"), True, True, 0, (1013, "client too slow")),
        (Error(ErrorCode.OVERLOADED, "busy", True, "c"), True, True, 0, (1000, "")),  # a chat's error only
        (Error(ErrorCode.BACKEND_UNAVAILABLE, "down", True, "c"), True, True, 2, (4408, "heartbeat timeout")),
        (Error(ErrorCode.UNAUTHORIZED, "no"), False, True, 0, (4401, "unauthorized")),
        (Error(ErrorCode.PROTOCOL_MISMATCH, "v9"), False, True, 0, (4400, "protocol error")),
        (Error(ErrorCode.PROTOCOL_MISMATCH, "no hello"), False, False, 0, (4408, "no hello in time")),
        (Error(ErrorCode.BAD_MESSAGE, "junk"), False, True, 0, (4400, "protocol error")),
        (None, True, True, 3, (4408, "heartbeat timeout")),
    ],
)
def test_close_code_table(error, welcomed, got_message, pings, expected):
    from conductor_transport_ws.channel import close_code

    assert close_code(error, welcomed=welcomed, got_message=got_message, pings_unanswered=pings) == expected
