"""Measure 1, added latency: the emulator at zero delay, one client, sequential requests.

Rounds are interleaved (direct, Unix, Unix bare frames, WS, then the next round in rotated
order). "Unix" is the client library (a reader task hands each message to the reply's iterator);
"Unix bare frames" reads the frames itself, so the difference is the library's share. Every request
has its own prompt, and the same prompts go through every path, so each pair's text is compared.
Added TTFT (at the first content token) p50/p99 and added total time p50, per transport.
"""

from __future__ import annotations

from .clients import DirectOllama, RawUnix, UnixPath, WsPath
from .context import Ctx
from .procs import BENCH_MODEL_FAST, WS_TOKEN
from .stats import median, pct, summarize

NAME = "1 latency"


async def run(ctx: Ctx) -> None:
    rounds = ctx.size(10, 2)
    per_round = ctx.size(110, 5)  # 10 x 110 = 1,100 requests per path
    warmup = ctx.size(30, 2)
    tokens = ctx.size(20, 8)
    options = {"num_predict": tokens}
    report = ctx.report
    async with ctx.emulator() as emu, ctx.conductor("latency", backend=ctx.ollama_backend(emu), ws=True) as c:
        direct = DirectOllama(emu.url)
        try:
            async with UnixPath(str(c.sock)) as unix, WsPath(c.ws_url, c.origin, WS_TOKEN) as ws:
                raw = await RawUnix(str(c.sock)).connect()
                try:
                    paths = {"direct": direct, "unix": unix, "raw": raw, "ws": ws}
                    for i in range(warmup):
                        for p in paths.values():
                            await p.chat(f"warm-up {i}", BENCH_MODEL_FAST, options)
                    results: dict[str, list[list]] = {k: [] for k in paths}
                    for r in range(rounds):
                        order = list(paths)
                        order = order[r % 4:] + order[: r % 4]
                        prompts = [f"latency round {r} request {i}" for i in range(per_round)]
                        texts: dict[str, list[str]] = {}
                        for name in order:
                            batch = []
                            for prompt in prompts:
                                batch.append(await paths[name].chat(prompt, BENCH_MODEL_FAST, options))
                            results[name].append(batch)
                            texts[name] = [x.text for x in batch]
                        for name in ("unix", "raw", "ws"):
                            for prompt, d, t in zip(prompts, texts["direct"], texts[name]):
                                report.check(f"{NAME} {name} {prompt}", d, t)
                finally:
                    await raw.aclose()
        finally:
            await direct.aclose()
    n = rounds * per_round
    for name, label in (("unix", "Unix"), ("raw", "Unix bare frames"), ("ws", "WS")):
        ttft = lambda path: [[x.ttft_ms for x in batch] for batch in results[path]]  # noqa: E731
        total = lambda path: [[x.total_ms for x in batch] for batch in results[path]]  # noqa: E731
        report.paired(NAME, f"TTFT p50, 1 client, {label} ({n} req)", summarize(ttft("direct"), ttft(name), median),
                      target="added <= 0.5 ms", limit=0.5)
        report.paired(NAME, f"TTFT p99, 1 client, {label}", summarize(ttft("direct"), ttft(name), pct(99)),
                      target="added <= 2 ms", limit=2.0)
        report.paired(NAME, f"total p50 ({tokens} tokens), {label}", summarize(total("direct"), total(name), median))
