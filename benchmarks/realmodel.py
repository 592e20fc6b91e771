"""Measure 7, a real model: SmolLM2-135M on llama.cpp's server, direct vs through the conductor.

One llama.cpp server (``conductor_llamacpp._child``, one slot, an API key) serves both paths:
the direct client speaks OpenAI-compatible SSE to it; the conductor reaches the same server
through an ``openai`` backend. Temperature 0 and a fixed seed make the texts equal pair by pair.
llama.cpp caches the last prompt, so every timed request is preceded by an untimed one with the
same prompt (both find it cached), and the order within a pair alternates. llama.cpp runs with one
thread, leaving the other core to the client and the conductor (with both cores, any CPU the
conductor uses is taken from the model and shows up as a slower generation). TTFT is at the first
content-bearing delta; tokens/s is (pieces - 1) / (last piece - first piece), with the direct
path's piece count used for both (the texts are equal, the conductor may coalesce pieces).
"""

from __future__ import annotations

import importlib.util

from .clients import DirectOpenAI, UnixPath
from .context import Ctx
from .stats import median, summarize

NAME = "7 real model"
MODEL = "smollm2-135m"
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a CPU cache is in three sentences.",
    "List five fruits and one fact about each.",
    "Tell me a very short story about a robot learning to paint.",
]


async def run(ctx: Ctx) -> None:
    report = ctx.report
    if importlib.util.find_spec("xllamacpp") is None:
        report.note(f"{NAME}: skipped: xllamacpp is not installed")
        return
    from .procs import llamacpp_server

    rounds = ctx.size(5, 1)
    prompts = PROMPTS if not ctx.quick else PROMPTS[:1]
    max_tokens = ctx.size(128, 12)
    direct_opts = {"temperature": 0, "seed": 42, "max_tokens": max_tokens}
    key = "bench-llamacpp-key-0123456789"
    async with llamacpp_server(ctx.dir("llamacpp"), api_key=key, parallel=1, threads=1) as server:
        base = server.url.rstrip("/") + "/v1"
        backend = {"type": "openai", "base_url": base, "api_key": key, "default_model": MODEL, "trust_env": False}
        async with ctx.conductor("realmodel", backend=backend) as c:
            direct = DirectOpenAI(base, api_key=key)
            try:
                async with UnixPath(str(c.sock)) as unix:
                    paths = {
                        "direct": lambda p: direct.chat(p, MODEL, direct_opts),
                        "conductor": lambda p: unix.chat(p, MODEL, direct_opts),
                    }
                    for p in prompts:  # warm-up: load, prompt cache
                        for chat in paths.values():
                            await chat(p)
                    ttft: dict[str, list[list[float]]] = {"direct": [], "conductor": []}
                    tps: dict[str, list[list[float]]] = {"direct": [], "conductor": []}
                    for r in range(rounds):
                        row_t = {"direct": [], "conductor": []}
                        row_s = {"direct": [], "conductor": []}
                        for i, p in enumerate(prompts):
                            order = ["direct", "conductor"] if (r + i) % 2 == 0 else ["conductor", "direct"]
                            await paths[order[1]](p)  # untimed: both timed requests find the prompt cached
                            got = {name: await paths[name](p) for name in order}
                            report.check(f"{NAME} round {r} {p!r}", got["direct"].text, got["conductor"].text)
                            n = len(got["direct"].times)
                            for name in order:
                                row_t[name].append(got[name].ttft_ms)
                                row_s[name].append(got[name].tokens_per_s(n))
                        for name in row_t:
                            ttft[name].append(row_t[name])
                            tps[name].append(row_s[name])
            finally:
                await direct.aclose()
    t = summarize(ttft["direct"], ttft["conductor"], median)
    report.paired(NAME, f"SmolLM2 TTFT ({max_tokens} tok max, temp 0)", t, on="ratio",
                  target="ratio <= 1.02", limit=1.02)
    s = summarize(tps["conductor"], tps["direct"], median)  # ratio = direct / conductor: slowdown
    row = report.paired(NAME, "SmolLM2 tokens/s (ratio = direct/conductor)", s, unit="tok/s", on="ratio",
                        target="ratio <= 1.02", limit=1.02)
    # paired() puts the first list in the direct column: swap back for display
    row.direct, row.conductor = row.conductor, row.direct
    row.added = "-"
