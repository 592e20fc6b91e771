"""The kernel: builds components from config, runs them in one task group, shuts down cleanly.

Start-up never waits on a backend: model catalogs are fetched in the background (``status``
and ``models`` show what is known so far) and backends' own background work (warm-up, probes)
starts after the transports accept connections.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from . import __version__
from .avatar_cache import AvatarCache, build_avatar_cache
from .backends import Backend
from .channel import Channel
from .config import ComponentSpec, Config, ConfigError, resolve_components
from .connection import Connection
from .errors import ShuttingDown
from .plugins import Registry, get_registry, pm
from .protocol import Hello, ModelInfo, ModelsReply, StatusReply
from .routing import Router

__all__ = ["Conductor"]

CATALOG_TIMEOUT_S = 5.0


class Conductor:
    """The running daemon. Build it with :meth:`from_config`, run it with :meth:`run`."""

    def __init__(
        self,
        config: Config,
        backends: list[Backend],
        router: Router,
        transports: dict[str, Any],
        avatar_cache: AvatarCache | None = None,
    ) -> None:
        self.config = config
        self.avatar_cache = avatar_cache  # None when [avatar] enabled = false
        self.version = __version__
        self.backends = {b.name: b for b in backends}
        self.router = router
        self.transports = transports
        self.catalog: dict[str, list[str] | None] = {name: None for name in self.backends}
        self.catalog_errors: dict[str, str] = {}
        self.connections: set[Connection] = set()
        self._active_chats = 0
        self.stopping = anyio.Event()
        self.stopped = anyio.Event()
        self.started_at = time.monotonic()
        self.log = logging.getLogger("conductor")
        self._stop_requested = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ building

    @classmethod
    def from_config(cls, config: Config, registry: Registry | None = None) -> Conductor:
        """Validate plugin sections and build every component (raises :class:`ConfigError`)."""
        registry = registry or get_registry()
        specs = resolve_components(config, registry)
        backends = [_build(spec, "backends") for spec in specs["backends"]]
        (router_spec,) = specs["routers"]
        try:
            router = router_spec.registration.factory(router_spec.config, backends)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{config.source}: router: {exc}") from None
        transports = {spec.name: _build(spec, "transports") for spec in specs["transports"]}
        return cls(config, backends, router, transports, build_avatar_cache(config, registry))

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`request_stop`; then drain for ``shutdown_grace_s`` and close."""
        try:
            async with anyio.create_task_group() as tg:
                await self._call_lifecycle("conductor_startup")
                for transport in self.transports.values():
                    await tg.start(transport.serve, self)
                for component in (*self.backends.values(), self.router):
                    if hasattr(component, "run"):  # background work: warm-up, probes
                        tg.start_soon(component.run)
                tg.start_soon(self.refresh_catalog)
                self.log.info(
                    "conductor %s serving: backends %s; transports %s",
                    self.version,
                    ", ".join(f"{n} ({type(b).__name__})" for n, b in self.backends.items()) or "none",
                    ", ".join(self.transports) or "none",
                )
                task_status.started()
                await self._stop_requested.wait()
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await self._call_lifecycle("conductor_shutdown")
                for backend in self.backends.values():
                    with anyio.move_on_after(5):
                        try:
                            await backend.aclose()
                        except Exception:
                            self.log.exception("backend %s failed to close", backend.name)
                self.stopped.set()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def _drain(self) -> None:
        self.stopping.set()
        grace = self.config.shutdown_grace_s
        if self.active_chats:
            self.log.info("waiting up to %g s for %d replies in flight", grace, self.active_chats)
            with anyio.move_on_after(grace):
                await self._idle.wait()
        error = ShuttingDown("the conductor is shutting down; reconnect in a moment")
        for conn in list(self.connections):
            conn.close(error)
        with anyio.move_on_after(2):
            for conn in list(self.connections):
                await conn.wait_closed()

    def chat_finished(self) -> None:
        if self.active_chats == 0:
            self._idle.set()

    async def serve_channel(self, channel: Channel, *, authenticate: Callable[[Hello], bool] | None = None) -> None:
        """Run one surface connection to its end; transports call this per connection."""
        conn = Connection(self, channel, authenticate)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    # ------------------------------------------------------------------ models and status

    async def refresh_catalog(self) -> None:
        async def one(name: str, backend: Backend) -> None:
            try:
                with anyio.fail_after(CATALOG_TIMEOUT_S):
                    self.catalog[name] = list(await backend.models())
                self.catalog_errors.pop(name, None)
            except Exception as exc:  # a backend that is down must not break the catalog
                self.catalog_errors[name] = str(exc) or type(exc).__name__

        async with anyio.create_task_group() as tg:
            for name, backend in self.backends.items():
                tg.start_soon(one, name, backend)

    def model_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for models in self.catalog.values():
            for m in models or ():
                seen.setdefault(m)
        return list(seen)

    async def models_reply(self) -> ModelsReply:
        await self.refresh_catalog()
        return ModelsReply(
            [ModelInfo(m, name) for name, models in self.catalog.items() for m in models or ()]
        )

    def status(self) -> StatusReply:
        backends: dict[str, dict[str, Any]] = {}
        for name, backend in self.backends.items():
            entry: dict[str, Any] = {"type": type(backend).__name__, "default_model": backend.default_model}
            models = self.catalog.get(name)
            entry["models"] = models if models is not None else "unknown"
            if name in self.catalog_errors:
                entry["last_error"] = self.catalog_errors[name]
            if hasattr(backend, "status"):
                try:
                    entry.update(backend.status())
                except Exception as exc:
                    entry["status_error"] = str(exc)
            backends[name] = entry
        if hasattr(self.router, "status"):  # the router's view: health, breaker, in flight
            try:
                for name, view in self.router.status().items():
                    backends.setdefault(name, {})["router"] = view  # nested: keys like `state` differ in meaning
            except Exception as exc:
                self.log.warning("router status failed: %s", exc)
        return StatusReply(
            server_version=self.version,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            sessions=len(self.connections),
            active_chats=self.active_chats,
            backends=backends,
            router=self.router.name,
            transports=list(self.transports),
            avatar_cache=self.avatar_cache.stats() if self.avatar_cache is not None else None,
            tasks=_task_count(),
        )

    async def _call_lifecycle(self, hook: str) -> None:
        for result in getattr(pm.hook, hook)(conductor=self):
            if inspect.isawaitable(result):
                await result

    @property
    def active_chats(self) -> int:
        return self._active_chats

    @active_chats.setter
    def active_chats(self, value: int) -> None:
        self._active_chats = value
        if value and self._idle.is_set():
            self._idle = anyio.Event()

    def __repr__(self) -> str:
        return f"<Conductor backends={list(self.backends)} connections={len(self.connections)} active_chats={self.active_chats}>"


def _task_count() -> int | None:
    """Tasks alive on the event loop (asyncio only), so a soak can see a task leak from outside."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not running on asyncio (trio)
        return None


def _build(spec: ComponentSpec, kind: str) -> Any:
    try:
        return spec.registration.factory(spec.name, spec.config)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{kind}.{spec.name}: {exc}") from None
