"""The ``ws`` transport passes the transport conformance suite over real sockets, with the
websockets client speaking JSON text frames and the ``conductor.msgpack`` subprotocol."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
import pytest
from conductor_core.protocol import decode_server, encode
from conductor_core.testing.conformance import TransportConformance
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


class WsConnection:
    """A RawConnection over a websockets client connection: one message per WebSocket message."""

    def __init__(self, ws, codec: str) -> None:
        self.ws = ws
        self.codec = codec

    async def send(self, message) -> None:
        await self.send_raw(encode(message, self.codec))

    async def send_raw(self, payload: bytes) -> None:
        await self.ws.send(payload, text=self.codec == "json")

    async def receive(self):
        try:
            return decode_server(await self.ws.recv(), self.codec)
        except ConnectionClosed:
            raise anyio.EndOfStream from None

    async def aclose(self) -> None:
        await self.ws.close()


class TestWsConformance(TransportConformance):
    codec = "json"

    @pytest.fixture
    def transport_config(self):
        return {"type": "ws", "port": 0, "auth": "none", "token_file": "", "max_message_bytes": self.max_message_bytes}

    @pytest.fixture
    def open_connection(self):
        subprotocols = ["conductor.msgpack"] if self.codec == "msgpack" else None

        @asynccontextmanager
        async def open_ws(transport):
            url = f"ws://127.0.0.1:{transport.port}/"
            async with connect(url, subprotocols=subprotocols, compression=None, open_timeout=10, max_size=None) as ws:
                yield WsConnection(ws, self.codec)

        return open_ws


class TestWsMsgpackConformance(TestWsConformance):
    codec = "msgpack"
