"""The kernel's :class:`~conductor_core.channel.Channel` over one ``websockets`` connection.

One protocol message per WebSocket message: JSON in text frames by default (a browser needs no
library), msgpack in binary frames when the client negotiated the ``conductor.msgpack``
subprotocol. A frame of the other kind, or one that does not decode, is a
:class:`~conductor_core.errors.BadMessage` (the kernel answers ``error{bad_message}`` and
carries on). A message over the size limit makes ``websockets`` close the connection with
1009 before reading its body; that surfaces here as :class:`~conductor_core.errors.TooLarge`.

The close code is chosen in one place, :func:`close_code`, from the last thing the kernel
said before closing (see docs/transport-ws.md for the table).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import anyio
from conductor_core.errors import BadMessage, ErrorCode, TooLarge
from conductor_core.protocol import ClientMessage, Codec, Error, ServerMessage, ServerPing, Welcome, decode_client, encode
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import CloseCode
from websockets.protocol import State

__all__ = ["MSGPACK_SUBPROTOCOL", "JSON_SUBPROTOCOL", "WsCloseCode", "WsChannel", "close_code"]

MSGPACK_SUBPROTOCOL = "conductor.msgpack"
JSON_SUBPROTOCOL = "conductor.json"


class WsCloseCode(enum.IntEnum):
    """Close codes the conductor sends (RFC 6455 codes where one fits, else 4000 + HTTP-like)."""

    NORMAL = 1000  # the conversation ended without error
    GOING_AWAY = 1001  # the conductor is shutting down
    TOO_BIG = 1009  # a message over max_message_bytes (sent by websockets itself)
    INTERNAL = 1011  # keepalive ping timeout (websockets) or an unexpected error
    TRY_AGAIN_LATER = 1013  # the client read too slowly and fell behind the output bound
    PROTOCOL = 4400  # the first message was not a valid hello, or the version is unsupported
    UNAUTHORIZED = 4401  # missing or wrong token in hello
    TIMEOUT = 4408  # no hello in time, or no answer to the heartbeat pings


_BY_ERROR = {
    ErrorCode.SHUTTING_DOWN: (WsCloseCode.GOING_AWAY, "conductor shutting down"),
    ErrorCode.TOO_LARGE: (WsCloseCode.TOO_BIG, "message too big"),
    ErrorCode.UNAUTHORIZED: (WsCloseCode.UNAUTHORIZED, "unauthorized"),
    ErrorCode.PROTOCOL_MISMATCH: (WsCloseCode.PROTOCOL, "protocol error"),
}


def close_code(last_error: Error | None, *, welcomed: bool, got_message: bool, pings_unanswered: int) -> tuple[int, str]:
    """The close code and reason for a close the kernel decided.

    The kernel's last word explains the close: a fatal ``error`` (``overloaded`` without retry
    is the kernel's "client too slow"), any error before ``welcome`` (a failed handshake), else
    unanswered heartbeat pings. A ``protocol_mismatch`` before any message arrived is the hello
    timeout.
    """
    if last_error is not None:
        code = last_error.code
        if code == ErrorCode.PROTOCOL_MISMATCH and not got_message:
            return WsCloseCode.TIMEOUT, "no hello in time"
        if code == ErrorCode.OVERLOADED and not last_error.retryable:
            return WsCloseCode.TRY_AGAIN_LATER, "client too slow"
        if code in _BY_ERROR:
            return _BY_ERROR[code]
        if not welcomed:  # e.g. an undecodable first message
            return WsCloseCode.PROTOCOL, "protocol error"
    if pings_unanswered:
        return WsCloseCode.TIMEOUT, "heartbeat timeout"
    return WsCloseCode.NORMAL, ""


class WsChannel:
    """One connection's codec and close code. ``receive`` and ``send`` may run concurrently."""

    def __init__(self, ws, *, codec: Codec, max_message_bytes: int, close_timeout: float, peer: str) -> None:
        self.ws = ws
        self.codec: Codec = codec
        self.peer = peer
        self._max = max_message_bytes
        self._close_timeout = close_timeout
        self._text = codec == "json"
        self._last_error: Error | None = None
        self._welcomed = False
        self._got_message = False
        self._pings = 0  # heartbeat pings sent since the client last said anything
        self._closed = False

    def __repr__(self) -> str:
        return f"<WsChannel {self.peer} codec={self.codec}>"

    async def receive(self) -> ClientMessage:
        try:
            data = await self.ws.recv()
        except ConnectionClosedOK:
            raise anyio.EndOfStream from None
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                raise TooLarge(f"a message was larger than {self._max} bytes; closed with 1009") from None
            raise anyio.BrokenResourceError from exc
        self._got_message = True
        self._pings = 0
        if isinstance(data, str) != self._text:
            if self._text:
                raise BadMessage(
                    "binary frame on a JSON connection: send JSON in text frames, "
                    f"or negotiate the {MSGPACK_SUBPROTOCOL} subprotocol"
                )
            raise BadMessage(f"text frame on a {MSGPACK_SUBPROTOCOL} connection: send msgpack in binary frames")
        return decode_client(data, self.codec)  # raises BadMessage saying what and where

    async def send(self, messages: Sequence[ServerMessage]) -> None:
        ws, codec, text = self.ws, self.codec, self._text
        try:
            for message in messages:
                kind = type(message)
                if kind is Error:
                    self._last_error = message
                elif kind is ServerPing:
                    self._pings += 1
                elif kind is Welcome:
                    self._welcomed = True
                # JSON bytes go out as a text frame as they are: no str round trip
                await ws.send(encode(message, codec), text=text)
        except ConnectionClosed:
            raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        """Close with the code that explains why; abort the TCP connection if the peer does
        not complete the closing handshake in time (a stalled tab must not pin the socket)."""
        if self._closed:
            return
        self._closed = True
        code, reason = close_code(
            self._last_error, welcomed=self._welcomed, got_message=self._got_message, pings_unanswered=self._pings
        )
        try:
            with anyio.move_on_after(self._close_timeout):
                await self.ws.close(code, reason)
        finally:
            if self.ws.state is not State.CLOSED:
                self.ws.transport.abort()
