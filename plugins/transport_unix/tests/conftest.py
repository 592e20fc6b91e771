"""Fixtures: a real conductor kernel (fake backend) serving a real Unix socket in a short,
private temporary directory (socket paths are limited to ~107 bytes, so not pytest's tmp_path)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conductor_core.testing.fakes import running_conductor


class Served(msgspec.Struct):
    conductor: Any
    inproc: Any
    path: Path
    transport: Any
    backend: Any


@pytest.fixture
def sock_dir():
    directory = Path(tempfile.mkdtemp(prefix="cu-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def serve_unix(sock_dir):
    """``async with serve_unix(transport={...}, limits={...}, backend={...}) as s:``"""

    @asynccontextmanager
    async def serve(*, transport: dict | None = None, limits: dict | None = None, backend: dict | None = None, path: Path | None = None):
        sock = path or sock_dir / "run" / "c.sock"
        config = {
            "backends": {"fake": {"type": "fake", **(backend or {})}},
            "transports": {"unix": {"type": "unix", "path": str(sock), **(transport or {})}},
            "limits": limits or {},
            "shutdown_grace_s": 0.5,
        }
        async with running_conductor(config) as inproc:
            c = inproc.conductor
            yield Served(c, inproc, sock, c.transports["unix"], c.backends["fake"])

    return serve
