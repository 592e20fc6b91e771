"""The client library over the real Unix transport: streaming, cancel, errors, codecs."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.client import ClientError, ConductorNotRunning, connect_unix
from conductor_core.testing.fakes import Script


async def test_chat_streams_tokens_and_stats(serve_unix):
    async with serve_unix() as s:
        async with connect_unix(s.path) as client:
            assert client.welcome.models == ["fake-1"]
            async with client.chat("hi") as reply:
                pieces = [p async for p in reply]
            assert "".join(pieces) == "Hello from the fake backend."
            assert reply.stats.backend == "fake" and reply.stats.tokens == 5
            assert [m.name for m in await client.models()] == ["fake-1"]
            assert (await client.status()).transports == ["unix"]
            history = await client.history()
            assert [(m.role, m.content) for m in history] == [
                ("user", "hi"),
                ("assistant", "Hello from the fake backend."),
            ]


async def test_json_codec_is_chosen_by_the_first_frame(serve_unix):
    async with serve_unix() as s:
        async with connect_unix(s.path, codec="json") as client:
            assert await client.chat("hi").text() == "Hello from the fake backend."


async def test_leaving_a_reply_early_cancels_it_upstream(serve_unix):
    async with serve_unix() as s:
        s.backend.push(Script(tokens=["a", "b", "c"], hang_after=2))
        async with connect_unix(s.path) as client:
            cancelled = s.backend.cancelled_event
            async with client.chat("hi") as reply:
                async for piece in reply:
                    assert piece.startswith("a")
                    break  # the backend is now stuck after "b": only a cancel can end it
            with anyio.fail_after(5):
                await cancelled.wait()
            assert s.backend.cancelled == 1
            assert await client.chat("again").text() == "Hello from the fake backend."


async def test_errors_are_typed(serve_unix):
    async with serve_unix() as s:
        async with connect_unix(s.path) as client:
            with pytest.raises(ClientError) as info:
                await client.chat("hi", model="no-such-model").text()
            assert info.value.code == "unknown_model"


async def test_not_running(sock_dir):
    with pytest.raises(ConductorNotRunning) as info:
        async with connect_unix(sock_dir / "nothing.sock"):
            pass
    assert str(info.value.message) == (
        f"conductor is not running at {sock_dir / 'nothing.sock'} — start it with `conductor serve`"
    )


async def test_socket_path_from_environment(serve_unix, monkeypatch):
    async with serve_unix() as s:
        monkeypatch.setenv("CONDUCTOR_SOCKET", str(s.path))
        async with connect_unix() as client:
            assert client.welcome is not None
