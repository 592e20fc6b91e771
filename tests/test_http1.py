"""The sans-I/O HTTP/1.1 response parser and the lean streaming client built on it."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor_core import httpclient
from conductor_core.backends import Timeouts
from conductor_core.http1 import HTTPProtocolError, ResponseParser, encode_request

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: y\r\n\r\n"
)
LENGTH = b"HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{\"error\":1}"
CLOSE = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"


def parse(data: bytes, splits: list[int]) -> tuple[ResponseParser, bytes]:
    parser, body, last = ResponseParser(), b"", 0
    for cut in sorted(splits) + [len(data)]:
        body += b"".join(parser.feed(data[last:cut]))
        last = cut
    return parser, body


@given(st.lists(st.integers(0, len(CHUNKED)), max_size=6))
def test_chunked_body_survives_any_split(splits):
    parser, body = parse(CHUNKED, splits)
    assert body == b"hello world" and parser.complete
    assert parser.head.status == 200 and parser.head.keep_alive
    assert parser.head.headers["content-type"] == "application/x-ndjson"


@given(st.lists(st.integers(0, len(LENGTH)), max_size=4))
def test_content_length_body_survives_any_split(splits):
    parser, body = parse(LENGTH, splits)
    assert body == b'{"error":1}' and parser.complete and parser.head.status == 404


def test_close_delimited_body_ends_at_eof_and_is_not_reusable():
    parser, body = parse(CLOSE, [20])
    assert body == b"until the end" and not parser.complete
    parser.eof()
    assert parser.complete and not parser.head.keep_alive


def test_cut_chunked_body_is_an_error_at_eof():
    parser, _ = parse(CHUNKED[:-20], [])
    with pytest.raises(HTTPProtocolError, match="closed before the response ended"):
        parser.eof()


def test_interim_100_continue_is_skipped():
    parser, body = parse(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH, [])
    assert parser.head.status == 404 and body == b'{"error":1}'


def test_connection_close_header_disables_reuse():
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", [])
    assert parser.complete and not parser.head.keep_alive


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad status code"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "negative Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 20000, "head longer than"),
    ],
)
def test_malformed_responses_are_protocol_errors(raw, match):
    with pytest.raises(HTTPProtocolError, match=match):
        ResponseParser().feed(raw)


def test_encode_request_literal_bytes():
    assert encode_request("POST", "/api/chat", "h:1", {"X-A": "b"}, b"{}") == (
        b"POST /api/chat HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}"
    )


# ---------------------------------------------------------------- the client over real sockets


async def test_client_streams_and_reuses_one_connection():
    from conductor_core.testing.ollama_emulator import OllamaEmulator

    async with OllamaEmulator(models=["m"], token_count=5) as emu:
        client = httpclient.StreamingClient(emu.url)
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"keep_alive":"5m"}'
        for _ in range(3):
            response = await client.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
            assert response.status_code == 200
            data = await response.aread()
            await response.aclose()
            assert data.count(b"\n") == 6  # 5 tokens and the done line
        assert client.connections_opened == 1
        await client.aclose()


async def test_stale_pooled_connection_is_retried_on_a_fresh_one():
    """A server that closes a kept-alive connection between requests (llama.cpp does)."""
    served = 0

    async def handle(stream):
        nonlocal served
        async with stream:
            await stream.receive()
            served += 1
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # closed after one response although it promised keep-alive

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        client = httpclient.StreamingClient(f"http://127.0.0.1:{port}")
        for _ in range(3):
            response = await client.request("GET", "/")
            assert await response.aread() == b"ok"
            await response.aclose()
        assert served == 3 and client.connections_opened == 3
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_timeouts_and_refusals_are_typed():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async def silent(stream):
        async with stream:
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        client = httpclient.StreamingClient(f"http://127.0.0.1:{port}", timeouts=Timeouts(between_chunks=0.05))
        with pytest.raises(httpclient.ReadTimeout):
            await client.request("GET", "/")
        tg.cancel_scope.cancel()
    await listener.aclose()
    refused = httpclient.StreamingClient(f"http://127.0.0.1:{port}")
    with pytest.raises(httpclient.ConnectError):
        await refused.request("GET", "/")


async def test_pool_timeout_when_every_connection_is_busy():
    from conductor_core.testing.ollama_emulator import OllamaEmulator

    async with OllamaEmulator(models=["m"]) as emu:
        client = httpclient.StreamingClient(emu.url, max_connections=1, timeouts=Timeouts(pool=0.05))
        busy = await client.request("GET", "/api/tags")
        with pytest.raises(httpclient.PoolTimeout):
            await client.request("GET", "/api/tags")
        await busy.aclose()
        again = await client.request("GET", "/api/tags")  # the slot came back
        await again.aread()
        await again.aclose()
        await client.aclose()


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError, match="http:// or https://"):
        httpclient.StreamingClient("ftp://x")
