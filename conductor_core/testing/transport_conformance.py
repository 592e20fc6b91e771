"""The conformance suite every transport plugin must pass.

The suite runs a real kernel (one :class:`~conductor_core.testing.fakes.FakeBackend`, your
transport) and talks to it through raw client connections you open. Subclass
:class:`TransportConformance` (the name must start with ``Test``) and override two fixtures::

    from conductor_core.testing.conformance import FramedConnection, TransportConformance

    class TestUnixConformance(TransportConformance):
        @pytest.fixture
        def transport_config(self, tmp_socket_dir):
            return {"type": "unix", "path": str(tmp_socket_dir / "c.sock")}

        @pytest.fixture
        def open_connection(self):
            @asynccontextmanager
            async def open(transport):
                async with FramedConnection(await anyio.connect_unix(transport.path)) as conn:
                    yield conn
            return open

``transport_config`` is the ``[transports.NAME]`` table (with ``type``); if your transport has
its own message size limit, set it to :attr:`TransportConformance.max_message_bytes` (the
suite also sets ``limits.max_frame_bytes`` to it). ``open_connection(transport)`` opens a
:class:`RawConnection` to the running transport instance, with no hello sent yet.

The contract checked: ``hello`` is answered with ``welcome``; a first message that is not a
hello is answered with ``error`` and the connection closes; a message that does not decode is
answered with ``error{bad_message}`` and the connection survives; a message of exactly the
size limit is not "too large" but one byte more closes the connection (with at most an
``error{too_large}`` first); ``cancel`` ends a reply with ``error{cancelled}`` and closes the
backend stream; a client that disconnects mid-reply closes the backend stream and leaves no
connection behind; other connections never notice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec
import pytest

from ..errors import ErrorCode
from ..framing import FrameDecoder, encode_frame
from ..protocol import (
    Cancel,
    Chat,
    ClientMessage,
    ClientPing,
    Codec,
    Done,
    Error,
    Hello,
    ServerMessage,
    ServerPong,
    Token,
    Welcome,
    decode_server,
    encode,
)
from .fakes import FakeBackend, Script, running_conductor
from .wire import collect

__all__ = ["FramedConnection", "RawConnection", "TransportConformance"]

REPLY = "Hello from the fake backend."
WORDS = [f"w{i} " for i in range(40)]
CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class RawConnection(Protocol):
    """A client connection as the suite drives it."""

    codec: Codec  # what ``send`` encodes with, and what ``send_raw`` payloads should be in

    async def send(self, message: ClientMessage) -> None:
        """One protocol message, encoded in ``codec``, as one frame / WebSocket message."""
        ...

    async def send_raw(self, payload: bytes) -> None:
        """These exact payload bytes as one frame / WebSocket message (UTF-8 text frames when
        the codec is JSON)."""
        ...

    async def receive(self) -> ServerMessage:
        """The next server message; ``anyio.EndOfStream`` once the server closed."""
        ...

    async def aclose(self) -> None: ...


class FramedConnection:
    """A :class:`RawConnection` over any anyio byte stream using the kernel's 4-byte
    length-prefix framing (the ``unix`` transport's wire format)."""

    def __init__(self, stream: anyio.abc.ByteStream, codec: Codec = "msgpack") -> None:
        self.stream = stream
        self.codec = codec
        self._decoder = FrameDecoder(1 << 30)
        self._pending: deque[bytes] = deque()

    async def __aenter__(self) -> FramedConnection:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def send(self, message: ClientMessage) -> None:
        await self.send_raw(encode(message, self.codec))

    async def send_raw(self, payload: bytes) -> None:
        await self.stream.send(encode_frame(payload))

    async def receive(self) -> ServerMessage:
        while not self._pending:
            try:
                data = await self.stream.receive()
            except CLOSED:
                raise anyio.EndOfStream from None
            self._decoder.receive_data(data)
            self._pending.extend(self._decoder.events_received())
        return decode_server(self._pending.popleft(), self.codec)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Served(msgspec.Struct):
    conductor: Any
    transport: Any
    backend: FakeBackend
    connect: Callable[[], AbstractAsyncContextManager[RawConnection]]


async def _until_closed(conn: RawConnection) -> list[ServerMessage]:
    """Every message until the server closes the connection (hang guard: 10 s)."""
    out: list[ServerMessage] = []
    with anyio.fail_after(10):
        while True:
            try:
                out.append(await conn.receive())
            except CLOSED:
                return out


async def _welcome(conn: RawConnection) -> Welcome:
    await conn.send(Hello(protocol=1, surface="conformance"))
    with anyio.fail_after(10):
        reply = await conn.receive()
    assert isinstance(reply, Welcome), f"hello was answered with {reply!r}"
    return reply


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.005)


class TransportConformance:
    """Mix-in test class; see the module docstring for the two fixtures to override."""

    max_message_bytes = 4096

    @pytest.fixture
    def transport_config(self) -> dict[str, Any]:
        raise NotImplementedError("override `transport_config`: the [transports.NAME] table, with type")

    @pytest.fixture
    def open_connection(self) -> Callable[[Any], AbstractAsyncContextManager[RawConnection]]:
        raise NotImplementedError("override `open_connection`: transport -> async context manager of a RawConnection")

    @pytest.fixture
    async def served(self, transport_config, open_connection) -> AsyncIterator[Served]:
        config = {
            "backends": {"fake": {"type": "fake"}},
            "transports": {"conformance": transport_config},
            "limits": {"max_frame_bytes": self.max_message_bytes},
            "shutdown_grace_s": 0.5,
        }
        async with running_conductor(config) as kernel:
            c = kernel.conductor
            transport = c.transports["conformance"]
            yield Served(c, transport, c.backends["fake"], lambda: open_connection(transport))

    # ------------------------------------------------------------------ handshake

    async def test_hello_is_answered_with_welcome(self, served: Served) -> None:
        async with served.connect() as conn:
            welcome = await _welcome(conn)
            assert welcome.protocol == 1 and welcome.session

    async def test_a_chat_streams_tokens_then_done(self, served: Served) -> None:
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send(Chat("c1", "hi"))
            with anyio.fail_after(10):
                text, tokens, final = await collect(conn, "c1")
            assert text == REPLY and tokens >= 1
            assert isinstance(final, Done) and final.stats.backend == "fake"

    async def test_ping_is_answered_with_pong(self, served: Served) -> None:
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send(ClientPing(41))
            with anyio.fail_after(10):
                assert await conn.receive() == ServerPong(41)

    async def test_first_message_not_hello_is_an_error_and_closes(self, served: Served) -> None:
        async with served.connect() as conn:
            await conn.send(Chat("c1", "hi"))
            messages = await _until_closed(conn)
        assert messages and all(isinstance(m, Error) for m in messages), messages
        assert messages[0].code == ErrorCode.PROTOCOL_MISMATCH
        assert served.backend.requests == 0

    async def test_unsupported_protocol_version_is_refused(self, served: Served) -> None:
        async with served.connect() as conn:
            await conn.send(Hello(protocol=999, surface="conformance"))
            messages = await _until_closed(conn)
        assert [m.code for m in messages if isinstance(m, Error)] == [ErrorCode.PROTOCOL_MISMATCH]

    # ------------------------------------------------------------------ bad input

    async def test_undecodable_message_is_answered_and_the_connection_survives(self, served: Served) -> None:
        async with served.connect() as conn:
            await _welcome(conn)
            for payload in (b"{not a message", encode({"type": "chat"}, conn.codec), encode({"type": "nope"}, conn.codec)):
                await conn.send_raw(payload)
                with anyio.fail_after(10):
                    error = await conn.receive()
                assert isinstance(error, Error) and error.code == ErrorCode.BAD_MESSAGE and error.message, error
            await conn.send(Chat("c1", "still here"))
            with anyio.fail_after(10):
                text, _, final = await collect(conn, "c1")
            assert text == REPLY and isinstance(final, Done)

    async def test_message_of_exactly_the_limit_is_not_too_large(self, served: Served) -> None:
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send_raw(b"{" + b"x" * (self.max_message_bytes - 1))
            with anyio.fail_after(10):
                error = await conn.receive()
            assert isinstance(error, Error) and error.code == ErrorCode.BAD_MESSAGE, error
            await conn.send(ClientPing(1))
            with anyio.fail_after(10):
                assert await conn.receive() == ServerPong(1)

    async def test_oversize_message_closes_the_connection(self, served: Served) -> None:
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send_raw(b"{" + b"x" * self.max_message_bytes)
            messages = await _until_closed(conn)
        errors = [m for m in messages if isinstance(m, Error)]
        assert all(e.code == ErrorCode.TOO_LARGE for e in errors), errors
        await _until(lambda: not served.conductor.connections)
        async with served.connect() as conn:  # the transport still serves
            await _welcome(conn)

    # ------------------------------------------------------------------ cancel and disconnect

    async def test_cancel_ends_the_reply_and_the_backend_stream(self, served: Served) -> None:
        served.backend.push(Script(tokens=WORDS, hang_after=3))
        cancelled = served.backend.cancelled_event
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send(Chat("c1", "go"))
            seen = ""
            with anyio.fail_after(10):
                while seen != "".join(WORDS[:3]):  # tokens may arrive coalesced
                    msg = await conn.receive()
                    assert isinstance(msg, Token), msg
                    seen += msg.text
            await conn.send(Cancel("c1"))
            with anyio.fail_after(10):
                _, _, final = await collect(conn, "c1")
                await cancelled.wait()
            assert isinstance(final, Error) and final.code == ErrorCode.CANCELLED
            assert served.backend.active == 0
            await conn.send(Chat("c2", "again"))  # the connection is still good
            with anyio.fail_after(10):
                text, _, final = await collect(conn, "c2")
            assert isinstance(final, Done)

    async def test_disconnect_mid_reply_closes_the_backend_stream(self, served: Served) -> None:
        served.backend.push(Script(tokens=WORDS, hang_after=1))
        cancelled = served.backend.cancelled_event
        async with served.connect() as conn:
            await _welcome(conn)
            await conn.send(Chat("c1", "go"))
            with anyio.fail_after(10):
                assert isinstance(await conn.receive(), Token)
        with anyio.fail_after(10):
            await cancelled.wait()
        assert served.backend.active == 0
        await _until(lambda: not served.conductor.connections)

    async def test_disconnect_before_hello_leaves_nothing_behind(self, served: Served) -> None:
        async with served.connect():
            pass
        await _until(lambda: not served.conductor.connections)

    async def test_connections_are_isolated(self, served: Served) -> None:
        served.backend.push(Script(tokens=WORDS, hang_after=2))
        async with served.connect() as bad, served.connect() as good:
            await _welcome(bad)
            await _welcome(good)
            await bad.send(Chat("c1", "hang"))
            with anyio.fail_after(10):
                assert isinstance(await bad.receive(), Token)
            await bad.send_raw(b"{" + b"x" * self.max_message_bytes)  # the bad client gets itself closed
            await good.send(Chat("c1", "hi"))  # same chat id, another session
            with anyio.fail_after(10):
                text, _, final = await collect(good, "c1")
            assert text == REPLY and isinstance(final, Done)
            await _until_closed(bad)
