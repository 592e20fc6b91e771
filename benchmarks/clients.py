"""The clients the suite times: the DIRECT paths (what a competent client of the backend does)
and the CONDUCTOR paths (the client library over Unix, ``websockets`` with JSON over WS).

Every ``chat`` returns a :class:`Result`: send time, the time of each content-bearing piece, the
end (the backend's final line / the conductor's ``done``) and the text, whose hash is compared
pair by pair with the other path. TTFT is taken at the first piece that carries text.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

import httpx
import msgspec

from conductor_core.client import connect_unix
from conductor_core.framing import FrameDecoder, encode_frame
from conductor_core.protocol import Chat, Done, Error, Hello, Token, decode_server, encode

__all__ = [
    "DirectOllama",
    "DirectOpenAI",
    "RawUnix",
    "Result",
    "UnixPath",
    "WsPath",
    "digest",
]

perf = time.perf_counter


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Result:
    """One reply as a client saw it (perf_counter seconds)."""

    __slots__ = ("start", "times", "parts", "end")

    def __init__(self) -> None:
        self.start = perf()
        self.times: list[float] = []
        self.parts: list[str] = []
        self.end = 0.0

    def piece(self, text: str) -> None:
        if text:
            self.times.append(perf())
            self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def digest(self) -> str:
        return digest(self.text)

    @property
    def ttft_ms(self) -> float:
        return ((self.times[0] if self.times else self.end) - self.start) * 1000

    @property
    def total_ms(self) -> float:
        return (self.end - self.start) * 1000

    def gaps_ms(self) -> list[float]:
        t = self.times
        return [(t[i] - t[i - 1]) * 1000 for i in range(1, len(t))]

    def tokens_per_s(self, tokens: int | None = None) -> float:
        """(n - 1) / (last - first): the generation rate as the client saw it."""
        n = tokens if tokens is not None else len(self.times)
        if len(self.times) < 2 or n < 2:
            return 0.0
        return (n - 1) / (self.times[-1] - self.times[0])


# ---------------------------------------------------------------- direct: Ollama /api/chat


class _OllamaMessage(msgspec.Struct):
    content: str = ""


class _OllamaLine(msgspec.Struct):
    message: _OllamaMessage | None = None
    done: bool = False
    error: Any = None


_ollama_line = msgspec.json.Decoder(_OllamaLine).decode
_json = msgspec.json.Encoder().encode
_HEADERS = {"Content-Type": "application/json"}


def _pool(max_connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class DirectOllama:
    """The fastest direct client we have: the same lean pooled HTTP/1.1 client the conductor's
    Ollama backend uses (``conductor_core.httpclient``), NDJSON lines split as bytes arrive and
    decoded by one msgspec decoder. Using httpx here instead would make the direct path ~1-2 ms
    slower per request and flatter the conductor; ``--direct-httpx`` keeps that variant."""

    def __init__(self, url: str, *, max_connections: int = 2048) -> None:
        from conductor_core.backends import Timeouts
        from conductor_core.httpclient import StreamingClient

        self.use_httpx = os.environ.get("BENCH_DIRECT_HTTPX") == "1"
        if self.use_httpx:
            self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None, connect=30.0),
                                            limits=_pool(max_connections), trust_env=False)
        else:
            self.client = StreamingClient(url, max_connections=max_connections,
                                          timeouts=Timeouts(connect=30.0, pool=600.0, between_chunks=600.0))

    async def aclose(self) -> None:
        await self.client.aclose()

    @asynccontextmanager
    async def stream(self, body: bytes) -> AsyncIterator[Any]:
        """A streamed ``/api/chat`` response (``aiter_raw()``, ``status_code``, ``aread()``)."""
        if self.use_httpx:
            async with self.client.stream("POST", "/api/chat", content=body, headers=_HEADERS) as response:
                yield response
            return
        response = await self.client.request("POST", "/api/chat", body, _HEADERS)
        try:
            yield response
        finally:
            await response.aclose()

    async def chat(self, prompt: str, model: str, options: dict[str, Any] | None = None) -> Result:
        body = _json({"model": model, "messages": [{"role": "user", "content": prompt}], "keep_alive": "30m",
                      "stream": True, **({"options": options} if options else {})})
        result = Result()
        async with self.stream(body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"direct /api/chat: HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            buf = b""
            done = False
            async for data in response.aiter_raw():
                if buf:
                    data = buf + data
                lines = data.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    if not line:
                        continue
                    parsed = _ollama_line(line)
                    if parsed.error is not None:
                        raise RuntimeError(f"direct /api/chat: {parsed.error}")
                    if parsed.message is not None and parsed.message.content:
                        result.piece(parsed.message.content)
                    if parsed.done:
                        done = True
                        result.end = perf()
            if not done:
                raise RuntimeError("direct /api/chat: the stream ended without its done line")
        return result


# ---------------------------------------------------------------- direct: OpenAI SSE


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _SSEChunk(msgspec.Struct):
    choices: list[_Choice] = []


_sse_chunk = msgspec.json.Decoder(_SSEChunk).decode


class DirectOpenAI:
    """``/v1/chat/completions`` with ``stream: true``: SSE events split as bytes arrive."""

    def __init__(self, base_url: str, *, api_key: str | None = None, max_connections: int = 64) -> None:
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(None, connect=30.0),
                                        limits=_pool(max_connections), headers=headers, trust_env=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def chat(self, prompt: str, model: str, options: dict[str, Any] | None = None) -> Result:
        """``options`` are chat-completions fields (temperature, seed, max_tokens)."""
        body = _json({"messages": [{"role": "user", "content": prompt}], "stream": True,
                      "stream_options": {"include_usage": True}, "model": model, **(options or {})})
        result = Result()
        async with self.client.stream("POST", "/chat/completions", content=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"direct SSE: HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            buf = b""
            finished = False
            async for data in response.aiter_raw():
                data = (buf + data).replace(b"\r\n", b"\n") if buf else data.replace(b"\r\n", b"\n")
                events = data.split(b"\n\n")
                buf = events.pop()
                for event in events:
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            finished = True
                            result.end = perf()
                            continue
                        chunk = _sse_chunk(payload)
                        for choice in chunk.choices:
                            if choice.delta is not None and choice.delta.content:
                                result.piece(choice.delta.content)
                if finished:
                    break
            if not finished:
                raise RuntimeError("direct SSE: the stream ended without [DONE]")
        return result


# ---------------------------------------------------------------- conductor: Unix (client library)


class UnixPath:
    """One surface connection through ``conductor_core.client.connect_unix``."""

    def __init__(self, sock: str) -> None:
        self._cm = connect_unix(sock, surface="bench")
        self.client: Any = None

    async def __aenter__(self) -> UnixPath:
        self.client = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def chat(self, prompt: str, model: str, options: dict[str, Any] | None = None,
                   *, stop_after: int | None = None) -> Result:
        """``stop_after`` pieces: leave the reply early (the library sends ``cancel``); the
        result's ``end`` is then the moment the client decided to leave."""
        result = Result()
        async with self.client.chat(prompt, model=model, options=options) as reply:
            async for text in reply:
                result.piece(text)
                if stop_after is not None and len(result.times) >= stop_after:
                    result.end = perf()
                    break
            else:
                result.end = perf()
        return result


# ---------------------------------------------------------------- conductor: WebSocket (JSON)


_ws_decode = msgspec.json.Decoder()


class WsPath:
    """One WebSocket connection: JSON text frames, token in ``hello``, the page's Origin."""

    def __init__(self, url: str, origin: str, token: str) -> None:
        self.url, self.origin, self.token = url, origin, token
        self.ws: Any = None
        self._ids = 0

    async def __aenter__(self) -> WsPath:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, origin=self.origin, compression=None, ping_interval=None,
                                max_size=None, proxy=None, open_timeout=60)
        await self.ws.send(encode(Hello(1, surface="bench-ws", token=self.token), "json"), text=True)
        welcome = decode_server(await self.ws.recv(decode=False), "json")
        if type(welcome) is Error:
            raise RuntimeError(f"ws hello refused: {welcome.code}: {welcome.message}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await self.ws.close()

    async def chat(self, prompt: str, model: str, options: dict[str, Any] | None = None) -> Result:
        self._ids += 1
        chat_id = f"w{self._ids}"
        result = Result()
        await self.ws.send(encode(Chat(chat_id, prompt, model=model, options=options), "json"), text=True)
        while True:
            message = decode_server(await self.ws.recv(decode=False), "json")
            kind = type(message)
            if kind is Token:
                result.piece(message.text)
            elif kind is Done:
                result.end = perf()
                return result
            elif kind is Error:
                raise RuntimeError(f"ws chat: {message.code}: {message.message}")


# ---------------------------------------------------------------- conductor: raw Unix frames


class RawUnix:
    """A bare Unix-socket surface (framing + msgpack, no reader task): for holding 1,000 idle
    connections and for disconnecting abruptly (no ``cancel`` sent)."""

    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.stream: Any = None
        self._decoder = FrameDecoder(64 << 20)
        self._pending: list[bytes] = []
        self._ids = 0

    async def connect(self) -> RawUnix:
        self.stream = await anyio.connect_unix(self.sock)
        await self.stream.send(encode_frame(encode(Hello(1, surface="bench-raw"))))
        welcome = await self.receive()
        if type(welcome) is Error:
            raise RuntimeError(f"hello refused: {welcome.code}: {welcome.message}")
        return self

    async def receive(self) -> Any:
        while not self._pending:
            self._decoder.receive_data(await self.stream.receive(65536))
            self._pending.extend(self._decoder.events_received())
        return decode_server(self._pending.pop(0))

    async def send_chat(self, chat_id: str, prompt: str, model: str, options: dict[str, Any] | None = None) -> None:
        await self.stream.send(encode_frame(encode(Chat(chat_id, prompt, model=model, options=options))))

    async def chat(self, prompt: str, model: str, options: dict[str, Any] | None = None) -> Result:
        self._ids += 1
        chat_id = f"r{self._ids}"
        result = Result()
        await self.send_chat(chat_id, prompt, model, options)
        while True:
            message = await self.receive()
            kind = type(message)
            if kind is Token:
                result.piece(message.text)
            elif kind is Done:
                result.end = perf()
                return result
            elif kind is Error:
                raise RuntimeError(f"raw chat: {message.code}: {message.message}")

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
