"""The OpenAI chat-completions backend: ``POST {base_url}/chat/completions`` with SSE streaming.

One pooled ``httpx.AsyncClient`` per backend, per-phase timeouts and no total deadline (a long
answer is not a failure). Each ``delta.content`` is yielded the moment its event is parsed; a
role-only first chunk yields nothing, so time-to-first-token counts from real text. Closing the
``chat()`` iterator closes the HTTP response, which is how a server learns to stop generating.

:class:`OpenAICompatBackend` is constructible directly from a ``base_url`` so other plugins
(the embedded llama.cpp one) reuse it instead of writing a second client.
"""

from __future__ import annotations

import logging
import os
from contextlib import aclosing, asynccontextmanager
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx
import msgspec
from conductor_core.backends import BackendHealth, ChatRequest, Finish, Timeouts
from conductor_core.errors import BackendBadRequest, BackendError, BackendUnavailable, StreamFailed

from .errors import error_from_status, error_message, map_transport_errors
from .sse import SSEError, SSEParser, StreamChunk, chunk_decoder

__all__ = ["OpenAICompatBackend", "build_body"]

log = logging.getLogger("conductor.openai")

# The kernel's generic option names -> the chat-completions field they become.
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "num_predict": "max_tokens",  # Ollama's name for the same thing
    "max_completion_tokens": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "response_format": "response_format",
}

_body_encoder = msgspec.json.Encoder()
_MAX_ERROR_BODY = 64 * 1024
_DRAIN_S = 1.0  # bound on reading past [DONE]; a server that keeps the stream open loses keep-alive


def _response_format(fmt: str | dict[str, Any]) -> dict[str, Any]:
    """``ChatRequest.format`` (Ollama's shape) as an OpenAI ``response_format``."""
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": fmt}}
    if fmt == "json":
        return {"type": "json_object"}
    raise ValueError(f"format must be 'json' or a JSON schema object, not {fmt!r}")


def build_body(
    request: ChatRequest,
    model: str | None,
    extra: Mapping[str, Any] | None = None,
    *,
    pass_unknown: bool = False,
) -> dict[str, Any]:
    """The JSON body for ``request``: streaming with usage, generic options mapped. Options with
    no chat-completions name are dropped (OpenAI itself rejects unknown fields) unless
    ``pass_unknown`` (llama.cpp and vLLM take ``top_k``, ``min_p``, ``repeat_penalty``...)."""
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    if extra:
        body.update(extra)
    if request.format is not None:
        body["response_format"] = _response_format(request.format)
    for key, value in (request.options or {}).items():
        field = OPTION_FIELDS.get(key, key if pass_unknown else None)
        if field is None:
            log.debug("option %r has no chat-completions equivalent; not sent", key)
            continue
        if value is None:
            continue
        if field == "stop" and isinstance(value, str):
            value = [value]
        body[field] = value
    return body


class OpenAICompatBackend:
    """A backend for any server speaking the OpenAI chat-completions API.

    ``health_url`` (absolute) replaces the ``GET /models`` probe, e.g. llama.cpp's ``/health``.
    ``transport`` is for tests (``httpx.MockTransport``); ``trust_env=False`` ignores proxy
    variables, which loopback servers want.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        default_model: str | None = None,
        timeouts: Timeouts = Timeouts(),
        extra_body: Mapping[str, Any] | None = None,
        health_url: str | None = None,
        max_connections: int = 16,
        trust_env: bool = True,
        pass_unknown_options: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, not {base_url!r}")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.default_model = default_model
        self.timeouts = timeouts
        self.health_url = health_url
        self._extra = dict(extra_body or {})
        self._pass_unknown = pass_unknown_options
        self._headers = {"Accept": "text/event-stream", **dict(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._has_key = bool(api_key)
        self._max_connections = max_connections
        self._trust_env = trust_env
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_lock = anyio.Lock()
        self._closed = False
        self._resolved_model: str | None = None

    def __repr__(self) -> str:
        key = "***" if self._has_key else "none"
        return f"<OpenAICompatBackend {self.name!r} {self.base_url} api_key={key}>"

    # --- the client ---

    def _make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(
                connect=self.timeouts.connect,
                read=self.timeouts.between_chunks,
                write=self.timeouts.write,
                pool=self.timeouts.pool,
            ),
            limits=httpx.Limits(
                max_connections=self._max_connections, max_keepalive_connections=self._max_connections
            ),
            trust_env=self._trust_env,
            transport=self._transport,
        )

    async def _get_client(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        if self._closed:
            raise BackendUnavailable(f"{self.name}: backend is closed", backend=self.name)
        async with self._client_lock:
            if self._client is None:
                # Building the client loads the CA bundle from disk (blocking I/O): do it off the loop.
                self._client = await anyio.to_thread.run_sync(self._make_client)
        return self._client

    async def __aenter__(self) -> OpenAICompatBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # --- the Backend protocol ---

    async def _model_for(self, request: ChatRequest) -> str | None:
        if request.model:
            return request.model
        if self.default_model:
            return self.default_model
        if self._resolved_model is None:
            names = await self.models()
            if not names:
                raise BackendError(f"{self.name}: the server lists no models; set default_model", backend=self.name)
            self._resolved_model = names[0]
        return self._resolved_model

    async def chat(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        model = await self._model_for(request)
        try:
            content = _body_encoder.encode(build_body(request, model, self._extra, pass_unknown=self._pass_unknown))
        except ValueError as exc:
            raise BackendBadRequest(f"{self.name}: {exc}", backend=self.name, model=model) from None
        client = await self._get_client()
        url = f"{self.base_url}/chat/completions"
        started = [False]
        state = _StreamState(model)
        with map_transport_errors(self.name, model, self.timeouts, started=started):
            request_ = client.build_request("POST", url, content=content, headers={"Content-Type": "application/json"})
            async with _closing(await _send(client, request_)) as response:
                if response.status_code != 200:
                    body = await _read_bounded(response)
                    raise error_from_status(
                        response.status_code, response.headers, body, backend=self.name, model=model, url=url
                    )
                parser = SSEParser()
                async with aclosing(response.aiter_bytes()) as chunks:
                    async for raw in chunks:
                        try:
                            events = parser.feed(raw)
                        except SSEError as exc:  # an oversize line or event: not a usable stream
                            raise StreamFailed(f"{self.name}: malformed event stream: {exc}", backend=self.name, model=model) from None
                        for event in events:
                            text = state.handle(event.event, event.data, self.name)
                            if text:
                                started[0] = True
                                yield text
                            elif state.done:
                                break
                        if state.done:
                            # Read the body's last bytes (normally already here) so the
                            # connection goes back to the pool instead of being dropped.
                            with anyio.move_on_after(_DRAIN_S):
                                async for _ in chunks:
                                    pass
                            break
                    else:
                        try:
                            tail = parser.close()
                        except SSEError as exc:
                            raise StreamFailed(f"{self.name}: malformed event stream: {exc}", backend=self.name, model=model) from None
                        if tail is not None:
                            state.handle(tail.event, tail.data, self.name)
        if not (state.done or state.finish_reason):
            raise StreamFailed(
                f"{self.name}: the stream ended without [DONE] or a finish_reason (reply cut off)",
                backend=self.name,
                model=model,
            )
        yield state.finish()

    async def models(self) -> list[str]:
        client = await self._get_client()
        url = f"{self.base_url}/models"
        with map_transport_errors(self.name, None, self.timeouts):
            response = await _send(client, client.build_request("GET", url), stream=False)
        if response.status_code != 200:
            raise error_from_status(
                response.status_code, response.headers, response.content, backend=self.name, model=None, url=url
            )
        try:
            listing = _models_decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise BackendError(f"{self.name}: unexpected /models answer: {exc}", backend=self.name) from None
        return [m.id for m in listing.data]

    async def get_bytes(self, url: str) -> bytes:
        """GET an absolute URL on this server with the backend's pool and headers (e.g.
        llama.cpp's ``/slots`` or ``/metrics``); errors are the typed ones."""
        client = await self._get_client()
        with map_transport_errors(self.name, None, self.timeouts):
            response = await _send(client, client.build_request("GET", url), stream=False)
        if response.status_code != 200:
            raise error_from_status(
                response.status_code, response.headers, response.content, backend=self.name, model=None, url=url
            )
        return response.content

    async def get_json(self, url: str) -> Any:
        """:meth:`get_bytes`, decoded as JSON."""
        content = await self.get_bytes(url)
        try:
            return msgspec.json.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BackendError(f"{self.name}: {url} did not answer JSON: {exc}", backend=self.name) from None

    async def health(self) -> BackendHealth:
        """Cheap: ``health_url`` if set, else ``GET /models``. 503 means loading: "starting"."""
        url = self.health_url or f"{self.base_url}/models"
        try:
            client = await self._get_client()
        except BackendError as exc:
            return BackendHealth("down", exc.message)
        begin = anyio.current_time()
        try:
            with map_transport_errors(self.name, None, self.timeouts):
                probe = client.build_request(
                    "GET", url, timeout=httpx.Timeout(min(self.timeouts.between_chunks, 10.0), connect=self.timeouts.connect)
                )
                response = await _send(client, probe, stream=False)
        except BackendError as exc:
            return BackendHealth("down", exc.message)
        latency_ms = (anyio.current_time() - begin) * 1000
        if response.status_code == 200:
            return BackendHealth("up", "", latency_ms)
        if response.status_code == 503:
            return BackendHealth("starting", error_message(response.content), latency_ms)
        return BackendHealth("down", f"{response.status_code}: {error_message(response.content)}", latency_ms)


class _ModelEntry(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelEntry] = []


_models_decoder = msgspec.json.Decoder(_ModelList)


_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def _send(client: httpx.AsyncClient, request: httpx.Request, *, stream: bool = True) -> httpx.Response:
    """Send, retrying once when the server dropped the connection before answering.

    A pooled keep-alive connection can be closed by the server just as we reuse it (llama.cpp
    does this after streamed replies): the request then fails with no response at all, so
    nothing was processed and one retry on a fresh connection is safe. A second failure is real.
    """
    try:
        return await client.send(request, stream=stream)
    except _STALE as exc:
        log.debug("connection dropped before a response (%s); retrying once", exc)
        return await client.send(request, stream=stream)


@asynccontextmanager
async def _closing(response: httpx.Response) -> AsyncIterator[httpx.Response]:
    try:
        yield response
    finally:
        await response.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    """An error body, read only up to a bound (a misbehaving server could stream forever)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= _MAX_ERROR_BODY:
            break
    return b"".join(parts)[:_MAX_ERROR_BODY]


class _StreamState:
    """What one stream has said so far: the parts of the final :class:`Finish`."""

    __slots__ = ("done", "finish_reason", "generation_s", "model", "usage")

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.done = False
        self.finish_reason: str | None = None
        self.usage = None
        self.generation_s: float | None = None

    def handle(self, event: str, data: bytes, backend: str) -> str | None:
        """One SSE event; returns its text (``None`` for role-only, usage and control events)."""
        if event == "error":
            raise StreamFailed(f"{backend}: the server reported an error mid-stream: {error_message(data)}",
                               backend=backend, model=self.model)
        if event != "message":
            return None
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            chunk: StreamChunk = chunk_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            shown = data[:200].decode("utf-8", "replace")
            raise StreamFailed(f"{backend}: malformed event from the server ({exc}): {shown!r}",
                               backend=backend, model=self.model) from None
        if chunk.error is not None:
            raise StreamFailed(f"{backend}: the server reported an error mid-stream: {error_message(data)}",
                               backend=backend, model=self.model)
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.timings is not None and chunk.timings.predicted_ms is not None:
            self.generation_s = chunk.timings.predicted_ms / 1000
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        return choice.delta.content or None

    def finish(self) -> Finish:
        usage = self.usage
        return Finish(
            model=self.model or "",
            finish_reason=self.finish_reason or "stop",
            completion_tokens=usage.completion_tokens if usage else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            generation_s=self.generation_s,
        )


def api_key_from(config_key: str | None, env_name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: the config value, else the environment variable it names."""
    if config_key:
        return config_key
    if env_name:
        value = (os.environ if environ is None else environ).get(env_name)
        return value or None
    return None
