"""The ``health`` router: ties trackers, limiters and the ordering together.

The kernel calls :meth:`HealthRouter.candidates` once per request, enters
:meth:`HealthRouter.attempt` around each try, and tells :meth:`HealthRouter.report` how it
went; :meth:`HealthRouter.run` probes in the background and :meth:`HealthRouter.status` feeds
``conductor status``. All timing decisions read ``router.clock`` (default
:func:`time.monotonic`), so tests drive time by hand; only the probe loop and the queue wait
really sleep.

Backends may implement the optional :class:`LoadedModels` protocol (the Ollama plugin does,
from ``/api/ps``), or put ``loaded_models`` in their ``status()`` dict, so that requests go
where their model is already in memory.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.abc

from conductor_core.backends import Backend
from conductor_core.errors import ConductorError
from conductor_core.relay import MAX_ATTEMPTS
from conductor_core.routing import Outcome, serves

from .choose import Candidate, all_unhealthy, order
from .health import BackendTracker, HealthPolicy
from .limits import Limiter

if TYPE_CHECKING:
    from .plugin import HealthConfig

__all__ = ["DEFAULT_CLOCK", "HealthRouter", "LoadedModels"]

log = logging.getLogger("conductor.router.health")

DEFAULT_CLOCK: Callable[[], float] = time.monotonic  # read when a router is built (tests replace it)


@runtime_checkable
class LoadedModels(Protocol):
    """Optional backend method: the models loaded in memory right now (cheap; no generation)::

        async def loaded_models(self) -> list[str]:
            return [m["name"] for m in (await self._get("/api/ps"))["models"]]
    """

    async def loaded_models(self) -> list[str]: ...


class _Request:
    """Per-request state, kept in a context variable between candidates(), attempt() and report()
    (the relay calls all three from the chat's own task)."""

    __slots__ = ("key", "model", "started", "plan", "last", "attempt_started", "deadline", "failures")

    def __init__(self, key: str | None, model: str | None, started: float, plan: dict[str, str | None], last: str | None) -> None:
        self.key = key
        self.model = model
        self.started = started
        self.plan = plan  # backend -> the model name used there
        self.last = last  # the last backend the relay will try
        self.attempt_started = started
        self.deadline: float | None = None  # queue deadline (event-loop time), shared by all attempts
        self.failures: list[tuple[str, str]] = []


_current: ContextVar[_Request | None] = ContextVar("conductor_router_health_request", default=None)


class HealthRouter:
    """Router type ``health``. ``factory(config, backends)`` as the kernel calls it."""

    def __init__(
        self,
        config: HealthConfig | None = None,
        backends: Sequence[Backend] = (),
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if config is None:
            from .plugin import HealthConfig

            config = HealthConfig()
        self.name = "health"
        self.config = config
        self.clock = clock if clock is not None else DEFAULT_CLOCK
        self.rng = rng or random.Random()
        self.backends = list(backends)
        self.by_name = {b.name: b for b in self.backends}
        self._check_names()
        policy = HealthPolicy(
            failure_threshold=config.failure_threshold,
            open_s=config.open_s,
            max_open_s=config.max_open_s,
            rate_limit_cooldown_s=config.rate_limit_cooldown_s,
            degraded_error_rate=config.degraded_error_rate,
            degraded_ttft_s=config.degraded_ttft_ms / 1000 if config.degraded_ttft_ms is not None else None,
            error_half_life_s=config.error_half_life_s,
            ewma_alpha=config.ewma_alpha,
            probe_interval_s=config.probe_interval_s,
            probe_jitter=config.probe_jitter,
            probe_backoff_cap_s=config.probe_backoff_cap_s,
        )
        self.trackers: dict[str, BackendTracker] = {}
        self.limiters: dict[str, Limiter] = {}
        self.tiers: dict[str, int] = {}
        for b in self.backends:
            p = config.backends.get(b.name)
            tracker = BackendTracker(b.name, policy, self._now, self.rng)
            self.trackers[b.name] = tracker
            cap = p.max_concurrent if p is not None and p.max_concurrent is not None else config.max_concurrent
            queue = p.max_queue if p is not None and p.max_queue is not None else config.max_queue
            self.limiters[b.name] = Limiter(b.name, cap, queue, estimate_s=_held(tracker))
            self.tiers[b.name] = p.tier if p is not None else 0
        self.affinity: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.running = False
        self._wake: anyio.Event | None = None
        self._refresh: set[str] = set()  # backends whose model list to refresh at once
        self._bypassing: set[str | None] = set()

    def _now(self) -> float:
        return self.clock()

    def _check_names(self) -> None:
        known = set(self.by_name)
        problems = [f"router.backends.{n}" for n in self.config.backends if n not in known]
        for logical, names in self.config.models.items():
            problems += [f"router.models.{logical}.{n}" for n in names if n not in known]
        if problems:
            raise ValueError(
                f"{', '.join(problems)}: no such backend (configured: {', '.join(self.by_name) or 'none'})"
            )

    # ------------------------------------------------------------------ Router protocol

    def candidates(
        self,
        model: str | None,
        catalog: Mapping[str, list[str] | None],
        conversation_key: str | None = None,
    ) -> list[tuple[Backend, str | None]]:
        mapped = self.config.models.get(model) if model is not None else None
        if mapped is not None:
            pairs = [(b, mapped[b.name]) for b in self.backends if b.name in mapped]
        else:
            pairs = [(b, model) for b in self.backends]
        ttl = self.config.models_refresh_s
        cands = []
        for index, (backend, name) in enumerate(pairs):
            tracker = self.trackers[backend.name]
            verdict = self._serves(backend.name, catalog, name)
            if verdict is False:
                continue
            limiter = self.limiters[backend.name]
            cands.append(
                Candidate(
                    backend.name,
                    name,
                    index=index,
                    tier=self.tiers[backend.name],
                    rank=tracker.rank(),
                    serves=verdict,
                    missing=tracker.is_missing(name, ttl),
                    hot=tracker.is_hot(name),
                    in_flight=limiter.in_flight,
                    full=limiter.full,
                    ttft_s=tracker.stats.ttft.value,
                )
            )
        ranked = order(cands, self._affinity(conversation_key))
        self._note_bypass(model, all_unhealthy(ranked))
        tried = ranked[:MAX_ATTEMPTS]
        _current.set(
            _Request(conversation_key, model, self.clock(), {c.name: c.model for c in ranked}, tried[-1].name if tried else None)
        )
        return [(self.by_name[c.name], c.model) for c in ranked]

    def attempt(self, backend: Backend) -> _Attempt:
        return _Attempt(self, backend.name)

    def report(self, outcome: Outcome) -> None:
        tracker = self.trackers.get(outcome.backend)
        if tracker is None:
            return
        req = _current.get()
        model = req.plan.get(outcome.backend, outcome.model) if req is not None else outcome.model
        if outcome.error is None:
            ttft = outcome.ttft_s
            if ttft is not None and req is not None:  # the relay's TTFT counts from the request's start
                ttft = max(0.0, ttft - (req.attempt_started - req.started))
            tracker.success(model, ttft, outcome.tokens_per_s)
            if req is not None and req.key is not None and self.config.affinity:
                self._remember(req.key, outcome.backend)
            return
        verdict = tracker.failure(outcome.error, model)
        if verdict == "model_missing":
            self._refresh.add(outcome.backend)
            self.wake()
        if req is None or outcome.first_token_sent:
            return
        req.failures.append((outcome.backend, _message(outcome.error)))
        if outcome.backend == req.last and len(req.failures) > 1:
            self._explain_total_failure(req, outcome.error)

    # ------------------------------------------------------------------ background

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe every backend now, then each on its own schedule; cancelled at shutdown."""
        if self.running:  # already started (by the kernel or a test): nothing more to do
            task_status.started()
            return
        self.running = True
        self._wake = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    for name, tracker in self.trackers.items():
                        if tracker.due() or (name in self._refresh and not tracker.probing):
                            tracker.probing = True
                            tg.start_soon(self._probe, name)
                    waiting = [t.next_probe_at for t in self.trackers.values() if not t.probing]
                    delay = min(waiting) - self.clock() if waiting else math.inf
                    with anyio.move_on_after(max(delay, 0.0)):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            self.running = False
            self._wake = None

    def wake(self) -> None:
        """Re-read the schedule now (after an on-demand refresh request, or a test moving the clock)."""
        if self._wake is not None:
            self._wake.set()

    async def probe_now(self, name: str | None = None) -> None:
        """Probe one backend (or all of them, concurrently) right now and wait for the results."""
        names = [name] if name is not None else list(self.trackers)
        async with anyio.create_task_group() as tg:
            for n in names:
                self.trackers[n].probing = True
                tg.start_soon(self._probe, n)

    async def _probe(self, name: str) -> None:
        backend, tracker = self.by_name[name], self.trackers[name]
        ok, starting, detail = False, False, ""
        try:
            with anyio.fail_after(self.config.probe_timeout_s):
                health = await backend.health()
            ok, starting, detail = health.state != "down", health.state == "starting", health.detail
            if not ok:
                detail = f"health: down{': ' + detail if detail else ''}"
        except TimeoutError:
            detail = f"health probe timed out after {self.config.probe_timeout_s:g} s"
        except Exception as exc:
            detail = f"health probe failed: {_message(exc)}"
        tracker.probe_result(ok, detail, starting)
        if ok and not starting:
            await self._refresh_loaded(backend, tracker)
            stale = tracker.models_at is None or self.clock() - tracker.models_at >= self.config.models_refresh_s
            if stale or name in self._refresh:
                self._refresh.discard(name)
                await self._refresh_models(backend, tracker)
        self.wake()

    async def _refresh_loaded(self, backend: Backend, tracker: BackendTracker) -> None:
        try:
            if isinstance(backend, LoadedModels):
                with anyio.fail_after(self.config.probe_timeout_s):
                    tracker.set_loaded(await backend.loaded_models())
            elif hasattr(backend, "status"):
                loaded = backend.status().get("loaded_models")
                if isinstance(loaded, list):
                    tracker.set_loaded(str(m) for m in loaded)
        except Exception as exc:  # a view, not a verdict: keep what we knew
            log.debug("backend %s: loaded models unavailable: %s", backend.name, _message(exc))

    async def _refresh_models(self, backend: Backend, tracker: BackendTracker) -> None:
        try:
            with anyio.fail_after(self.config.probe_timeout_s):
                tracker.set_models(await backend.models())
        except Exception as exc:
            log.debug("backend %s: model list unavailable: %s", backend.name, _message(exc))

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, tracker in self.trackers.items():
            limiter = self.limiters[name]
            out[name] = {
                **tracker.as_dict(),
                "tier": self.tiers[name],
                "in_flight": limiter.in_flight,
                "queued": limiter.queued,
                "max_concurrent": limiter.max_concurrent,
            }
        return out

    # ------------------------------------------------------------------ helpers

    def _serves(self, name: str, catalog: Mapping[str, list[str] | None], model: str | None) -> bool | None:
        if model is None:
            return True
        lists = [m for m in (catalog.get(name), self.trackers[name].models) if m is not None]
        if not lists:
            return None
        return any(serves(m, model) for m in lists)

    def _affinity(self, key: str | None) -> str | None:
        if key is None or not self.config.affinity:
            return None
        entry = self.affinity.get(key)
        if entry is None:
            return None
        if self.clock() - entry[1] > self.config.affinity_ttl_s:
            del self.affinity[key]
            return None
        return entry[0]

    def _remember(self, key: str, backend: str) -> None:
        self.affinity[key] = (backend, self.clock())
        self.affinity.move_to_end(key)
        while len(self.affinity) > self.config.max_affinities:
            self.affinity.popitem(last=False)

    def _note_bypass(self, model: str | None, bypass: bool) -> None:
        if bypass and model not in self._bypassing:
            self._bypassing.add(model)
            log.warning("every backend for model %r is unhealthy; trying them anyway", model)
        elif not bypass and model in self._bypassing:
            self._bypassing.discard(model)
            log.info("model %r has a healthy backend again", model)

    def _explain_total_failure(self, req: _Request, exc: BaseException) -> None:
        summary = "; ".join(f"{name}: {message}" for name, message in req.failures)
        text = f"every backend tried for model {req.model!r} failed ({summary})"
        log.warning("%s", text)
        if isinstance(exc, ConductorError):
            exc.message = text  # the relay raises this one; the client sees the whole story

    def __repr__(self) -> str:
        states = ", ".join(f"{n}={t.state}" for n, t in self.trackers.items())
        return f"<HealthRouter {states}>"


class _Attempt:
    """The async context manager :meth:`HealthRouter.attempt` returns."""

    __slots__ = ("router", "name", "trial", "started")

    def __init__(self, router: HealthRouter, name: str) -> None:
        self.router = router
        self.name = name
        self.trial = False
        self.started = 0.0

    async def __aenter__(self) -> None:
        router = self.router
        limiter = router.limiters[self.name]
        if not limiter.try_acquire():
            req = _current.get()
            now = anyio.current_time()
            timeout = router.config.queue_timeout_s
            if req is not None:  # one queue budget per request, however many candidates wait
                if req.deadline is None:
                    req.deadline = now + timeout
                timeout = req.deadline - now
            await limiter.acquire(timeout)
        breaker = router.trackers[self.name].breaker
        if breaker.state == "half_open" and not breaker.trial:
            breaker.begin_trial()
            self.trial = True
        self.started = router.clock()
        req = _current.get()
        if req is not None:
            req.attempt_started = self.started

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        router = self.router
        router.limiters[self.name].release()
        tracker = router.trackers[self.name]
        tracker.stats.duration.add(router.clock() - self.started)
        if exc is None or isinstance(exc, ConductorError):
            return  # the relay reports these
        if isinstance(exc, Exception):  # a plugin bug: the relay does not report it, we do
            tracker.failure(exc)
        elif self.trial:  # cancelled: no verdict, let the next trial through
            tracker.breaker.end_trial()


def _held(tracker: BackendTracker) -> Callable[[], float | None]:
    return lambda: tracker.stats.duration.value


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
