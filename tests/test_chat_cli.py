"""`conductor chat` / `models` / `status` as a user runs them: a real `conductor` process
talking over the real Unix socket to a kernel (with a fake backend) running in the test,
driven through a pseudo-terminal with pexpect for the interactive mode."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pexpect
import pytest

from conductor_core.testing.fakes import Script, running_conductor

CONDUCTOR = str(Path(sys.executable).with_name("conductor"))
ENV = {**os.environ, "TERM": "dumb", "NO_COLOR": "1"}
ENV.pop("CONDUCTOR_SOCKET", None)


@pytest.fixture
def sock_path():
    directory = Path(tempfile.mkdtemp(prefix="cc-"))
    try:
        yield directory / "run" / "c.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def serving(sock_path, **backend):
    config = {
        "backends": {"fake": {"type": "fake", **backend}},
        "transports": {"unix": {"type": "unix", "path": str(sock_path)}},
        "shutdown_grace_s": 0.5,
    }
    async with running_conductor(config) as inproc:
        yield inproc.conductor.backends["fake"]


async def run_cli(*args, stdin: bytes | None = None):
    return await anyio.run_process([CONDUCTOR, *args], input=stdin, check=False, env=ENV)


async def test_one_shot(sock_path):
    async with serving(sock_path):
        result = await run_cli("chat", "--socket", str(sock_path), "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello from the fake backend.\n"


async def test_piped_stdin(sock_path):
    async with serving(sock_path, echo=True) as backend:
        result = await run_cli("chat", "--socket", str(sock_path), stdin=b"what is piped in\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"what is piped in\n"
    assert backend.requests_seen[0].messages[-1].content == "what is piped in\n"


async def test_escape_sequences_are_stripped(sock_path):
    async with serving(sock_path) as backend:
        backend.push(Script(tokens=["safe\x1b]0;evil title", "\x07 and\x1b[2J", "\x1b[", "31m red\x9b0m"]))
        result = await run_cli("chat", "--socket", str(sock_path), "hi")
    assert result.stdout == b"safe and red\n"


async def test_avatar_tags_split_across_tokens_never_reach_the_terminal(sock_path):
    """The system we re-imagine leaked a tag split across two tokens into the text."""
    async with serving(sock_path) as backend:
        backend.push(Script(tokens=["Hi", " [yo", "lla:mo", "od hap", "py] there", " [yolla:wave]", "!"]))
        result = await run_cli("chat", "--socket", str(sock_path), "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hi  there !\n"  # exactly the text with the tags cut out


async def test_not_running(sock_path):
    result = await run_cli("chat", "--socket", str(sock_path), "hello")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"conductor is not running at {sock_path} — start it with `conductor serve`\n"
    )


async def test_errors_are_one_line_and_exit_nonzero(sock_path):
    async with serving(sock_path):
        result = await run_cli("chat", "--socket", str(sock_path), "--model", "nope", "hi")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conductor: unknown_model:"), lines


async def test_json_and_stats(sock_path):
    async with serving(sock_path):
        result = await run_cli("chat", "--socket", str(sock_path), "--json", "hi")
        stats = await run_cli("chat", "--socket", str(sock_path), "--stats", "hi")
        models = await run_cli("models", "--socket", str(sock_path), "--json")
        status = await run_cli("status", "--socket", str(sock_path))
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert {e["type"] for e in events} == {"token", "done"}
    assert "".join(e["text"] for e in events if e["type"] == "token") == "Hello from the fake backend."
    assert events[-1]["stats"]["backend"] == "fake"
    assert stats.stdout == b"Hello from the fake backend.\n"
    assert stats.stderr.decode().startswith("[fake · fake-1 · TTFT ")
    assert json.loads(models.stdout) == [{"name": "fake-1", "backend": "fake"}]
    assert "transports: unix" in status.stdout.decode()


def _spawn(sock_path) -> pexpect.spawn:
    return pexpect.spawn(CONDUCTOR, ["chat", "--socket", str(sock_path)], env=ENV, encoding="utf-8", timeout=15)


async def test_interactive_streams_and_ctrl_c_cancels_the_reply(sock_path):
    async with serving(sock_path) as backend:
        # the reply stops after two tokens and would never finish on its own
        backend.push(Script(tokens=["Once", " upon", " a", " time"], hang_after=2))
        cancelled = backend.cancelled_event
        child = await anyio.to_thread.run_sync(_spawn, sock_path)
        try:
            run = anyio.to_thread.run_sync
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "tell me a story")
            await run(child.expect_exact, "Once upon")
            # printed while the backend is still generating: streamed, not buffered
            assert backend.active == 1
            await run(child.sendintr)
            await run(child.expect_exact, "(reply cancelled)")
            with anyio.fail_after(10):
                await cancelled.wait()
            assert backend.cancelled == 1 and backend.active == 0
            # still in the chat: the next reply works, in the same conversation
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "again")
            await run(child.expect_exact, "Hello from the fake backend.")
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "/history")
            await run(child.expect_exact, "user: tell me a story")
            await run(child.expect_exact, "assistant (interrupted): Once upon")
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "/model other")
            await run(child.expect_exact, "model: other")
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "/new")
            await run(child.expect, r"new conversation: chat-[0-9a-f]{8}")
            await run(child.expect_exact, ">>> ")
            await run(child.sendline, "/quit")
            await run(child.expect, pexpect.EOF)
            await run(child.wait)
            assert child.exitstatus == 0
        finally:
            child.close(force=True)


async def test_ctrl_d_and_ctrl_c_at_the_prompt_exit(sock_path):
    async with serving(sock_path):
        run = anyio.to_thread.run_sync
        for key in ("eof", "intr"):
            child = await run(_spawn, sock_path)
            try:
                await run(child.expect_exact, ">>> ")
                await run(child.sendeof if key == "eof" else child.sendintr)
                await run(child.expect, pexpect.EOF)
                await run(child.wait)
                assert child.exitstatus == 0, key
            finally:
                child.close(force=True)
