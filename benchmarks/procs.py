"""Child processes of the suite: the Ollama emulator, the conductor, llama.cpp's server.

Every child runs in its own process group (``start_new_session``) and is stopped by signalling
the whole group (SIGTERM, then SIGKILL after a grace period), from a ``finally``; an ``atexit``
hook stops whatever is still registered, so an exception or Ctrl-C leaves nothing behind.
Readiness is polled on the socket (connect attempts every 2 ms), never a blind sleep.
CPU and memory come from ``/proc/PID/stat`` and ``/proc/PID/status``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

__all__ = [
    "BENCH_MODEL_FAST",
    "BENCH_MODEL_PACED",
    "Conductor",
    "Proc",
    "WS_TOKEN",
    "conductor_bin",
    "conductor_config",
    "emulator",
    "free_port",
    "llamacpp_server",
    "run_conductor",
    "wait_tcp",
    "wait_unix",
    "workdir",
]

PYTHON = sys.executable
BENCH_MODEL_FAST = "fast:latest"  # the emulator at zero delay
BENCH_MODEL_PACED = "paced:latest"  # the emulator at --paced-ms per token
WS_TOKEN = "bench-token-0123456789abcdef"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_live: set[Proc] = set()


def conductor_bin() -> str:
    """The ``conductor`` console script next to this interpreter (what a user runs)."""
    path = Path(sys.executable).with_name("conductor")
    return str(path) if path.exists() else "conductor"


class Proc:
    """One child process in its own process group."""

    def __init__(self, argv: list[str], *, name: str, log: Path, env: dict[str, str] | None = None,
                 stdout_pipe: bool = False, stdin_pipe: bool = False) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")
        self.started_at = time.perf_counter()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file,  # a file, never a pipe nobody reads (a full pipe blocks the child)
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _live.add(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the group, wait up to ``grace``, then SIGKILL the group. Idempotent."""
        try:
            if self.popen.poll() is None:
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(self.pid, signal.SIGKILL)  # leftovers in the group (grandchildren)
            if self.popen.poll() is None:
                self.popen.wait(5)
        finally:
            for stream in (self.popen.stdin, self.popen.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            self._log_file.close()
            _live.discard(self)
        return self.popen.returncode

    # -- /proc ---------------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far (threads included)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)

    def status_kib(self, key: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_kib(self) -> int:
        return self.status_kib("VmRSS")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __hash__(self) -> int:
        return self.pid


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        proc.stop(grace=1.0)


@contextmanager
def workdir(prefix: str = "cbench-"):
    """A private temporary directory (0700), removed afterwards."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_unix(path: Path, proc: Proc | None = None, timeout: float = 20.0) -> float:
    """Poll until a connect to ``path`` succeeds; returns the time it happened (perf_counter)."""
    with anyio.fail_after(timeout):
        while True:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                stream = await anyio.connect_unix(path)
            except OSError:
                await anyio.sleep(0.002)
                continue
            at = time.perf_counter()
            await stream.aclose()
            return at


async def wait_tcp(port: int, proc: Proc | None = None, timeout: float = 20.0) -> float:
    with anyio.fail_after(timeout):
        while True:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.002)
                continue
            at = time.perf_counter()
            await stream.aclose()
            return at


async def _read_line(proc: Proc, timeout: float) -> bytes:
    """The first stdout line of ``proc`` (read in a worker thread: a pipe read blocks)."""
    assert proc.popen.stdout is not None
    with anyio.fail_after(timeout):
        line = await anyio.to_thread.run_sync(proc.popen.stdout.readline, abandon_on_cancel=True)
    if not line:
        raise RuntimeError(f"{proc.name} exited before it was ready:\n{proc.tail()}")
    return line


@asynccontextmanager
async def emulator(dirpath: Path, *, paced_ms: float = 10.0, name: str = "emulator"):
    """The Ollama emulator in its own process (uvloop), models ``fast`` and ``paced``."""
    proc = Proc([PYTHON, "-m", "benchmarks.emulator", "--paced-ms", str(paced_ms)], name=name,
                log=dirpath / f"{name}.log", stdout_pipe=True)
    try:
        line = (await _read_line(proc, 20)).decode().strip()
        url = line.rsplit(" ", 1)[-1]
        proc.url = url  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()


def conductor_config(dirpath: Path, *, backend: dict[str, Any], ws_port: int | None = None, log_level: str = "info") -> Path:
    """A conductor.toml for the benchmarks: limits raised for 1,000+ connections, no history
    window (every request sends exactly the user's message, like the direct client)."""
    sock = dirpath / "run" / "c.sock"
    lines = [
        f'log_level = "{log_level}"',
        "shutdown_grace_s = 1.0",
        "[history]",
        "max_messages = 0",  # the direct client sends no history either
        "[limits]",
        "messages_per_second = 1000000.0",
        "message_burst = 1000000",
        "max_chats_per_connection = 64",
        "hello_timeout_s = 60.0",
        "heartbeat_interval_s = 600.0",
        "[backends.bench]",
        *(f"{k} = {json.dumps(v)}" for k, v in backend.items()),
        "[transports.unix]",
        'type = "unix"',
        f"path = {json.dumps(str(sock))}",
        "max_connections = 8192",
        "max_connections_per_uid = 8192",
        "backlog = 4096",
    ]
    if ws_port is not None:
        lines += [
            "[transports.web]",
            'type = "ws"',
            'host = "127.0.0.1"',
            f"port = {ws_port}",
            f'token = "{WS_TOKEN}"',
            'token_file = ""',
            "serve_page = false",
            "max_connections = 8192",
            "max_connections_per_origin = 8192",
            "ping_interval_s = 600.0",
            "ping_timeout_s = 600.0",
        ]
    path = dirpath / "conductor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Conductor:
    """A running ``conductor serve`` child and where to reach it."""

    def __init__(self, proc: Proc, sock: Path, ws_port: int | None, config: Path) -> None:
        self.proc = proc
        self.sock = sock
        self.ws_port = ws_port
        self.config = config
        self.ready_s: float | None = None  # spawn -> Unix socket accepting

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"


def conductor_argv(config: Path, profile: Path | None = None) -> list[str]:
    if profile is not None:
        return [PYTHON, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(profile),
                "-m", "conductor_core", "serve", "--config", str(config)]
    return [conductor_bin(), "serve", "--config", str(config)]


@asynccontextmanager
async def run_conductor(dirpath: Path, *, backend: dict[str, Any], ws: bool = False, profile: Path | None = None,
                        name: str = "conductor"):
    """``conductor serve`` as a child process, ready once its Unix socket (and WS port) accept."""
    ws_port = free_port() if ws else None
    config = conductor_config(dirpath, backend=backend, ws_port=ws_port)
    sock = dirpath / "run" / "c.sock"
    proc = Proc(conductor_argv(config, profile), name=name, log=dirpath / f"{name}.log")
    try:
        at = await wait_unix(sock, proc)
        if ws_port is not None:
            await wait_tcp(ws_port, proc)
        c = Conductor(proc, sock, ws_port, config)
        c.ready_s = at - proc.started_at
        yield c
    finally:
        proc.stop(grace=15.0 if profile is not None else 5.0)


@asynccontextmanager
async def llamacpp_server(dirpath: Path, *, api_key: str, parallel: int = 1, ctx_size: int = 2048,
                          threads: int | None = None):
    """llama.cpp's OpenAI-compatible server with SmolLM2, hosted by ``conductor_llamacpp._child``
    (settings, the API key included, go over stdin; it serves until its stdin closes)."""
    from conductor_llamacpp.server import check_model

    model = await anyio.to_thread.run_sync(check_model, None, "bench")
    settings = {"model_path": str(model), "alias": "smollm2-135m", "ctx_size": ctx_size, "parallel": parallel,
                "threads": threads, "api_key": api_key}
    proc = Proc([PYTHON, "-m", "conductor_llamacpp._child"], name="llamacpp", log=dirpath / "llamacpp.log",
                stdout_pipe=True, stdin_pipe=True)
    try:
        assert proc.popen.stdin is not None
        proc.popen.stdin.write(json.dumps(settings).encode() + b"\n")
        proc.popen.stdin.flush()
        reply = json.loads(await _read_line(proc, 120))
        if "address" not in reply:
            raise RuntimeError(f"llama.cpp did not start: {reply.get('error')}")
        proc.url = reply["address"]  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()
