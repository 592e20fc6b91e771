"""The Ollama emulator's OpenAI-compatible routes: ``/v1/chat/completions`` (SSE) and ``/v1/models``.

Shapes follow Ollama's openai middleware: a role-only first chunk, one chunk per token, a last
chunk with ``finish_reason``, an optional usage chunk (``stream_options.include_usage``) with
``choices: []``, then ``data: [DONE]``. Errors are ``{"error": {message, type, param, code}}``.
These routes cannot carry ``keep_alive`` (Ollama ignores it there), exactly like the real thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .http11 import Request, Response, StreamWriter
from .ollama_state import Fault

if TYPE_CHECKING:
    from .ollama_emulator import OllamaEmulator

__all__ = ["OpenAIRoutes", "openai_error"]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": None, "code": None}}
    return Response(status, _enc.encode(body))


class OpenAIRoutes:
    def __init__(self, emulator: OllamaEmulator) -> None:
        self.emu = emulator
        self._ids = 0

    async def models(self, request: Request, _: Any) -> Response:
        data = [{"id": name, "object": "model", "created": 1_759_312_800, "owned_by": "library"} for name in self.emu.models]
        return Response(200, _enc.encode({"object": "list", "data": data}))

    async def chat(self, request: Request, start_stream: Callable[[int, str], StreamWriter]) -> Response | None:
        emu = self.emu
        if not request.body:
            return openai_error(400, "missing request body")
        try:
            body = _dec.decode(request.body)
        except msgspec.DecodeError as exc:
            return openai_error(400, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return openai_error(400, "invalid request")
        emu.stats.last_bodies[request.path] = body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "[] is too short - 'messages'")
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        stream = bool(body.get("stream", False))
        gen = emu.prepare(request, body, prompt, False, max_tokens, None, stream)
        if isinstance(gen, Response):
            payload = _dec.decode(gen.body)
            return openai_error(gen.status, payload.get("error", "error"))
        self._ids += 1
        cid = f"chatcmpl-{self._ids}"
        created = int(time.time())
        head = (b'{"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' + str(created).encode()
                + b',"model":' + emu.enc_token(gen.echo) + b',"system_fingerprint":"fp_ollama","choices":[')
        await emu.ensure_loaded(request, gen)
        writer = start_stream(200, "text/event-stream") if stream else None
        if writer is not None:
            await writer.write(b"data: " + head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
        sent, _ = await emu.run_tokens(
            request, gen, writer,
            frame=lambda tok: b"data: " + head + b'{"index":0,"delta":{"content":' + emu.enc_token(tok) + b'},"finish_reason":null}]}\n\n',
            error_frame=lambda msg: b"data: " + _enc.encode({"error": {"message": msg, "type": "api_error", "param": None, "code": None}}) + b"\n\n",
            garbage=b"data: {not json\n\n",
        )
        fault = gen.fault or Fault()
        if sent < 0:
            request.state = "done"
            return None if writer is not None else openai_error(500, fault.message or "an error was encountered while running the model")
        emu.after_reply(gen)
        request.state = "done"
        if fault.no_done:
            return None if writer is not None else Response(200, b"")
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": sent, "total_tokens": gen.prompt_tokens + sent}
        if writer is None:
            return Response(200, _enc.encode({
                "id": cid, "object": "chat.completion", "created": created, "model": gen.echo,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(gen.tokens)},
                             "finish_reason": gen.done_reason}],
                "usage": usage,
            }))
        last = b"data: " + head + b'{"index":0,"delta":{},"finish_reason":"' + gen.done_reason.encode() + b'"}]}\n\n'
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            last += b"data: " + head + b"]," + b'"usage":' + _enc.encode(usage) + b"}\n\n"
        await writer.write(last + b"data: [DONE]\n\n")
        emu.stats.streams_completed += 1
        return None
