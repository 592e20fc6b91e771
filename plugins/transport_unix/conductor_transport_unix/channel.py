"""The kernel's :class:`~conductor_core.channel.Channel` over one accepted Unix-socket stream.

A thin shell around the sans-I/O :class:`~conductor_core.framing.FrameDecoder`: bytes in, whole
payloads out, decoded with the codec the client chose. The codec is decided once, by the first
payload byte of the first frame: ``{`` (after optional JSON whitespace) means JSON, anything
else msgpack (a msgpack ``hello`` is a map, whose first byte is 0x80-0x8F or 0xDE/0xDF, never
``{`` = 0x7B, which msgpack reads as the integer 123). Outgoing messages are encoded in the
client's codec and a whole batch goes out in one socket write, without a trip through the
event loop when the socket can take it.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.abc

from conductor_core.framing import HEADER_SIZE, FrameDecoder, encode_frame
from conductor_core.protocol import ClientMessage, Codec, ServerMessage, decode_client, encode

__all__ = ["UnixChannel", "sniff_codec"]

_JSON_SPACE = b" \t\r\n"
READ_SIZE = 65536


def sniff_codec(first_payload_bytes: bytes) -> Codec:
    """``json`` if the first frame's payload starts with ``{`` (after whitespace), else msgpack."""
    return "json" if first_payload_bytes.lstrip(_JSON_SPACE)[:1] == b"{" else "msgpack"


class UnixChannel:
    """One connection's framing and codec. Not shared between tasks except send vs receive."""

    def __init__(self, stream: anyio.abc.ByteStream, *, max_frame_bytes: int, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.codec: Codec | None = None  # decided by the first frame
        self._decoder = FrameDecoder(max_frame_bytes)
        self._pending: list[bytes] = []  # a list, not a deque: idle connections are measured
        self._head = bytearray()  # the first bytes received, until the codec is known
        self._closed = False
        self._sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    def __repr__(self) -> str:
        return f"<UnixChannel {self.peer} codec={self.codec}>"

    async def receive(self) -> ClientMessage:
        while not self._pending:
            try:
                data = await self.stream.receive(READ_SIZE)
            except anyio.ClosedResourceError:
                raise anyio.EndOfStream from None
            if self.codec is None:
                self._sniff(data)
            self._decoder.receive_data(data)  # raises TooLarge on an oversized length prefix
            self._pending = self._decoder.events_received()
        payload = self._pending.pop(0)
        return decode_client(payload, self.codec or "msgpack")  # raises BadMessage

    def _sniff(self, data: bytes) -> None:
        self._head += data[: HEADER_SIZE + 16]
        body = bytes(self._head[HEADER_SIZE:])
        if body.lstrip(_JSON_SPACE):
            self.codec = sniff_codec(body)
            self._head.clear()
        elif len(self._head) >= HEADER_SIZE + 16:
            self.codec = "msgpack"  # a first frame of nothing but whitespace: not JSON either
            self._head.clear()

    async def send(self, messages: Sequence[ServerMessage]) -> None:
        codec = self.codec or "msgpack"
        data = b"".join([encode_frame(encode(m, codec)) for m in messages])
        # The kernel's one writer task per connection is the only sender, so no lock. The bytes
        # go straight to the non-blocking socket: anyio's send() yields to the loop *before*
        # writing (a checkpoint), which put every token behind all other ready tasks. anyio's
        # Unix stream has no buffer of its own, so writing the head here and letting send()
        # wait for writability with the rest keeps the order.
        sent = 0
        if self._sock is not None and not self._closed:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
        if sent < len(data):
            try:
                await self.stream.send(data[sent:] if sent else data)
            except anyio.ClosedResourceError:
                raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.stream.aclose()
