"""Fixtures: a real conductor kernel (fake backend) serving the ``ws`` transport on a free
loopback port, and small clients that speak the protocol over real sockets."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from conductor_core.protocol import decode_server, encode
from conductor_core.testing.fakes import running_conductor
from websockets.asyncio.client import connect


class Served(msgspec.Struct):
    conductor: Any
    transport: Any
    backend: Any
    port: int
    token: str | None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class WsClient:
    """Protocol messages over a websockets client connection (same shape as the in-process
    ClientEnd, so ``conductor_core.testing.wire`` helpers work)."""

    def __init__(self, ws, codec: str) -> None:
        self.ws = ws
        self.codec = codec

    async def send(self, message) -> None:
        data = encode(message, self.codec)
        await self.ws.send(data, text=self.codec == "json")

    async def send_raw(self, data) -> None:
        await self.ws.send(data)

    async def receive(self):
        data = await self.ws.recv()
        if self.codec == "json":
            assert isinstance(data, str), "JSON must arrive in text frames"
        else:
            assert isinstance(data, bytes), "msgpack must arrive in binary frames"
        return decode_server(data, self.codec)

    async def closed(self) -> tuple[int | None, str]:
        """Read (discarding) until the server closes; the close code and reason it sent."""
        with anyio.fail_after(10):
            try:
                while True:
                    await self.ws.recv()
            except Exception:
                pass
            await self.ws.wait_closed()
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


@pytest.fixture
def serve_ws(tmp_path):
    """``async with serve_ws(transport={...}, limits={...}, backend={...}) as s:``"""

    @asynccontextmanager
    async def serve(*, transport: dict | None = None, limits: dict | None = None, backend: dict | None = None):
        config: dict[str, Any] = {
            "backends": {"fake": {"type": "fake", **(backend or {})}},
            "transports": {"ws": {"type": "ws", "port": 0, "token_file": str(tmp_path / "ws.token"), **(transport or {})}},
            "shutdown_grace_s": 1.0,
        }
        if limits:
            config["limits"] = limits
        async with running_conductor(config) as kernel:
            t = kernel.conductor.transports["ws"]
            yield Served(kernel.conductor, t, kernel.conductor.backends["fake"], t.port, t.token)

    return serve


@pytest.fixture
def ws_client():
    """``async with ws_client(served, token=..., origin=..., codec=...) as client:``"""

    @asynccontextmanager
    async def open_client(
        served: Served,
        *,
        codec: str = "json",
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
        **kwargs,
    ):
        subprotocols = ["conductor.msgpack"] if codec == "msgpack" else None
        async with connect(
            served.ws_url + query,
            origin=origin,
            additional_headers=headers,
            subprotocols=subprotocols,
            compression=None,
            open_timeout=10,
            **kwargs,
        ) as ws:
            yield WsClient(ws, codec)

    return open_client


class RawHttp:
    """Hand-written HTTP/1.1 requests, for headers a real client would not send (a forged
    ``Host``, a bare TCP connection that never finishes its handshake)."""

    @staticmethod
    async def send(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send raw request bytes, read the whole response: (status, headers, body)."""
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            data = b""
            with anyio.fail_after(10):
                try:
                    while True:
                        data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body

    @staticmethod
    def get(path: str, host: str, **headers: str) -> bytes:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @staticmethod
    def upgrade(path: str, host: str, **headers: str) -> bytes:
        return RawHttp.get(
            path,
            host,
            Upgrade="websocket",
            Connection="Upgrade",
            Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==",
            Sec_WebSocket_Version="13",
            **headers,
        )


@pytest.fixture
def raw_http() -> type[RawHttp]:
    return RawHttp
