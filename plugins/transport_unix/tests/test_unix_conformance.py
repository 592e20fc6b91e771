"""The ``unix`` transport passes the transport conformance suite over a real socket, with
clients speaking msgpack and JSON frames."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
import pytest
from conductor_core.testing.conformance import FramedConnection, TransportConformance


class TestUnixConformance(TransportConformance):
    codec = "msgpack"

    @pytest.fixture
    def transport_config(self, sock_dir):
        return {"type": "unix", "path": str(sock_dir / "run" / "c.sock")}

    @pytest.fixture
    def open_connection(self):
        @asynccontextmanager
        async def open_unix(transport):
            async with FramedConnection(await anyio.connect_unix(transport.path), self.codec) as conn:
                yield conn

        return open_unix


class TestUnixJsonConformance(TestUnixConformance):
    codec = "json"
