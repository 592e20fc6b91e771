"""Child processes of the soak: the flaky emulators and ``conductor serve``, and /proc readings.

Each child runs in its own process group and is stopped from a ``finally`` (SIGTERM, then
SIGKILL after a grace period); an ``atexit`` hook stops whatever is still registered, so an
exception or Ctrl-C leaves nothing behind. Readiness is polled on the socket, never slept for.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

__all__ = ["Proc", "conductor_config", "free_port", "open_fds", "rss_kib", "wait_tcp", "wait_unix"]

PYTHON = sys.executable
_live: set[Proc] = set()


class Proc:
    """One child process in its own process group; stderr (and stdout unless piped) to ``log``."""

    def __init__(self, argv: list[str], *, name: str, log: Path, env: dict[str, str] | None = None,
                 stdout_pipe: bool = False) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _live.add(self)

    def __hash__(self) -> int:
        return self.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``grace``, then SIGKILL the group. Idempotent; the exit code."""
        try:
            if self.popen.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.popen.poll() is None:
                self.popen.wait(5)
        finally:
            if self.popen.stdout is not None:
                self.popen.stdout.close()
            self._log_file.close()
            _live.discard(self)
        return self.popen.returncode

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        proc.stop(grace=1.0)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_unix(path: Path, proc: Proc, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                stream = await anyio.connect_unix(path)
            except OSError:
                await anyio.sleep(0.01)
                continue
            await stream.aclose()
            return


async def wait_tcp(port: int, proc: Proc, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.01)
                continue
            await stream.aclose()
            return


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and booleans are the same in TOML


def conductor_config(dirpath: Path, *, urls: list[str], ws_port: int, ws_token: str, between_chunks_s: float,
                     grace_s: float) -> Path:
    """The soak's conductor.toml: two Ollama backends behind the health router, both transports
    with caps raised for thousands of clients, no history window (the emulator's prompt is
    exactly the user's message), everything else at its default (heartbeat, frame and outbox
    bounds, per-connection chat cap)."""
    sock = dirpath / "run" / "c.sock"
    lines = [
        'log_level = "warning"',
        f"shutdown_grace_s = {grace_s}",
        'default_model = "soak"',
        "[history]",
        "max_messages = 0",
        "max_stored_messages = 8",  # history reaches its steady state at once: RSS growth is then a leak
        "[limits]",
        "messages_per_second = 1000.0",
        "message_burst = 1000",
    ]
    for i, url in enumerate(urls):
        lines += [
            f"[backends.emu{i}]",
            'type = "ollama"',
            f"url = {_toml(url)}",
            "max_connections = 256",
            f"timeouts = {{ connect = 2.0, between_chunks = {between_chunks_s}, pool = 10.0 }}",
        ]
    lines += [
        "[router]",
        'type = "health"',
        "probe_interval_s = 1.0",
        "failure_threshold = 3",
        "open_s = 1.0",
        "max_open_s = 4.0",
        "rate_limit_cooldown_s = 1.0",
        "queue_timeout_s = 5.0",
        "[transports.unix]",
        'type = "unix"',
        f"path = {_toml(str(sock))}",
        "max_connections = 8192",
        "max_connections_per_uid = 8192",
        "backlog = 4096",
        "[transports.web]",
        'type = "ws"',
        'host = "127.0.0.1"',
        f"port = {ws_port}",
        f"token = {_toml(ws_token)}",
        'token_file = ""',
        "serve_page = false",
        "max_connections = 8192",
        "max_connections_per_origin = 8192",
    ]
    path = dirpath / "conductor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
