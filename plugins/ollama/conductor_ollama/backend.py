"""The Ollama backend: native ``/api/chat`` streaming with ``keep_alive`` on every request.

Hot path: one pooled :class:`conductor_core.httpclient.StreamingClient` (HTTP/1.1 keep-alive;
not httpx, which cost ~2 ms per request and most of the CPU per token in the benchmark), the body encoded by one
msgspec encoder, the NDJSON stream split into lines as bytes arrive and decoded by one reused
msgspec decoder into a view struct, each ``message.content`` yielded at once. Timeouts are per
phase (connect, between chunks = per read, pool, write); there is no total deadline.

Cancellation: the consumer stops iterating, and the response is closed at once, so Ollama stops
generating. The exception is a cancel *before the first byte*: Ollama may still be loading the
model, and a disconnect would make it throw the load away. So a consumer that gives up after the
request was sent but before the response head hands the connection to a task of :meth:`run`'s
task group, which waits for the head (the load is then done) and closes it. The next request
finds the model warm. No extra task runs on the normal path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import msgspec

from conductor_core.backends import BackendHealth, ChatRequest, Finish, Message
from conductor_core import httpclient
from conductor_core.errors import BackendError, ModelNotFound, StreamFailed

from .host import resolve_url
from .mapping import error_from_status, error_from_transport, error_message
from .plugin import OllamaConfig
from .stream import LineSplitter, LineTooLong, decode_line, finish_from, preview

__all__ = ["OllamaBackend"]

log = logging.getLogger("conductor.backends.ollama")


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    keep_alive: str | int | float
    stream: bool  # no default: omit_defaults would drop it
    options: dict[str, Any] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | None = None


class _Name(msgspec.Struct):
    name: str = ""
    model: str = ""


class _Models(msgspec.Struct):
    models: list[_Name] = []


class _Version(msgspec.Struct):
    version: str = "?"


class _Show(msgspec.Struct):
    model_info: dict[str, Any] = {}


class _LoadReply(msgspec.Struct):
    done_reason: str | None = None
    error: Any = None


_encode = msgspec.json.Encoder().encode
_models_decoder = msgspec.json.Decoder(_Models)
_version_decoder = msgspec.json.Decoder(_Version)
_show_decoder = msgspec.json.Decoder(_Show)
_load_decoder = msgspec.json.Decoder(_LoadReply)
_JSON = {"Content-Type": "application/json"}
DRAIN_S = 1.0  # how long to wait for the end of the body after the done line


class OllamaBackend:
    """A configured Ollama instance (see :class:`~conductor_ollama.plugin.OllamaConfig`)."""

    def __init__(self, name: str, config: OllamaConfig | None = None) -> None:
        self.name = name
        self.config = config = config or OllamaConfig()
        self.url = config.url or resolve_url(None)
        self.default_model = config.default_model
        t = config.timeouts
        self._between_chunks = t.between_chunks
        # no proxy support on purpose: a local daemon must not route 127.0.0.1 through $HTTP_PROXY
        self._client = httpclient.StreamingClient(
            self.url, timeouts=t, max_connections=config.max_connections, headers=dict(config.headers)
        )
        self._tg: anyio.abc.TaskGroup | None = None
        self._first_model: str | None = None
        self._context_lengths: dict[str, int | None] = {}
        self._preload: dict[str, dict[str, Any]] = {m: {"state": "pending"} for m in config.preload}
        self.loads_kept = 0  # requests abandoned before their first byte whose load was kept

    def __repr__(self) -> str:
        return f"<OllamaBackend {self.name!r} {self.url} keep_alive={self.config.keep_alive!r}>"

    # -- background ----------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Owns the background tasks: preloading and requests abandoned during a model load."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                for model in self.config.preload:
                    tg.start_soon(self._warm, model)
                await anyio.sleep_forever()
            finally:
                self._tg = None

    async def _warm(self, model: str) -> None:
        self._preload[model] = {"state": "loading"}
        started = time.perf_counter()
        try:
            await self.load(model)
        except BackendError as exc:
            self._preload[model] = {"state": "failed", "error": exc.message}
            log.warning("%s: preloading %s failed: %s", self.name, model, exc.message)
        else:
            self._preload[model] = {"state": "loaded", "seconds": round(time.perf_counter() - started, 3)}

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "keep_alive": self.config.keep_alive,
            "default_model": self.default_model or self._first_model,
            "preload": {m: dict(s) for m, s in self._preload.items()},
            "loads_kept": self.loads_kept,
        }

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._client.aclose()

    # -- chat ----------------------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        """Stream the reply: ``str`` pieces, then one :class:`Finish`. See the module docstring."""
        model = request.model or self.default_model or await self._default_model()
        body = _encode(
            _ChatBody(
                model=model,
                messages=request.messages,
                stream=True,
                keep_alive=request.keep_alive if request.keep_alive is not None else self.config.keep_alive,
                options=request.options,
                format=request.format,
                think=request.think,
            )
        )
        response = await self._open(body, model)
        pieces = 0
        try:
            splitter = LineSplitter()
            final = None
            chunks = response.aiter_raw()
            try:
                async for data in chunks:
                    for line in splitter.feed(data):
                        final = self._line(line, model, pieces)
                        if final is None:
                            continue
                        if isinstance(final, str):
                            pieces += 1
                            yield final
                            final = None
                        else:
                            break
                    if final is not None:
                        break
                if final is not None and not response.complete:  # usually the end came with the done line
                    await self._drain(chunks)
                else:
                    rest = splitter.flush()
                    if rest:
                        final = self._line(rest, model, pieces)
                        if isinstance(final, str):
                            pieces += 1
                            yield final
                            final = None
            except httpclient.HTTPError as exc:
                raise error_from_transport(
                    exc, url=self.url, model=model, backend=self.name, started=True, between_chunks=self._between_chunks
                ) from exc
            except LineTooLong as exc:
                raise StreamFailed(f"Ollama at {self.url} sent a malformed stream: {exc}", backend=self.name, model=model) from exc
            if final is None:
                raise StreamFailed(
                    f"the stream from Ollama at {self.url} ended without its final (done) line after {pieces} pieces",
                    backend=self.name,
                    model=model,
                )
            yield final
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    @staticmethod
    async def _drain(chunks: AsyncIterator[bytes]) -> None:
        """Read the end of the body after the done line, so the connection goes back to the
        pool. Ollama ends the body right after that line; a server that does not is not waited
        for (the connection is then closed instead of reused)."""
        with anyio.move_on_after(DRAIN_S):
            try:
                async for _ in chunks:
                    pass
            except httpclient.HTTPError:
                pass

    def _line(self, line: bytes, model: str, pieces: int) -> str | Finish | None:
        try:
            parsed = decode_line(line)
        except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec reports bad UTF-8 in a string as the latter
            raise StreamFailed(
                f"Ollama at {self.url} sent a malformed line after {pieces} pieces: {preview(line)!r}",
                backend=self.name,
                model=model,
            ) from None
        if parsed.error is not None:
            raise StreamFailed(f"Ollama failed mid-stream: {parsed.error}", backend=self.name, model=model)
        if parsed.done:
            return finish_from(parsed, model)
        message = parsed.message
        if message is not None and message.content:
            return message.content
        return None

    async def _open(self, body: bytes, model: str) -> httpclient.Response:
        """Send the request and return the 200 response once its head arrived."""
        return await self._send(body, model, on_abandon=self._keep_load if self._tg is not None else None)

    def _keep_load(self, abandoned: httpclient.Abandoned) -> None:
        """The consumer left before the first byte: Ollama may be loading the model, and closing
        the connection now would throw the load away. Wait for the head in the background."""
        assert self._tg is not None
        self._tg.start_soon(self._finish_abandoned, abandoned)

    async def _finish_abandoned(self, abandoned: httpclient.Abandoned) -> None:
        if await abandoned.wait_head() is not None:
            self.loads_kept += 1
            log.debug("%s: kept a model load for a request cancelled before its first byte", self.name)

    async def _send(self, body: bytes, model: str, on_abandon=None) -> httpclient.Response:
        try:
            response = await self._client.request("POST", "/api/chat", body, _JSON, on_abandon=on_abandon)
        except httpclient.HTTPError as exc:
            raise error_from_transport(
                exc, url=self.url, model=model, backend=self.name, started=False, between_chunks=self._between_chunks
            ) from exc
        if response.status_code != 200:
            try:
                data = await response.aread()
            except httpclient.HTTPError:
                data = b""
            finally:
                await response.aclose()
            raise error_from_status(response.status_code, data, response.headers, url=self.url, model=model, backend=self.name)
        return response

    # -- everything but chat -----------------------------------------------------------------
    async def _call(self, method: str, path: str, model: str | None = None, body: Any = None) -> bytes:
        try:
            response = await self._client.request(method, path, b"" if body is None else _encode(body), _JSON)
            try:
                data = await response.aread()
            finally:
                await response.aclose()
        except httpclient.HTTPError as exc:
            raise error_from_transport(
                exc, url=self.url, model=model, backend=self.name, started=False, between_chunks=self._between_chunks
            ) from exc
        if response.status_code != 200:
            raise error_from_status(response.status_code, data, response.headers, url=self.url, model=model, backend=self.name)
        return data

    def _decode(self, decoder: msgspec.json.Decoder, data: bytes, what: str) -> Any:
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BackendError(f"Ollama at {self.url} sent an unexpected {what} reply: {exc}", backend=self.name) from exc

    async def models(self) -> list[str]:
        """Installed models (``GET /api/tags``)."""
        data = self._decode(_models_decoder, await self._call("GET", "/api/tags"), "/api/tags")
        names = [m.name or m.model for m in data.models]
        if names:
            self._first_model = names[0]
        return names

    async def loaded_models(self) -> list[str]:
        """Models loaded right now (``GET /api/ps``), for routing to where a model is hot."""
        data = self._decode(_models_decoder, await self._call("GET", "/api/ps"), "/api/ps")
        return [m.name or m.model for m in data.models]

    async def context_length(self, model: str) -> int | None:
        """The model's context window (``POST /api/show``), cached per model."""
        if model not in self._context_lengths:
            data = self._decode(_show_decoder, await self._call("POST", "/api/show", model, {"model": model}), "/api/show")
            length = next((v for k, v in data.model_info.items() if k.endswith(".context_length") and isinstance(v, int)), None)
            self._context_lengths[model] = length
        return self._context_lengths[model]

    async def _default_model(self) -> str:
        if self._first_model is None:
            names = await self.models()
            if not names:
                raise ModelNotFound(
                    f"Ollama at {self.url} has no models and no default_model is configured (hint: `ollama pull llama3.2`)",
                    backend=self.name,
                )
        assert self._first_model is not None
        return self._first_model

    async def health(self) -> BackendHealth:
        """``GET /api/version``: fast, no generation. Never raises."""
        started = time.perf_counter()
        try:
            data = self._decode(_version_decoder, await self._call("GET", "/api/version"), "/api/version")
        except BackendError as exc:
            return BackendHealth(state="down", detail=exc.message)
        return BackendHealth(state="up", detail=f"ollama {data.version}", latency_ms=(time.perf_counter() - started) * 1000)

    async def load(self, model: str, keep_alive: str | int | float | None = None) -> str:
        """Load ``model`` (``/api/chat`` with no messages); returns Ollama's done_reason ("load")."""
        return await self._load_call(model, self.config.keep_alive if keep_alive is None else keep_alive)

    async def unload(self, model: str) -> str:
        """Unload ``model`` now (``keep_alive: 0``); returns Ollama's done_reason ("unload")."""
        return await self._load_call(model, 0)

    async def _load_call(self, model: str, keep_alive: str | int | float) -> str:
        body = _ChatBody(model=model, messages=[], keep_alive=keep_alive, stream=False)
        data = await self._call("POST", "/api/chat", model, body)
        reply = self._decode(_load_decoder, data, "/api/chat")
        if reply.error is not None:
            raise BackendError(f"Ollama could not load {model}: {error_message(data)}", backend=self.name, model=model)
        return reply.done_reason or ""
