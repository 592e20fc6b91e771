"""Frame fuzzing on the real socket: garbage never crashes the server, never wedges or leaks a
connection, and a well-behaved client streaming at the same time is unaffected."""

from __future__ import annotations

import logging
import struct

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor_core.client import connect_unix
from conductor_core.framing import FrameDecoder, encode_frame
from conductor_core.protocol import Error, decode_server
from conductor_transport_unix.channel import sniff_codec

MAX_FRAME = 4096

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
shapes = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["hello", "chat", "cancel", "ping", "nope"])}, optional={"protocol": json_values, "id": json_values, "content": json_values}),
)


def _frames(payloads):
    return b"".join(encode_frame(p) for p in payloads)


garbage = st.one_of(
    st.binary(max_size=200),  # random bytes
    st.binary(min_size=1, max_size=100).map(lambda b: encode_frame(b)[:-1]),  # truncated frame
    st.integers(min_value=MAX_FRAME + 1, max_value=2**32 - 1).map(lambda n: struct.pack(">I", n) + b"x" * 10),  # huge prefix
    st.lists(shapes, min_size=1, max_size=3).map(lambda xs: _frames([msgspec.msgpack.encode(x) for x in xs])),  # wrong shapes
    st.lists(shapes, min_size=1, max_size=3).map(lambda xs: _frames([msgspec.json.encode(x) for x in xs])),
    # a valid hello, then garbage
    st.binary(max_size=50).map(lambda b: _frames([msgspec.msgpack.encode({"type": "hello", "protocol": 1})]) + b),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=garbage)
async def test_garbage_never_hurts_the_server_or_a_good_client(serve_unix, caplog, data):
    caplog.set_level(logging.WARNING)
    async with serve_unix(limits={"max_frame_bytes": MAX_FRAME}, backend={"token_delay_ms": 1}) as s:
        async with connect_unix(s.path) as good:
            async with good.chat("hi") as reply:
                bad = await anyio.connect_unix(s.path)
                async with bad:
                    await bad.send(data)
                    await bad.send_eof()
                    received = b""
                    with anyio.fail_after(10):  # hang guard: the server must close us
                        while True:
                            try:
                                received += await bad.receive()
                            except (anyio.EndOfStream, anyio.BrokenResourceError):
                                break
                text = "".join([piece async for piece in reply])
            assert text == "Hello from the fake backend."
        decoder = FrameDecoder(1 << 20)
        decoder.receive_data(received)
        codec = sniff_codec(data[4:]) if len(data) > 4 else "msgpack"
        for frame in decoder.events_received():
            decode_server(frame, codec)  # every answer is a well-formed message
        with anyio.fail_after(10):
            while s.transport.active or s.conductor.connections:
                await anyio.sleep(0.01)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_oversized_prefix_is_answered_before_the_body(serve_unix):
    async with serve_unix(limits={"max_frame_bytes": MAX_FRAME}) as s:
        async with await anyio.connect_unix(s.path) as bad:
            await bad.send(struct.pack(">I", 1 << 30))  # 1 GiB announced, nothing sent
            decoder = FrameDecoder()
            with anyio.fail_after(10):
                while not (frames := decoder.events_received()):
                    decoder.receive_data(await bad.receive())
            error = decode_server(frames[0])
            assert isinstance(error, Error) and error.code == "too_large"
            assert "exceeds the maximum of 4096 bytes" in error.message
            with pytest.raises(anyio.EndOfStream), anyio.fail_after(10):
                await bad.receive()


async def test_json_client_gets_json_answers(serve_unix):
    async with serve_unix() as s:
        async with await anyio.connect_unix(s.path) as raw:
            await raw.send(encode_frame(b' {"type": "hello", "protocol": 1}') + encode_frame(b'{"type":"models"}'))
            decoder = FrameDecoder()
            frames: list[bytes] = []
            with anyio.fail_after(10):
                while len(frames) < 2:
                    decoder.receive_data(await raw.receive())
                    frames += decoder.events_received()
            assert frames[0].startswith(b'{"type":"welcome"')
            assert decode_server(frames[1], "json").models[0].name == "fake-1"


async def test_a_batch_goes_out_in_one_socket_write():
    from conductor_core.protocol import Done, Stats, Token
    from conductor_transport_unix.channel import UnixChannel

    class Recorder:
        def __init__(self):
            self.writes: list[bytes] = []

        async def send(self, data: bytes) -> None:
            self.writes.append(data)

        def extra(self, attribute, default=None):
            return default  # no raw socket: the channel must use send()

    stream = Recorder()
    channel = UnixChannel(stream, max_frame_bytes=MAX_FRAME, peer="test")
    batch = [Token("c1", "a"), Token("c1", "b"), Done("c1", Stats("fake", "m", 1.0, 2, 3.0, "stop"))]
    await channel.send(batch)
    assert len(stream.writes) == 1
    decoder = FrameDecoder()
    decoder.receive_data(stream.writes[0])
    assert [decode_server(f) for f in decoder.events_received()] == batch


async def test_direct_socket_writes_keep_order_and_survive_a_full_socket(tmp_path):
    """The channel writes straight to the socket and hands what did not fit to anyio's send:
    a batch far larger than the socket buffer arrives whole and in order."""
    from conductor_core.protocol import Token
    from conductor_transport_unix.channel import UnixChannel

    path = tmp_path / "s.sock"
    listener = await anyio.create_unix_listener(path)
    async with listener, await anyio.connect_unix(path) as client:
        server_stream = await listener.accept()
        async with server_stream:
            channel = UnixChannel(server_stream, max_frame_bytes=MAX_FRAME, peer="test")
            batches = [[Token("c1", f"{b}-{i}-" + "x" * 4000) for i in range(100)] for b in range(5)]
            received = []

            async def read_all():
                decoder = FrameDecoder(max_size=1 << 24)
                while len(received) < 500:
                    decoder.receive_data(await client.receive())
                    received.extend(decode_server(f) for f in decoder.events_received())

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                for batch in batches:
                    await channel.send(batch)
            assert received == [m for batch in batches for m in batch]
