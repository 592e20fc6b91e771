"""Connection caps, message rate, heartbeat and slow readers on the real socket."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.client import ClientError, connect_unix
from conductor_core.framing import FrameDecoder, encode_frame
from conductor_core.protocol import Chat, Error, Hello, ServerPing, Token, Welcome, decode_server, encode
from conductor_core.testing.fakes import Script


async def _wait_until(predicate) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.005)


class RawClient:
    """A client that speaks frames by hand and only reads when told to."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = FrameDecoder(64 << 20)
        self.pending: list = []

    @classmethod
    async def open(cls, path):
        return cls(await anyio.connect_unix(path))

    async def send(self, *messages):
        await self.stream.send(b"".join(encode_frame(encode(m)) for m in messages))

    async def receive(self):
        while not self.pending:
            self.decoder.receive_data(await self.stream.receive())
            self.pending += [decode_server(f) for f in self.decoder.events_received()]
        return self.pending.pop(0)

    async def read_to_end(self) -> list:
        out = []
        with anyio.fail_after(10):
            while True:
                try:
                    out.append(await self.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return out


@pytest.mark.parametrize("cap", ["max_connections_per_uid", "max_connections"])
async def test_connection_caps_answer_rate_limited(serve_unix, cap):
    async with serve_unix(transport={cap: 2}) as s:
        async with connect_unix(s.path), connect_unix(s.path):
            with pytest.raises(ClientError) as info:
                async with connect_unix(s.path):
                    pass
            assert info.value.code == "rate_limited"
            assert info.value.retryable and info.value.retry_after_ms == 1000
            assert s.transport.active == 2
        await _wait_until(lambda: s.transport.active == 0)
        async with connect_unix(s.path) as client:  # room again
            assert client.welcome is not None


async def test_message_rate_limit(serve_unix):
    async with serve_unix(limits={"messages_per_second": 0.5, "message_burst": 2}) as s:
        async with connect_unix(s.path) as client:
            await client.models()
            await client.models()
            with pytest.raises(ClientError) as info:
                await client.models()
            assert info.value.code == "rate_limited" and info.value.retry_after_ms > 0


async def test_heartbeat_closes_a_silent_client_and_cancels_its_stream(serve_unix):
    limits = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.05, "heartbeat_misses": 2}
    async with serve_unix(limits=limits) as s:
        s.backend.push(Script(tokens=["a", "b"], hang_after=1))
        cancelled = s.backend.cancelled_event
        async with connect_unix(s.path) as polite:  # answers pings by itself
            async with await RawClient.open(s.path) as silent:
                await silent.send(Hello(1), Chat("c1", "hi"))
                messages = await silent.read_to_end()
            assert isinstance(messages[0], Welcome)
            assert any(isinstance(m, Token) for m in messages)
            assert sum(isinstance(m, ServerPing) for m in messages) == 2
            with anyio.fail_after(10):
                await cancelled.wait()
            assert s.backend.cancelled == 1
            # the polite client saw the same silence but answered: still connected
            assert not polite.closed.is_set()
            assert await polite.chat("hi").text() == "Hello from the fake backend."


RawClient.__aenter__ = lambda self: _enter(self)  # type: ignore[attr-defined]
RawClient.__aexit__ = lambda self, *exc: self.stream.aclose()  # type: ignore[attr-defined]


async def _enter(self):
    return self


async def test_slow_reader_is_closed_and_others_keep_streaming(serve_unix):
    big = ["x" * 4096] * 2000  # 8 MB: far beyond the socket buffers plus the pending bound
    async with serve_unix(limits={"max_pending_bytes": 65536}) as s:
        s.backend.push(Script(tokens=big))
        async with await RawClient.open(s.path) as slow:
            await slow.send(Hello(1), Chat("c1", "flood me"))
            assert isinstance(await slow.receive(), Welcome)
            # stop reading; the kernel must give up on us without stalling anyone
            await _wait_until(lambda: s.backend.cancelled == 1 or s.backend.completed == 1)
            async with connect_unix(s.path) as other:
                assert await other.chat("hi").text() == "Hello from the fake backend."
            messages = await slow.read_to_end()
        tail = messages[-1]
        assert isinstance(tail, Error), tail
        assert tail.code == "overloaded"
        text = "".join(m.text for m in messages if isinstance(m, Token))
        assert len(text) < len("".join(big)), "the slow reader did not get the whole reply"
        assert set(text) <= {"x"}
