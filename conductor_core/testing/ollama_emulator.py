"""A faithful, fast Ollama emulator: a real HTTP/1.1 server on loopback speaking Ollama's API.

Why: backend plugins and the kernel are tested against real sockets and real HTTP, with
deterministic tokens, chosen timing (time to first token, inter-token delay, cold-load time),
Ollama's load/unload and keep_alive semantics, and injected faults, none of which a real Ollama
gives on demand. Counters tell a test what the server saw (requests, keep_alive values,
cancelled streams, aborted loads, connections opened).

In a test::

    async with OllamaEmulator(models=["llama3.2"], token_delay=0.0) as emu:
        ...  # talk to emu.url
        emu.faults.append(Fault(status=503))  # the next generation request gets a 503
        await emu.wait_until(lambda s: s.streams_cancelled == 1)

Standalone (a benchmark runs it in its own process)::

    python -m conductor_core.testing.ollama_emulator --port 11500 --token-delay-ms 10 \\
        --model llama3.2 --fault broken=status=500
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from .http11 import DropConnection, HTTPServer, Request, Response, StreamWriter
from .ollama_native import NativeRoutes
from .ollama_openai import OpenAIRoutes
from .ollama_state import (
    FOREVER,
    NOT_FOUND,
    EmulatedModel,
    Fault,
    ModelState,
    Stats,
    default_error,
    parse_keep_alive,
    rfc3339,
    split_tokens,
)

__all__ = ["EmulatedModel", "Fault", "OllamaEmulator", "Stats", "main"]

log = logging.getLogger("conductor.testing.ollama_emulator")

VERSION = "0.12.6"
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
MAX_BODIES = 1000


def _json(status: int, obj: Any) -> Response:
    return Response(status, _enc.encode(obj))


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


class Generation:
    """One generation request, decoded: what to say and how (shared by every route)."""

    __slots__ = ("model", "echo", "spec", "fault", "tokens", "done_reason", "keep_alive_s", "prompt_tokens", "empty", "stream")

    def __init__(self, model: str, spec: EmulatedModel, fault: Fault | None, tokens: list[str], done_reason: str,
                 keep_alive_s: float, prompt_tokens: int, empty: bool, stream: bool):
        self.model = model
        self.echo = model
        self.spec = spec
        self.fault = fault
        self.tokens = tokens
        self.done_reason = done_reason
        self.keep_alive_s = keep_alive_s
        self.prompt_tokens = prompt_tokens
        self.empty = empty
        self.stream = stream


class OllamaEmulator:
    """See the module docstring. ``models`` are names or :class:`EmulatedModel`\\ s; ``loaded``
    names models that start hot; ``load_time`` is the cold-load time (seconds)."""

    def __init__(
        self,
        models: list[str | EmulatedModel] | None = None,
        *,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        load_time: float = 0.0,
        reply: str | None = None,
        tokens: list[str] | None = None,
        token_count: int | None = None,
        loaded: list[str] | None = None,
        faults: dict[str, Fault] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models: dict[str, EmulatedModel] = {}
        for item in models if models is not None else ["llama3.2"]:
            spec = item if isinstance(item, EmulatedModel) else EmulatedModel(item)
            self.models[spec.name] = spec
        for name, fault in (faults or {}).items():
            self.model(name).fault = fault
        self.ttft = ttft
        self.token_delay = token_delay
        self.load_time = load_time
        self.reply = reply
        self.tokens = tokens
        self.token_count = token_count
        self.faults: collections.deque[Fault] = collections.deque()
        self.stats = Stats()
        self.state: dict[str, ModelState] = {name: ModelState() for name in self.models}
        for name in loaded or []:
            st = self.state[self.model(name).name]
            st.loaded, st.expires_at = True, time.time() + 300.0
        self._server = HTTPServer(self._handle, host=host, port=port, on_connection=self._on_connection,
                                  on_disconnect=self._on_disconnect)
        self._changed = anyio.Event()
        self._release = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._tg: Any = None
        self._openai = OpenAIRoutes(self)
        self._native = NativeRoutes(self)
        self._token_cache: dict[str, bytes] = {}
        self._routes: dict[tuple[str, str], Callable[..., Any]] = {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("HEAD", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/chat"): self._native.chat,
            ("POST", "/api/generate"): self._native.generate,
            ("POST", "/v1/chat/completions"): self._openai.chat,
            ("GET", "/v1/models"): self._openai.models,
        }

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    async def __aenter__(self) -> OllamaEmulator:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._server.serve)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        if self._server.errors and exc[0] is None:
            raise RuntimeError(f"the Ollama emulator hit internal errors: {self._server.errors}")

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._server.serve(task_status=task_status)

    # -- helpers for tests -------------------------------------------------------------------
    def model(self, name: str) -> EmulatedModel:
        spec = self.models.get(name) or self.models.get(f"{name}:latest")
        if spec is None:
            raise KeyError(f"the emulator has no model {name!r} (has: {', '.join(self.models)})")
        return spec

    def is_loaded(self, name: str) -> bool:
        self._expire()
        return self.state[self.model(name).name].loaded

    def release(self) -> None:
        """Let every hanging request continue."""
        self._release.set()
        self._release = anyio.Event()

    async def wait_until(self, predicate: Callable[[Stats], bool]) -> Stats:
        """Wait (no polling, no sleeps) until ``predicate(stats)`` holds."""
        while not predicate(self.stats):
            await self._changed.wait()
        return self.stats

    def _bump(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _on_connection(self) -> None:
        self.stats.connections_opened += 1
        self._bump()

    def _on_disconnect(self, request: Request, started: bool) -> None:
        if request.state == "load":
            self.stats.loads_aborted += 1
            self.stats.statuses[499] += 1
        elif request.state == "stream":
            self.stats.streams_cancelled += 1
        self._bump()

    def _expire(self) -> None:
        now = time.time()
        for st in self.state.values():
            if st.loaded and st.expires_at is not None and st.expires_at <= now:
                st.loaded = False
                self.stats.unloads += 1

    # -- dispatch ----------------------------------------------------------------------------
    async def _handle(self, request: Request, start_stream: Callable[[int, str], StreamWriter]) -> Response | None:
        self.stats.requests[request.path] += 1
        self._bump()
        route = self._routes.get((request.method, request.path))
        if route is None:
            if any(path == request.path for _, path in self._routes):
                response: Response | None = Response(405, b"405 method not allowed", "text/plain")
            else:
                response = Response(404, b"404 page not found", "text/plain")
        else:
            response = await route(request, start_stream)
        self.stats.statuses[response.status if response is not None else 200] += 1
        self._bump()
        return response

    async def _root(self, request: Request, _: Any) -> Response:
        return Response(200, b"Ollama is running", "text/plain; charset=utf-8")

    async def _version(self, request: Request, _: Any) -> Response:
        return _json(200, {"version": VERSION})

    def _entry(self, spec: EmulatedModel) -> dict[str, Any]:
        return {
            "name": spec.name,
            "model": spec.name,
            "modified_at": "2025-10-01T10:00:00.000000000Z",
            "size": spec.size,
            "digest": spec.digest,
            "details": spec.details(),
        }

    async def _tags(self, request: Request, _: Any) -> Response:
        return _json(200, {"models": [self._entry(spec) for spec in self.models.values()]})

    async def _ps(self, request: Request, _: Any) -> Response:
        self._expire()
        out = []
        for name, st in self.state.items():
            if st.loaded:
                spec = self.models[name]
                entry = self._entry(spec)
                del entry["modified_at"]
                expires = st.expires_at if st.expires_at is not None and math.isfinite(st.expires_at) else 10_979_000_000.0
                entry.update(expires_at=rfc3339(expires), size_vram=spec.size, context_length=spec.context_length)
                out.append(entry)
        return _json(200, {"models": out})

    async def _show(self, request: Request, _: Any) -> Response:
        body = self.body(request)
        if isinstance(body, Response):
            return body
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not name:
            return _error(400, "model is required")
        try:
            spec = self.model(name)
        except KeyError:
            return _error(404, f"model '{name}' not found")
        arch = spec.family
        return _json(200, {
            "modelfile": f"# Modelfile generated by the conductor's Ollama emulator\nFROM {spec.name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": spec.details(),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": 3_212_749_888,
                f"{arch}.context_length": spec.context_length,
                f"{arch}.embedding_length": 3072,
            },
            "capabilities": ["completion"],
            "modified_at": "2025-10-01T10:00:00.000000000Z",
        })

    def body(self, request: Request) -> Any:
        if not request.body:
            return _error(400, "missing request body")
        try:
            body = _dec.decode(request.body)
        except msgspec.DecodeError as exc:
            return _error(400, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
        self.stats.last_bodies[request.path] = body
        return body

    # -- generation ----------------------------------------------------------------------------
    def prepare(self, request: Request, body: dict[str, Any], prompt: str, empty: bool,
                num_predict: Any, keep_alive: Any, stream: bool) -> Generation | Response:
        """Shared by /api/chat, /api/generate and /v1/chat/completions: pick the fault, check
        the model and keep_alive, and decide the tokens."""
        if len(self.stats.bodies) < MAX_BODIES:
            self.stats.bodies.append(body)
        model = body.get("model")
        if not model or not isinstance(model, str):
            return _error(400, "model is required")
        try:
            spec = self.model(model)
        except KeyError:
            spec = None
        fault = self.faults.popleft() if self.faults else (spec.fault if spec else None)
        if fault is not None and fault.status is not None:
            return _error(fault.status, fault.message or default_error(fault.status, model))
        if spec is None:
            return _error(404, NOT_FOUND.format(model=model))
        try:
            keep_alive_s = parse_keep_alive(keep_alive)
        except ValueError as exc:
            return _error(400, str(exc))
        base = spec.tokens or self.tokens or split_tokens(spec.reply or self.reply or f"Emulated reply to: {prompt[-200:]}")
        want = num_predict if isinstance(num_predict, int) and num_predict >= 0 else self.token_count
        if want is None:
            tokens, reason = list(base), "stop"
        else:
            tokens = [base[i % len(base)] for i in range(want)]
            reason = "stop" if want == len(base) else "length"
        prompt_tokens = max(1, len(prompt.split()))
        gen = Generation(spec.name, spec, fault, tokens, reason, keep_alive_s, prompt_tokens, empty, stream)
        gen.echo = model  # Ollama answers with the name the client used
        return gen

    async def ensure_loaded(self, request: Request, gen: Generation) -> float:
        """Load the model if cold (taking ``load_time``); returns the load time in seconds.
        A client that disconnects here aborts the load, like Ollama (the model stays cold)."""
        self._expire()
        st = self.state[gen.model]
        started = time.perf_counter()
        load_time = gen.fault.load_time if gen.fault and gen.fault.load_time is not None else self.load_time
        while not st.loaded:
            if st.loading is not None:
                await st.loading.wait()
                continue
            st.loading = event = anyio.Event()
            request.state = "load"
            try:
                if load_time > 0:
                    await anyio.sleep(load_time)
                st.loaded = True
                self.stats.loads += 1
            finally:
                st.loading = None
                event.set()
        request.state = "loaded"
        return time.perf_counter() - started

    def after_reply(self, gen: Generation) -> None:
        st = self.state[gen.model]
        if gen.keep_alive_s == 0:
            if st.loaded:
                st.loaded = False
                self.stats.unloads += 1
        else:
            st.expires_at = time.time() + gen.keep_alive_s if math.isfinite(gen.keep_alive_s) else FOREVER

    async def load_or_unload(self, request: Request, gen: Generation) -> str:
        """The empty-request form: returns the done_reason ("load" or "unload")."""
        if gen.keep_alive_s == 0:
            st = self.state[gen.model]
            if st.loaded:
                st.loaded = False
                self.stats.unloads += 1
            return "unload"
        await self.ensure_loaded(request, gen)
        self.after_reply(gen)
        return "load"

    async def _hang(self) -> None:
        await self._release.wait()

    async def run_tokens(self, request: Request, gen: Generation, writer: StreamWriter | None,
                         frame: Callable[[str], bytes], error_frame: Callable[[str], bytes],
                         garbage: bytes) -> tuple[int, int]:
        """Emit the tokens with the chosen timing and faults. With ``writer`` None (a
        non-streaming request) nothing is written. Returns (tokens sent, eval ns), or raises
        DropConnection; returns (-1, 0) after an in-stream error line."""
        fault = gen.fault or Fault()
        ttft = fault.ttft if fault.ttft is not None else self.ttft
        delay = fault.token_delay if fault.token_delay is not None else self.token_delay
        request.state = "stream"
        if fault.hang_before_first_byte:
            await self._hang()
        if ttft > 0:
            await anyio.sleep(ttft)
        started = time.perf_counter_ns()
        # Tokens are due on a fixed schedule (like a model generating at its own pace), not
        # `delay` after the previous write: a reader slowed by CPU contention must not make
        # the emulator itself slower, or a benchmark would measure the emulator's drift.
        due = anyio.current_time()
        for i, token in enumerate(gen.tokens):
            if i == fault.die_after:
                raise DropConnection()
            if i == fault.error_after:
                if writer is not None:
                    await writer.write(error_frame(fault.message or "an error was encountered while running the model"))
                return -1, 0
            if i == fault.garbage_after and writer is not None:
                await writer.write(garbage)
            if i == fault.hang_after:
                await self._hang()
            if i and delay > 0:
                due += delay
                wait = due - anyio.current_time()
                await anyio.sleep(wait if wait > 0 else 0)
            if writer is not None:
                if i == 0:
                    self.stats.streams_started += 1
                await writer.write(frame(token))
        n = len(gen.tokens)
        if n == fault.die_after:
            raise DropConnection()
        if n == fault.error_after:
            if writer is not None:
                await writer.write(error_frame(fault.message or "an error was encountered while running the model"))
            return -1, 0
        if n == fault.hang_after:
            await self._hang()
        return n, max(1, time.perf_counter_ns() - started)

    def enc_token(self, token: str) -> bytes:
        cached = self._token_cache.get(token)
        if cached is None:
            cached = self._token_cache[token] = _enc.encode(token)
        return cached


def main(argv: list[str] | None = None) -> None:
    """Run the emulator until interrupted (for benchmarks and manual testing)."""
    parser = argparse.ArgumentParser(prog="python -m conductor_core.testing.ollama_emulator", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--model", action="append", dest="models", help="a model name (repeatable)")
    parser.add_argument("--loaded", action="append", default=[], help="a model that starts loaded")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--load-time-ms", type=float, default=0.0)
    parser.add_argument("--reply", default=None, help="fixed reply text")
    parser.add_argument("--tokens", type=int, default=None, help="token count when a request sets no num_predict")
    parser.add_argument("--fault", action="append", default=[], metavar="MODEL=SPEC",
                        help='per-model fault, e.g. "broken=status=500" or "slow=token_delay=0.1"')
    args = parser.parse_args(argv)
    faults = {}
    for item in args.fault:
        name, sep, spec = item.partition("=")
        if not sep:
            parser.error(f"--fault wants MODEL=SPEC, got {item!r}")
        faults[name] = Fault.parse(spec)
    models = list(args.models or ["llama3.2"]) + [name for name in faults if name not in (args.models or [])]
    emulator = OllamaEmulator(
        models, ttft=args.ttft_ms / 1000, token_delay=args.token_delay_ms / 1000, load_time=args.load_time_ms / 1000,
        reply=args.reply, token_count=args.tokens, loaded=args.loaded, faults=faults, host=args.host, port=args.port,
    )

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(emulator.serve)
            print(f"ollama emulator listening on http://{args.host}:{port}", flush=True)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
