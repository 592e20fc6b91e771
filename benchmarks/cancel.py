"""Measure 6, cancellation: how long after a client gives up the backend sees its stream closed.

The emulator runs *in this process* (so its counters can be awaited: ``wait_until(streams_cancelled
> k)``, on the same clock as the client) and the conductor as a child process. A long reply is
streamed (``paced`` model, 10 ms/token); after a few tokens the client:

- cancel: leaves the client library's ``async with`` (which sends ``cancel{id}``);
- disconnect: closes its Unix socket without a word (a crashed or killed surface);
- direct (for scale): closes the httpx response early, the fastest a direct client can be.

The time from that moment to the emulator's disconnect callback is reported. The text received
before the cancel must be a prefix of the direct path's text for the same prompt.
"""

from __future__ import annotations

import time

import anyio

from conductor_core.protocol import Token
from conductor_core.testing.ollama_emulator import OllamaEmulator

from .clients import DirectOllama, RawUnix, UnixPath
from .context import Ctx, expected_texts
from .emulator import build
from .stats import median, percentile

NAME = "6 cancellation"
MODEL = "paced:latest"


async def _closed_after(emu: OllamaEmulator, before: int, t_cancel: float) -> float:
    with anyio.fail_after(10):
        await emu.wait_until(lambda s: s.streams_cancelled > before)
    return (time.perf_counter() - t_cancel) * 1000


async def run(ctx: Ctx) -> None:
    report = ctx.report
    tries = ctx.size(30, 2)
    after = 3  # tokens received before giving up
    options = {"num_predict": 1000}
    emu = build(ctx.paced_ms)
    async with emu, ctx.conductor("cancel", backend=ctx.ollama_backend(emu)) as c:
        direct = DirectOllama(emu.url)
        try:
            prompts = [f"cancel try {i}" for i in range(tries)]
            expected = await expected_texts(direct, prompts, "fast:latest", options)
            times: dict[str, list[float]] = {"direct": [], "cancel": [], "disconnect": []}
            async with UnixPath(str(c.sock)) as unix:
                await unix.chat("warm-up", MODEL, {"num_predict": 2})
                for i, prompt in enumerate(prompts):
                    # direct: leave the httpx stream after `after` pieces
                    before = emu.stats.streams_cancelled
                    body_text, t_cancel = await _direct_partial(direct, prompt, options, after)
                    times["direct"].append(await _closed_after(emu, before, t_cancel))
                    report.check(f"{NAME} direct {prompt}", expected[prompt], body_text, prefix=True)
                    # cancel through the client library
                    before = emu.stats.streams_cancelled
                    result = await unix.chat(prompt, MODEL, options, stop_after=after)
                    times["cancel"].append(await _closed_after(emu, before, result.end))
                    report.check(f"{NAME} cancel {prompt}", expected[prompt], result.text, prefix=True)
                    # abrupt disconnect of a bare connection
                    raw = await RawUnix(str(c.sock)).connect()
                    before = emu.stats.streams_cancelled
                    await raw.send_chat("d1", prompt, MODEL, options)
                    parts: list[str] = []
                    while len(parts) < after:
                        message = await raw.receive()
                        if type(message) is Token:
                            parts.append(message.text)
                    t_cancel = time.perf_counter()
                    await raw.aclose()
                    times["disconnect"].append(await _closed_after(emu, before, t_cancel))
                    report.check(f"{NAME} disconnect {prompt}", expected[prompt], "".join(parts), prefix=True)
        finally:
            await direct.aclose()
    ref = median(times["direct"])
    for key, label in (("cancel", "client cancel -> upstream closed"), ("disconnect", "client disconnect -> upstream closed")):
        values = times[key]
        report.single(NAME, label, median(values), target="<= 50 ms", limit=50.0, direct=ref,
                      spread=f"{tries} tries: p99 {percentile(values, 99):.2f} ms, max {max(values):.2f} ms; "
                             f"direct column: httpx closing its own stream")


async def _direct_partial(direct: DirectOllama, prompt: str, options, after: int) -> tuple[str, float]:
    """Stream directly and close the response after ``after`` pieces; (text, moment of closing)."""
    from .clients import _json, _ollama_line

    body = _json({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "keep_alive": "30m",
                  "stream": True, "options": options})
    parts: list[str] = []
    async with direct.stream(body) as response:
        buf = b""
        async for data in response.aiter_raw():
            lines = (buf + data).split(b"\n")
            buf = lines.pop()
            for line in lines:
                if line:
                    msg = _ollama_line(line).message
                    if msg is not None and msg.content:
                        parts.append(msg.content)
            if len(parts) >= after:
                break
        t_cancel = time.perf_counter()
    return "".join(parts), t_cancel
