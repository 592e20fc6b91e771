"""Measure 3, relay cost: conductor CPU seconds per relayed token.

Two loads, both through the Unix transport, the conductor's CPU time read from /proc before and
after (user + system, all threads):

- saturated: the emulator at zero delay, many streams at once. The conductor relays as fast as
  it can; tokens that pile up while a surface's socket is busy are coalesced into one frame, so
  this is the cheapest cost per token and its inverse the most tokens/s one core can relay.
- paced: 10 ms per token, so (nearly) every token is its own read, decode and frame: the cost
  per token of a realistic stream, which is the figure held against the target.

The direct column: the same load on the direct path, and the CPU the *client process* spent per
token (httpx + line split + msgspec decode), i.e. what merely reading a token costs in Python
with httpx; the conductor reads each token the same way and then relays it.
Texts are compared with the direct path's for the same prompts.
"""

from __future__ import annotations

import contextlib
import time

import anyio

from .clients import DirectOllama, UnixPath
from .context import Ctx, bench_cpu, expected_texts
from .procs import BENCH_MODEL_FAST, BENCH_MODEL_PACED

NAME = "3 relay cost"


async def _load(ctx: Ctx, c, direct: DirectOllama, model: str, streams: int, tokens: int, label: str) -> tuple[float, float, int, int]:
    """Run ``streams`` concurrent chats of ``tokens`` tokens; returns (conductor CPU s, wall s,
    tokens relayed, frames received)."""
    options = {"num_predict": tokens}
    prompts = [f"relay {label} stream {i}" for i in range(streams)]
    expected = await expected_texts(direct, prompts, BENCH_MODEL_FAST, options)
    texts: dict[str, str] = {}
    frames = 0
    async with contextlib.AsyncExitStack() as stack:
        surfaces = [await stack.enter_async_context(UnixPath(str(c.sock))) for _ in range(streams)]
        for s in surfaces:  # warm the conductor's upstream pool
            await s.chat(f"warm {label}", model, {"num_predict": 2})
        go = anyio.Event()

        async def one(i: int) -> None:
            nonlocal frames
            await go.wait()
            result = await surfaces[i].chat(prompts[i], model, options)
            texts[prompts[i]] = result.text
            frames += len(result.times)

        async with anyio.create_task_group() as tg:
            for i in range(streams):
                tg.start_soon(one, i)
            await anyio.sleep(0.05)
            cpu0, t0 = c.proc.cpu_seconds(), time.perf_counter()
            go.set()
        cpu1, t1 = c.proc.cpu_seconds(), time.perf_counter()
    for p in prompts:
        ctx.report.check(f"{NAME} {p}", expected[p], texts.get(p, ""))
    return cpu1 - cpu0, t1 - t0, streams * tokens, frames


async def _direct_load(direct: DirectOllama, model: str, streams: int, tokens: int, label: str) -> float:
    """The same load on the direct path; returns the CPU seconds *this client process* spent
    (httpx + line splitting + msgspec decode: what reading one token costs a direct client)."""
    options = {"num_predict": tokens}
    await expected_texts(direct, [f"warm {label} {i}" for i in range(streams)], model, {"num_predict": 2},
                         concurrency=streams)
    go = anyio.Event()

    async def one(i: int) -> None:
        await go.wait()
        await direct.chat(f"relay direct {label} stream {i}", model, options)

    async with anyio.create_task_group() as tg:
        for i in range(streams):
            tg.start_soon(one, i)
        await anyio.sleep(0.05)
        cpu0 = bench_cpu()
        go.set()
    return bench_cpu() - cpu0


async def run(ctx: Ctx) -> None:
    report = ctx.report
    async with ctx.emulator() as emu, ctx.conductor("relay", backend=ctx.ollama_backend(emu)) as c:
        direct = DirectOllama(emu.url)
        try:
            streams, tokens = ctx.size((50, 2000), (4, 50))
            cpu, wall, n, frames = await _load(ctx, c, direct, BENCH_MODEL_FAST, streams, tokens, "saturated")
            client = await _direct_load(direct, BENCH_MODEL_FAST, streams, tokens, "saturated")
            per = cpu / n * 1e6
            report.single(NAME, f"saturated: CPU per token ({streams} x {tokens} tok, 0 ms)", per, unit="µs",
                          direct=client / n * 1e6,
                          spread=f"{n:,} tokens in {frames:,} frames; conductor CPU {cpu:.2f} s over {wall:.2f} s "
                                 f"wall; direct column: the httpx client's own CPU per token")
            report.single(NAME, "saturated: tokens/s per core (1 / CPU per token)", n / cpu if cpu else float("nan"),
                          unit="tok/s", digits=0, spread=f"observed {n / wall:,.0f} tok/s wall (2 cores shared)")
            streams, tokens = ctx.size((50, 400), (4, 20))
            cpu, wall, n, frames = await _load(ctx, c, direct, BENCH_MODEL_PACED, streams, tokens, "paced")
            client = await _direct_load(direct, BENCH_MODEL_PACED, streams, tokens, "paced")
            per = cpu / n * 1e6
            report.single(NAME, f"paced: CPU per token ({streams} x {tokens} tok @ {ctx.paced_ms:g} ms)", per,
                          unit="µs", target="<= 15 µs", limit=15.0, direct=client / n * 1e6,
                          spread=f"{n:,} tokens in {frames:,} frames; conductor CPU {cpu:.2f} s over {wall:.2f} s "
                                 f"wall; direct column: the httpx client's own CPU per token")
        finally:
            await direct.aclose()
