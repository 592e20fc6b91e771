"""Measure 2, concurrency: N simultaneous streaming clients, the emulator paced at ~10 ms/token.

For each N, rounds alternate direct (N streams over one pooled httpx client) and conductor (N
surface connections over Unix, each with one chat). Every client is connected and the pools are
warmed before a round; a round starts all N requests at once. Per round: TTFT p50/p99 over the
N clients, the p99 of every inter-token gap of every client, and the median total time; the
added figure is conductor minus direct, per round, then the median over rounds.

Also shown per level (informative): CPU seconds used by the emulator, the conductor and this
client process during the conductor rounds; on a 2-core machine the three share the cores, so
a saturated client or emulator shows up here rather than being blamed on the conductor.
"""

from __future__ import annotations

import contextlib
import math
import time

import anyio

from .clients import DirectOllama, Result, UnixPath
from .context import Ctx, bench_cpu
from .procs import BENCH_MODEL_PACED
from .stats import median, pct, summarize

NAME = "2 concurrency"
GAP_LIMIT_MS = 10.0


async def _round(n: int, chat, prompts: list[str], options) -> list[Result]:
    """Start all ``n`` chats at once; returns their results in prompt order."""
    results: list[Result | None] = [None] * n
    go = anyio.Event()

    async def one(i: int) -> None:
        await go.wait()
        results[i] = await chat(i, prompts[i], options)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
        await anyio.sleep(0)
        go.set()
    return results  # type: ignore[return-value]


async def run(ctx: Ctx) -> None:
    levels = ctx.size([1, 10, 50, 200, 1000], [1, 5])
    tokens = ctx.size(200, 10)
    report = ctx.report
    best: int | None = None
    ok_so_far = True
    async with ctx.emulator() as emu, ctx.conductor("concurrency", backend=ctx.ollama_backend(emu)) as c:
        direct = DirectOllama(emu.url, max_connections=4096)
        try:
            for n in levels:
                rounds = ctx.size(3 if n < 1000 else 2, 1)
                options = {"num_predict": tokens}
                async with contextlib.AsyncExitStack() as stack:
                    surfaces = []
                    for start in range(0, n, 100):  # connect in bursts (backlog-friendly)
                        batch = [UnixPath(str(c.sock)) for _ in range(start, min(n, start + 100))]
                        for s in batch:
                            surfaces.append(await stack.enter_async_context(s))

                    async def via_direct(i, prompt, opts):
                        return await direct.chat(prompt, BENCH_MODEL_PACED, opts)

                    async def via_unix(i, prompt, opts):
                        return await surfaces[i].chat(prompt, BENCH_MODEL_PACED, opts)

                    warm = [f"warm {n} {i}" for i in range(n)]  # opens n pooled connections each side
                    await _round(n, via_direct, warm, {"num_predict": 3})
                    await _round(n, via_unix, warm, {"num_predict": 3})
                    d_rounds: list[list[Result]] = []
                    c_rounds: list[list[Result]] = []
                    cpu = {"conductor": 0.0, "emulator": 0.0, "client": 0.0, "wall": 0.0}
                    peak_rss = c.proc.rss_kib()
                    for r in range(rounds):
                        prompts = [f"concurrency n={n} round {r} client {i}" for i in range(n)]
                        d_rounds.append(await _round(n, via_direct, prompts, options))
                        before = (c.proc.cpu_seconds(), emu.cpu_seconds(), bench_cpu(), time.perf_counter())
                        async with anyio.create_task_group() as tg:
                            sampler_done = anyio.Event()

                            async def sample() -> None:
                                nonlocal peak_rss
                                while not sampler_done.is_set():
                                    peak_rss = max(peak_rss, c.proc.rss_kib())
                                    with anyio.move_on_after(0.1):
                                        await sampler_done.wait()

                            tg.start_soon(sample)
                            c_rounds.append(await _round(n, via_unix, prompts, options))
                            sampler_done.set()
                        after = (c.proc.cpu_seconds(), emu.cpu_seconds(), bench_cpu(), time.perf_counter())
                        for key, b, a in zip(("conductor", "emulator", "client", "wall"), before, after):
                            cpu[key] += a - b
                        for prompt, d, cr in zip(prompts, d_rounds[-1], c_rounds[-1]):
                            report.check(f"{NAME} n={n} {prompt}", d.text, cr.text)
                ttft = lambda rs: [[x.ttft_ms for x in batch] for batch in rs]  # noqa: E731
                gaps = lambda rs: [[g for x in batch for g in x.gaps_ms()] for batch in rs]  # noqa: E731
                total = lambda rs: [[x.total_ms for x in batch] for batch in rs]  # noqa: E731
                report.paired(NAME, f"n={n}: TTFT p50", summarize(ttft(d_rounds), ttft(c_rounds), median),
                              target="added <= 5 ms" if n == 50 else "", limit=5.0 if n == 50 else None)
                report.paired(NAME, f"n={n}: TTFT p99", summarize(ttft(d_rounds), ttft(c_rounds), pct(99)))
                gap = summarize(gaps(d_rounds), gaps(c_rounds), pct(99))
                report.paired(NAME, f"n={n}: inter-token p99", gap, target=f"added <= {GAP_LIMIT_MS:g} ms",
                              limit=GAP_LIMIT_MS)
                tot = summarize(total(d_rounds), total(c_rounds), median)
                is_ref = n == 1
                report.paired(NAME, f"n={n}: total p50 ({tokens} tok @ {ctx.paced_ms:g} ms)", tot, on="ratio",
                              target="ratio <= 1.01" if is_ref else "", limit=1.01 if is_ref else None)
                wall = cpu["wall"] or math.nan
                report.single(NAME, f"n={n}: CPU busy in conductor rounds (share of 1 core)",
                              cpu["conductor"] / wall * 100, unit="%", digits=0,
                              spread=f"emulator {cpu['emulator'] / wall * 100:.0f}%, "
                                     f"bench client {cpu['client'] / wall * 100:.0f}%, "
                                     f"conductor peak RSS {peak_rss / 1024:.1f} MiB")
                if ok_so_far and not math.isnan(gap.added) and gap.added <= GAP_LIMIT_MS:
                    best = n
                else:
                    ok_so_far = False
        finally:
            await direct.aclose()
    report.single(NAME, "highest N with p99 added inter-token <= 10 ms", float(best or 0), unit="streams",
                  target=">= 1,000", limit=1000, higher_is_better=True, digits=0,
                  spread=f"levels tried: {', '.join(map(str, levels))}")
