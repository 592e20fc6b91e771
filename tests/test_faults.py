"""Faults across the whole daemon (issue 11): a backend that hangs, breaks, floods or drips, a
storm of 503s and 429s over two backends, clients that stall, and the process being stopped.

Faults already covered per component are not repeated here; docs/reliability.md lists them
with these. Backends are real HTTP: the Ollama emulator, or :func:`raw_backend`, a loopback
server that answers the model list and then plays a byte script for the chat request (for what
the emulator cannot do on purpose: a line cut in half, a 100 MB line, an endless stream).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from conductor_core.client import Backoff, ClientError, ConductorNotRunning, connect_unix
from conductor_core.errors import ErrorCode
from conductor_core.framing import encode_frame
from conductor_core.protocol import Chat, Done, Error, Hello, Welcome, encode
from conductor_core.testing.fakes import running_conductor
from conductor_core.testing.http11 import Response
from conductor_core.testing.ollama_emulator import Fault, OllamaEmulator
from conductor_core.testing.wire import collect, handshake

ROOT = Path(__file__).resolve().parents[1]
Script = Callable[[anyio.abc.SocketStream, "RawStats"], Awaitable[None]]

# ---------------------------------------------------------------------------------- helpers


class RawStats:
    def __init__(self) -> None:
        self.sent = 0  # body bytes written by the chat script
        self.closed_by_peer = anyio.Event()


@asynccontextmanager
async def raw_backend(script: Script, *, flavour: str = "ollama"):
    """A loopback HTTP/1.1 server: model lists are answered, the chat request gets ``script``."""
    stats = RawStats()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += await stream.receive()
                    head, _, body = head.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += await stream.receive()
                    path = head.split(b" ")[1]
                    if path in (b"/api/chat", b"/v1/chat/completions"):
                        kind = b"application/x-ndjson" if flavour == "ollama" else b"text/event-stream"
                        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nConnection: close\r\n\r\n")
                        await script(stream, stats)
                        return
                    listing = (b'{"models":[{"name":"m:latest","model":"m:latest"}]}' if flavour == "ollama"
                               else b'{"object":"list","data":[{"id":"m:latest","object":"model"}]}')
                    if path == b"/api/version":
                        listing = b'{"version":"0.12.6"}'
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                      + str(len(listing)).encode() + b"\r\n\r\n" + listing)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                stats.closed_by_peer.set()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://127.0.0.1:{port}", stats
        finally:
            tg.cancel_scope.cancel()


def ollama_line(text: str) -> bytes:
    import json

    return json.dumps({"model": "m", "message": {"role": "assistant", "content": text}, "done": False}).encode() + b"\n"


def backend_config(url: str, *, flavour: str = "ollama", between_chunks: float = 5.0, **limits) -> dict:
    table = {"type": "openai" if flavour == "openai_compat" else flavour, "url": url, "timeouts": {"between_chunks": between_chunks}}
    if flavour == "ollama":
        table["keep_alive"] = "5m"
    else:
        table["default_model"] = "m:latest"
        table["base_url"] = url + "/v1"
        del table["url"]
    config = {"backends": {"x": table}, "shutdown_grace_s": 0.5}
    if limits:
        config["limits"] = limits
    return config


async def chat_once(config: dict, content: str = "hi", model: str | None = "m:latest"):
    async with running_conductor(config) as kernel, kernel.connect() as client:
        assert isinstance(await handshake(client), Welcome)
        await client.send(Chat("c1", content, model=model))
        with anyio.fail_after(30):
            return await collect(client, "c1")


# ------------------------------------------------------------------ a backend that hangs


@pytest.mark.parametrize("fault", [Fault(hang_before_first_byte=True), Fault(hang_after=2)], ids=["before-first-byte", "between-chunks"])
async def test_fault_hang_fires_the_timeout_names_it_and_closes_upstream(fault):
    async with OllamaEmulator(models=["m"]) as emu:
        emu.model("m").fault = fault
        config = backend_config(emu.url, between_chunks=0.3)
        text, _, final = await chat_once(config)
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert "timeouts.between_chunks" in final.message and "0.3" in final.message
        assert text == ("" if fault.hang_before_first_byte else "Emulated reply")
        with anyio.fail_after(5):  # the upstream connection was closed, not left hanging
            await emu.wait_until(lambda s: s.streams_cancelled == 1)


# ------------------------------------------------------------ a backend that breaks a line


async def test_fault_backend_closes_mid_line_is_backend_error_keeping_the_text_before():
    async def script(stream, stats):
        await stream.send(ollama_line("Hello") + ollama_line(" world") + b'{"model":"m","message":{"role":"assis')

    async with raw_backend(script) as (url, _):
        text, _, final = await chat_once(backend_config(url))
    assert text == "Hello world"
    assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR


@pytest.mark.parametrize("flavour", ["ollama", "openai_compat"])
async def test_fault_invalid_utf8_from_the_backend_is_backend_error_not_internal(flavour):
    """Found by the fuzzer: msgspec raises UnicodeDecodeError for a non-UTF-8 string."""

    async def script(stream, stats):
        if flavour == "ollama":
            await stream.send(b'{"model":"m","message":{"role":"assistant","content":"\xff"},"done":false}\n')
        else:
            await stream.send(b'data: {"choices":[{"delta":{"content":"\xff"}}]}\n\n')

    async with raw_backend(script, flavour=flavour) as (url, _):
        _, _, final = await chat_once(backend_config(url, flavour=flavour))
    assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR, final


# ------------------------------------------------- a backend that floods: 100 MB, endless


@pytest.mark.parametrize("flavour", ["ollama", "openai_compat"])
async def test_fault_100_mb_line_without_newline_is_capped(flavour):
    chunk = b"x" * (1 << 20)

    async def script(stream, stats):
        if flavour == "openai_compat":
            await stream.send(b"data: ")
        for _ in range(100):
            await stream.send(chunk)
            stats.sent += len(chunk)

    async with raw_backend(script, flavour=flavour) as (url, stats):
        _, _, final = await chat_once(backend_config(url, flavour=flavour))
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert "longer than" in final.message
        # the conductor gave up at its cap (16 MiB NDJSON, 4 MiB SSE) and closed the connection
        assert stats.sent < 40 << 20


async def test_fault_endless_sse_event_without_blank_line_is_capped():
    async def script(stream, stats):
        line = b"data: " + b"y" * 1000 + b"\n"
        while stats.sent < 100 << 20:
            await stream.send(line * 64)
            stats.sent += len(line) * 64

    async with raw_backend(script, flavour="openai_compat") as (url, stats):
        _, _, final = await chat_once(backend_config(url, flavour="openai_compat"))
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert "event longer than" in final.message
        assert stats.sent < 40 << 20


async def test_fault_endless_stream_over_http_is_cut_at_max_reply_pieces_and_closed():
    async def script(stream, stats):
        line = ollama_line(" tok")
        while True:
            await stream.send(line * 50)
            stats.sent += len(line) * 50

    async with raw_backend(script) as (url, stats):
        text, _, final = await chat_once(backend_config(url, max_reply_pieces=1000))
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert "limits.max_reply_pieces" in final.message
        assert text.count(" tok") == 1001  # the pieces sent stay sent; nothing more
        with anyio.fail_after(5):
            await stats.closed_by_peer.wait()


# ------------------------------------------------------- 503 storms and 429s, two backends


class HeaderEmulator(OllamaEmulator):
    """Adds ``Retry-After`` to its 429 and 503 answers."""

    retry_after: str | None = None

    def prepare(self, *args, **kwargs):
        gen = super().prepare(*args, **kwargs)
        if isinstance(gen, Response) and gen.status in (429, 503) and self.retry_after is not None:
            gen.headers = {"Retry-After": self.retry_after}
        return gen


def two_backends(a: str, b: str) -> dict:
    table = lambda url: {"type": "ollama", "url": url, "keep_alive": "5m"}  # noqa: E731
    return {
        "backends": {"a": table(a), "b": table(b)},
        "router": {"type": "health", "probe_interval_s": 60, "failure_threshold": 2, "open_s": 30},
        "shutdown_grace_s": 0.5,
    }


async def chats(config: dict, n: int) -> list:
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        out = []
        for i in range(n):
            await client.send(Chat(f"c{i}", f"question {i}", model="m", conversation=f"k{i}"))
            with anyio.fail_after(20):
                out.append(await collect(client, f"c{i}"))
        return out


async def test_fault_503_storm_on_one_backend_every_client_is_served_by_the_other():
    async with HeaderEmulator(models=["m"]) as a, HeaderEmulator(models=["m"]) as b:
        a.model("m").fault = Fault(status=503)
        results = await chats(two_backends(a.url, b.url), 12)
        assert all(isinstance(final, Done) and final.stats.backend == "b" for _, _, final in results)
        assert a.stats.statuses[503] <= 3  # the breaker opened: the storm stopped being tried


async def test_fault_503_storm_on_both_is_backend_unavailable_with_retry_after():
    async with HeaderEmulator(models=["m"]) as a, HeaderEmulator(models=["m"]) as b:
        for emu in (a, b):
            emu.model("m").fault = Fault(status=503)
            emu.retry_after = "3"
        results = await chats(two_backends(a.url, b.url), 4)
        for _, _, final in results:
            assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_UNAVAILABLE and final.retryable
            assert final.retry_after_ms == 3000


async def test_fault_429_with_retry_after_cools_that_backend_and_the_other_serves():
    async with HeaderEmulator(models=["m"]) as a, HeaderEmulator(models=["m"]) as b:
        a.model("m").fault = Fault(status=429)
        a.retry_after = "30"
        results = await chats(two_backends(a.url, b.url), 6)
        assert all(isinstance(final, Done) for _, _, final in results)
        assert a.stats.statuses[429] == 1  # cooled for Retry-After after the first answer


async def test_fault_429_on_both_is_rate_limited_with_retry_after_ms():
    async with HeaderEmulator(models=["m"]) as a, HeaderEmulator(models=["m"]) as b:
        for emu in (a, b):
            emu.model("m").fault = Fault(status=429)
            emu.retry_after = "2"
        (_, _, final), = await chats(two_backends(a.url, b.url), 1)
        assert isinstance(final, Error) and final.code == ErrorCode.RATE_LIMITED and final.retryable
        assert final.retry_after_ms == 2000


# ------------------------------------------------------------------ clients that stall


@asynccontextmanager
async def unix_kernel(limits: dict, backend: dict | None = None):
    directory = Path(tempfile.mkdtemp(prefix="cf-"))
    sock = directory / "run" / "c.sock"
    config = {
        "backends": {"fake": {"type": "fake", **(backend or {})}},
        "transports": {"unix": {"type": "unix", "path": str(sock)}},
        "limits": limits,
        "shutdown_grace_s": 0.5,
    }
    try:
        async with running_conductor(config) as kernel:
            yield kernel, sock
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _closed_within(stream: anyio.abc.ByteStream, seconds: float) -> bytes:
    data = b""
    with anyio.fail_after(seconds):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data


async def test_fault_slowloris_hello_one_byte_at_a_time_is_closed_by_the_hello_timeout_others_unaffected():
    async with unix_kernel({"hello_timeout_s": 1.0}) as (kernel, sock):
        frame = encode_frame(encode(Hello(1, surface="slow")))
        slow = await anyio.connect_unix(sock)
        async with anyio.create_task_group() as tg:

            async def drip() -> None:
                try:
                    for byte in frame:
                        await slow.send(bytes([byte]))
                        await anyio.sleep(0.25)
                except (anyio.BrokenResourceError, OSError):
                    pass

            tg.start_soon(drip)
            async with connect_unix(sock) as good:  # a normal client meanwhile
                assert await good.chat("hello").text() == "Hello from the fake backend."
            data = await _closed_within(slow, 5)
            assert b"protocol_mismatch" in data and b"no hello within 1 s" in data
            tg.cancel_scope.cancel()
        await slow.aclose()


async def test_fault_slowloris_after_hello_is_closed_by_the_heartbeat():
    limits = {"heartbeat_interval_s": 0.3, "heartbeat_timeout_s": 0.3, "heartbeat_misses": 1}
    async with unix_kernel(limits) as (kernel, sock):
        stream = await anyio.connect_unix(sock)
        try:
            await stream.send(encode_frame(encode(Hello(1, surface="slow"))))
            frame = encode_frame(encode(Chat("c1", "x" * 100)))
            closed = False
            with anyio.fail_after(10):
                for byte in frame:  # a frame that never completes: no message, so no pong either
                    try:
                        await stream.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        closed = True
                        break
                    await anyio.sleep(0.1)
            if not closed:
                await _closed_within(stream, 5)
            # the server closes the socket just before it forgets the connection: wait for that
            with anyio.fail_after(5):
                while kernel.conductor.connections:
                    await anyio.sleep(0.01)
        finally:
            await stream.aclose()


# --------------------------------------------------------------------- process signals


def _serve(config: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "conductor_core", "serve", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def _wait_socket(path: Path, proc: subprocess.Popen, log: Path) -> None:
    with anyio.fail_after(30):
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                await (await anyio.connect_unix(path)).aclose()
                return
            except OSError:
                await anyio.sleep(0.02)


def _config_file(directory: Path, url: str, ws_port: int | None = None, grace: float = 1.5) -> Path:
    lines = [
        f"shutdown_grace_s = {grace}",
        "[backends.emu]", 'type = "ollama"', f'url = "{url}"', "max_connections = 128", "[transports.unix]", 'type = "unix"',
        f'path = "{directory}/run/c.sock"', 'auth = "token"', "max_connections = 512", "max_connections_per_uid = 512",
        "[limits]", "max_chats_per_connection = 8",
    ]
    if ws_port is not None:
        lines += ["[transports.web]", 'type = "ws"', f"port = {ws_port}", f'token_file = "{directory}/run/ws.token"']
    path = directory / "conductor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(90)
async def test_fault_sigterm_with_100_streams_drains_short_ones_ends_the_rest_and_cleans_up():
    directory = Path(tempfile.mkdtemp(prefix="cs-"))
    ws_port = _free_port()
    log = directory / "serve.log"
    try:
        async with OllamaEmulator(models=["m"], token_delay=0.05) as emu:
            config = _config_file(directory, emu.url, ws_port=ws_port, grace=3.0)
            sock = directory / "run" / "c.sock"
            proc = _serve(config, log)
            try:
                await _wait_socket(sock, proc, log)
                assert (directory / "run" / "c.sock.token").exists() or list((directory / "run").glob("*token*"))
                results: dict[str, object] = {}
                started = anyio.Event()
                streaming = 0

                async def one(i: int) -> None:
                    nonlocal streaming
                    short = i % 2 == 0  # 20 tokens (1 s) vs 1000 tokens (50 s)
                    async with connect_unix(sock) as client:
                        async with client.chat(f"q{i}", options={"num_predict": 20 if short else 1000}) as reply:
                            try:
                                async for _ in reply:
                                    if not getattr(reply, "_counted", False):
                                        reply._counted = True
                                        streaming += 1
                                        if streaming == 100:
                                            started.set()
                                results[f"{'short' if short else 'long'}{i}"] = "done"
                            except ClientError as exc:
                                results[f"{'short' if short else 'long'}{i}"] = exc.code

                async with anyio.create_task_group() as tg:
                    for i in range(100):
                        tg.start_soon(one, i)
                    with anyio.fail_after(30):
                        await started.wait()
                    proc.send_signal(signal.SIGTERM)
                    sent_at = anyio.current_time()
                    with anyio.fail_after(20):
                        code = await anyio.to_thread.run_sync(proc.wait)
                    took = anyio.current_time() - sent_at
                assert code == 0, log.read_text()
                assert took < 3.0 + 4, took  # the grace period plus closing, not the 50 s of the long replies
                shorts = [v for k, v in results.items() if k.startswith("short")]
                longs = [v for k, v in results.items() if k.startswith("long")]
                assert shorts == ["done"] * 50, results
                assert longs == ["shutting_down"] * 50, results
                assert not sock.exists()
                assert not list((directory / "run").glob("*token*")), list((directory / "run").iterdir())
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(90)
async def test_fault_sigkill_leaves_a_stale_socket_the_next_start_replaces_and_the_client_reconnects():
    directory = Path(tempfile.mkdtemp(prefix="ck-"))
    log = directory / "serve.log"
    try:
        async with OllamaEmulator(models=["m"]) as emu:
            config = _config_file(directory, emu.url)
            sock = directory / "run" / "c.sock"
            proc = _serve(config, log)
            try:
                await _wait_socket(sock, proc, log)
                async with connect_unix(sock) as client:
                    assert await client.chat("before", model="m").text() == "Emulated reply to: before"
                    os.killpg(proc.pid, signal.SIGKILL)
                    await anyio.to_thread.run_sync(proc.wait)
                    with anyio.fail_after(5):
                        await client.closed.wait()
                assert sock.exists()  # SIGKILL: nobody removed it
                with pytest.raises(ConductorNotRunning):
                    async with connect_unix(sock):
                        pass
                with pytest.raises(ConductorNotRunning):  # retry gives up after total_s
                    async with connect_unix(sock, retry=Backoff(initial_s=0.01, total_s=0.2)):
                        pass
                reconnected: list[str] = []

                async def reconnect() -> None:
                    async with connect_unix(sock, retry=Backoff(initial_s=0.02, max_s=0.2, total_s=30)) as again:
                        reconnected.append(await again.chat("after", model="m").text())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(reconnect)
                    await anyio.sleep(0.3)  # the client is retrying against the stale socket
                    proc = _serve(config, log)
                    await _wait_socket(sock, proc, log)
                assert reconnected == ["Emulated reply to: after"]
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    await anyio.to_thread.run_sync(proc.wait)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_fault_backoff_delays_grow_with_jitter_up_to_the_cap():
    delays = Backoff(initial_s=0.1, max_s=1.0, factor=2.0).delays()
    got = [next(delays) for _ in range(8)]
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(step / 2 <= d <= step for d, step in zip(got, steps)), got


# --------------------------------------------------------------------- bounded history


async def test_fault_stored_history_is_bounded_per_conversation_oldest_turns_dropped():
    """Found by the soak: every message was kept forever (only the window sent was bounded)."""
    from conductor_core.protocol import HistoryReply, HistoryRequest

    config = {"backends": {"fake": {"type": "fake"}}, "history": {"max_stored_messages": 4}, "shutdown_grace_s": 0.5}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        for i in range(5):
            await client.send(Chat(f"c{i}", f"q{i}"))
            _, _, final = await collect(client, f"c{i}")
            assert isinstance(final, Done)
        await client.send(HistoryRequest("default"))
        reply = await client.receive()
        assert isinstance(reply, HistoryReply)
        assert [m.content for m in reply.messages if m.role == "user"] == ["q3", "q4"]
        assert len(reply.messages) == 4


async def test_fault_conversations_per_session_are_capped_with_rate_limited():
    config = {"backends": {"fake": {"type": "fake"}}, "history": {"max_conversations": 3}, "shutdown_grace_s": 0.5}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        await handshake(client)
        for i in range(4):
            await client.send(Chat(f"c{i}", "hi", conversation=f"k{i}"))
            _, _, final = await collect(client, f"c{i}")
            if i < 3:
                assert isinstance(final, Done)
        assert isinstance(final, Error) and final.code == ErrorCode.RATE_LIMITED
        assert "3 conversations" in final.message
