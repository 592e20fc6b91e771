"""Measure 5, memory (VmRSS of the conductor process from /proc/PID/status).

- idle: a fresh conductor (Unix + WS transports, the emulator as backend) after start-up settles.
- per idle connection: N connections opened and past hello/welcome, then (RSS after - RSS
  before) / N, after a warm-up of a few connections; over Unix (bare frames), then, with those
  still open, over WS (before any load: memory a load frees would be reused and hide the cost).
- under load: N streams at once on those Unix connections (``paced`` model, ~10 ms/token),
  RSS sampled every 50 ms; the peak is reported. Texts are compared with the direct path's.
"""

from __future__ import annotations

import contextlib

import anyio

from .clients import DirectOllama, RawUnix, WsPath
from .context import Ctx, expected_texts
from .procs import BENCH_MODEL_FAST, BENCH_MODEL_PACED, WS_TOKEN
from conductor_core.protocol import Done, Error, Token

NAME = "5 memory"


async def _settle(seconds: float) -> None:
    await anyio.sleep(seconds)


async def _stream(raw: RawUnix, chat_id: str, prompt: str, options) -> str:
    await raw.send_chat(chat_id, prompt, BENCH_MODEL_PACED, options)
    parts = []
    while True:
        message = await raw.receive()
        kind = type(message)
        if kind is Token:
            parts.append(message.text)
        elif kind is Done:
            return "".join(parts)
        elif kind is Error:
            raise RuntimeError(f"chat {chat_id}: {message.code}: {message.message}")


async def run(ctx: Ctx) -> None:
    report = ctx.report
    n = ctx.size(1000, 20)
    tokens = ctx.size(200, 10)
    async with ctx.emulator() as emu, ctx.conductor("memory", backend=ctx.ollama_backend(emu), ws=True) as c:
        await _settle(ctx.size(1.0, 0.2))
        idle = c.proc.rss_kib()
        report.single(NAME, "idle conductor RSS", idle / 1024, unit="MiB", target="<= 50 MB", limit=50e6 / 2**20,
                      spread=f"VmHWM so far {c.proc.status_kib('VmHWM') / 1024:.1f} MiB")
        direct = DirectOllama(emu.url)
        try:
            # ---- Unix: idle connections, then the load on them
            for _ in range(10):  # warm-up: first-connection allocations are not per connection
                await (await RawUnix(str(c.sock)).connect()).aclose()
            await _settle(0.2)
            before = c.proc.rss_kib()
            conns: list[RawUnix] = []
            try:
                for _ in range(n):
                    conns.append(await RawUnix(str(c.sock)).connect())
                await _settle(ctx.size(1.0, 0.1))
                after = c.proc.rss_kib()
                per = (after - before) / n
                report.single(NAME, f"per idle connection, Unix ({n} open)", per, unit="KiB", target="<= 20 KiB",
                              limit=20.0, spread=f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB")
                # WS, before any load (memory freed by the load would be reused and hide the cost)
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(10):
                        async with WsPath(c.ws_url, c.origin, WS_TOKEN):
                            pass
                    await _settle(0.2)
                    ws_before = c.proc.rss_kib()
                    for _ in range(n):
                        await stack.enter_async_context(WsPath(c.ws_url, c.origin, WS_TOKEN))
                    await _settle(ctx.size(1.0, 0.1))
                    ws_after = c.proc.rss_kib()
                report.single(NAME, f"per idle connection, WS ({n} open)", (ws_after - ws_before) / n, unit="KiB",
                              target="<= 20 KiB", limit=20.0,
                              spread=f"RSS {ws_before / 1024:.1f} -> {ws_after / 1024:.1f} MiB")
                after = max(after, ws_after)
                options = {"num_predict": tokens}
                prompts = [f"memory load stream {i}" for i in range(n)]
                expected = await expected_texts(direct, prompts, BENCH_MODEL_FAST, options)
                # warm the conductor's upstream pool (n short chats at once), so the measured load
                # is n streams, not n simultaneous TCP connects to a single-threaded emulator
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(_stream, conns[i], f"w{i}", f"warm {i}", {"num_predict": 2})
                texts: dict[str, str] = {}
                peak = after
                done = anyio.Event()

                async def sample() -> None:
                    nonlocal peak
                    while not done.is_set():
                        peak = max(peak, c.proc.rss_kib())
                        with anyio.move_on_after(0.05):
                            await done.wait()

                async def one(i: int) -> None:
                    texts[prompts[i]] = await _stream(conns[i], f"m{i}", prompts[i], options)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(sample)
                    async with anyio.create_task_group() as streams:
                        for i in range(n):
                            streams.start_soon(one, i)
                    done.set()
                for p in prompts:
                    report.check(f"{NAME} {p}", expected[p], texts.get(p, ""))
                report.single(NAME, f"RSS under {n} streams (peak)", peak / 1024, unit="MiB",
                              spread=f"{tokens} tokens each @ {ctx.paced_ms:g} ms; idle was {idle / 1024:.1f} MiB")
            finally:
                for conn in conns:
                    with contextlib.suppress(Exception):
                        await conn.aclose()
        finally:
            await direct.aclose()
