"""Measure 4, start-up.

- ``conductor serve`` process start -> its Unix socket accepts a connection (polled every 2 ms),
  and -> the first ``welcome`` to a ``hello``. Each run is a fresh process (the OS file cache is
  warm after the first, as it is for a user).
- ``conductor chat "hi"`` process start -> first byte of the reply on its stdout, minus the
  backend's own TTFT (the direct client's median TTFT for the same request). For scale, the time
  a bare ``python -c pass`` takes to start and exit is shown in the direct column.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio

from .clients import DirectOllama, RawUnix
from .context import Ctx
from .procs import BENCH_MODEL_FAST, conductor_bin
from .stats import median

NAME = "4 start-up"


async def _python_start() -> float:
    t0 = time.perf_counter()
    await anyio.run_process([sys.executable, "-c", "pass"])
    return (time.perf_counter() - t0) * 1000


async def _chat_once(sock: str, prompt: str) -> tuple[float, bytes]:
    """Spawn ``conductor chat``; (ms to the first stdout byte, whole stdout)."""
    env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1"}
    env.pop("CONDUCTOR_SOCKET", None)
    t0 = time.perf_counter()
    process = await anyio.open_process([conductor_bin(), "chat", "--socket", sock, "-m", BENCH_MODEL_FAST, prompt],
                                       stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
    try:
        assert process.stdout is not None
        out = b""
        first = None
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                if first is None:
                    first = time.perf_counter()
                out += chunk
            code = await process.wait()
        if code != 0:
            raise RuntimeError(f"conductor chat exited with {code}")
        assert first is not None, "conductor chat printed nothing"
        return (first - t0) * 1000, out
    finally:
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            with anyio.CancelScope(shield=True):
                await process.wait()
        await process.aclose()


async def run(ctx: Ctx) -> None:
    report = ctx.report
    runs = ctx.size(7, 1)
    chats = ctx.size(10, 2)
    async with ctx.emulator() as emu:
        backend = ctx.ollama_backend(emu)
        ready, welcome = [], []
        for i in range(runs):
            async with ctx.conductor(f"startup-{i}", backend=backend) as c:
                raw = await RawUnix(str(c.sock)).connect()
                t_welcome = time.perf_counter()
                await raw.aclose()
                ready.append(c.ready_s * 1000)
                welcome.append((t_welcome - c.proc.started_at) * 1000)
        py = [await _python_start() for _ in range(runs)]
        spread = f"{runs} runs: {min(ready):.0f} .. {max(ready):.0f} ms"
        report.single(NAME, "serve start -> socket accepting", median(ready), target="<= 300 ms", limit=300.0,
                      direct=median(py), spread=spread + "; direct column: bare `python -c pass`")
        report.single(NAME, "serve start -> first welcome", median(welcome), direct=median(py),
                      spread=f"{runs} runs: {min(welcome):.0f} .. {max(welcome):.0f} ms")

        direct = DirectOllama(emu.url)
        try:
            ref = await direct.chat("hi", BENCH_MODEL_FAST)
            backend_ttft = median([(await direct.chat("hi", BENCH_MODEL_FAST)).ttft_ms for _ in range(10)])
            async with ctx.conductor("startup-chat", backend=backend) as c:
                firsts = []
                for i in range(chats):
                    ms, out = await _chat_once(str(c.sock), "hi")
                    firsts.append(ms)
                    report.check(f"{NAME} conductor chat run {i}", ref.text + "\n", out.decode(errors="replace"))
        finally:
            await direct.aclose()
        added = [f - backend_ttft for f in firsts]
        report.single(NAME, "`conductor chat hi` start -> first token - backend TTFT", median(added),
                      direct=median(py), spread=f"{chats} runs: {min(added):.0f} .. {max(added):.0f} ms; backend TTFT "
                      f"{backend_ttft:.2f} ms; direct column: bare `python -c pass`")
