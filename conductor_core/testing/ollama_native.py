"""The Ollama emulator's native generation routes: ``/api/chat`` and ``/api/generate``.

Each streamed line is built from precomputed byte pieces (``prefix + encoded token + suffix``)
and sent in one socket write, so the emulator stays cheap enough for benchmarks. Metrics (in
nanoseconds) appear only on the final ``done`` line, as in Ollama.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from .http11 import Request, Response, StreamWriter
from .ollama_state import Fault, rfc3339

if TYPE_CHECKING:
    from .ollama_emulator import Generation, OllamaEmulator

__all__ = ["NativeRoutes"]

_enc = msgspec.json.Encoder()


def _error(status: int, message: str) -> Response:
    return Response(status, _enc.encode({"error": message}))


class NativeRoutes:
    def __init__(self, emulator: OllamaEmulator) -> None:
        self.emu = emulator

    async def chat(self, request: Request, start_stream: Callable[[int, str], StreamWriter]) -> Response | None:
        emu = self.emu
        body = emu.body(request)
        if isinstance(body, Response):
            return body
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return _error(400, "messages must be a list")
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        options = body.get("options") or {}
        gen = emu.prepare(request, body, prompt, not messages, options.get("num_predict"),
                           body.get("keep_alive"), body.get("stream", True) is not False)
        if isinstance(gen, Response):
            return gen
        return await self._reply(request, start_stream, gen, chat=True)

    async def generate(self, request: Request, start_stream: Callable[[int, str], StreamWriter]) -> Response | None:
        emu = self.emu
        body = emu.body(request)
        if isinstance(body, Response):
            return body
        prompt = str(body.get("prompt") or "")
        options = body.get("options") or {}
        gen = emu.prepare(request, body, prompt, not prompt, options.get("num_predict"),
                           body.get("keep_alive"), body.get("stream", True) is not False)
        if isinstance(gen, Response):
            return gen
        return await self._reply(request, start_stream, gen, chat=False)

    async def _reply(self, request: Request, start_stream: Callable[[int, str], StreamWriter],
                      gen: Generation, *, chat: bool) -> Response | None:
        emu = self.emu
        created = rfc3339()
        head = b'{"model":' + emu.enc_token(gen.echo) + b',"created_at":"' + created.encode() + b'",'
        if chat:
            prefix, suffix = head + b'"message":{"role":"assistant","content":', b'},"done":false}\n'
            empty_msg = b'"message":{"role":"assistant","content":""},'
        else:
            prefix, suffix = head + b'"response":', b',"done":false}\n'
            empty_msg = b'"response":"",'
        if gen.empty:
            reason = await emu.load_or_unload(request, gen)
            line = head + empty_msg + b'"done_reason":"' + reason.encode() + b'","done":true}'
            request.state = "done"
            if gen.stream:
                writer = start_stream(200, "application/x-ndjson")
                await writer.write(line + b"\n")
                return None
            return Response(200, line)
        t0 = time.perf_counter_ns()
        load_s = await emu.ensure_loaded(request, gen)
        writer = start_stream(200, "application/x-ndjson") if gen.stream else None
        sent, eval_ns = await emu.run_tokens(
            request, gen, writer,
            frame=lambda tok: prefix + emu.enc_token(tok) + suffix,
            error_frame=lambda msg: _enc.encode({"error": msg}) + b"\n",
            garbage=b'{"model": "oops", this is not json\n',
        )
        fault = gen.fault or Fault()
        if sent < 0:
            request.state = "done"
            if writer is None:
                return _error(500, fault.message or "an error was encountered while running the model")
            return None
        emu.after_reply(gen)
        if fault.no_done:
            request.state = "done"
            return None if writer is not None else Response(200, b"")
        stats = {
            "done_reason": gen.done_reason,
            "done": True,
            "total_duration": time.perf_counter_ns() - t0,
            "load_duration": int(load_s * 1e9),
            "prompt_eval_count": gen.prompt_tokens,
            "prompt_eval_duration": 1_000_000,
            "eval_count": sent,
            "eval_duration": eval_ns,
        }
        text = "".join(gen.tokens)
        if not chat:
            stats["context"] = [1, 2, 3]
        tail = _enc.encode(stats)[1:]  # drop the "{" to splice after the head
        request.state = "done"
        if writer is not None:
            await writer.write(head + empty_msg + tail + b"\n")
            emu.stats.streams_completed += 1
            return None
        content = (b'"message":{"role":"assistant","content":' + _enc.encode(text) + b"},") if chat else (
            b'"response":' + _enc.encode(text) + b",")
        return Response(200, head + content + tail)
