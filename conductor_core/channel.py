"""What a transport hands the kernel for each connection.

The transport owns the bytes (sockets, framing, encoding, its own auth and connection caps);
the kernel owns the conversation (hello, chats, cancel, heartbeat, rate limits, output
coalescing). The seam between them is this small protocol, so the Unix socket, WebSocket and
in-process test transports differ only in I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .protocol import ClientMessage, ServerMessage

__all__ = ["Channel"]


class Channel(Protocol):
    """One surface connection.

    ``receive`` returns the next decoded message; it raises ``anyio.EndOfStream`` when the peer
    closed cleanly, ``anyio.BrokenResourceError`` when the connection broke, and a
    :class:`~conductor_core.errors.ProtocolViolation` for bad input (the kernel answers with an
    ``error`` and closes the connection if ``exc.fatal``).

    ``send`` writes the messages in order, in as few writes as the transport can (the kernel
    passes everything that queued up while the previous write was in flight). It may block
    while the socket is full; the kernel never lets that stall a backend.
    """

    peer: str

    async def receive(self) -> ClientMessage: ...

    async def send(self, messages: Sequence[ServerMessage]) -> None: ...

    async def aclose(self) -> None: ...
