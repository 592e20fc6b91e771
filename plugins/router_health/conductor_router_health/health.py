"""One backend's health as the router sees it: state, breaker, probe schedule, what it serves.

Sans-I/O: events come in as method calls (an attempt's outcome, a probe's result), time comes
from the injected clock, and the only output is the state, the next probe time, and one log
line per state transition.

States: ``healthy``; ``degraded`` (error rate above the threshold, slow TTFT, a half-open
breaker, or a backend that says it is ``starting``); ``down`` (breaker open). Errors are sorted
by :func:`classify`: connection errors, timeouts and failed streams count against the breaker;
429s (and any error carrying ``retry_after_ms``) open it at once for that long; a missing model,
a bad request or the conductor's own overload say nothing about the backend's health.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Literal

from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    ConductorError,
    ModelNotFound,
)

from .breaker import Breaker
from .stats import Stats

__all__ = ["BackendTracker", "HealthPolicy", "State", "bare", "classify"]

log = logging.getLogger("conductor.router.health")

State = Literal["healthy", "degraded", "down"]
Verdict = Literal["failure", "cooldown", "model_missing", "neutral"]
RANK = {"healthy": 0, "degraded": 1, "down": 2}


def bare(name: str) -> str:
    """``llama3.2:latest`` and ``llama3.2`` are the same model (the way Ollama resolves names)."""
    return name[:-7] if name.endswith(":latest") else name


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, BackendRateLimited) or (isinstance(exc, BackendError) and exc.retry_after_ms is not None):
        return "cooldown"
    if isinstance(exc, ModelNotFound):
        return "model_missing"
    if isinstance(exc, BackendBadRequest):
        return "neutral"  # the request's fault, not the backend's
    if isinstance(exc, BackendError):
        return "failure"
    if isinstance(exc, ConductorError):
        return "neutral"  # overloaded (our own cap), cancelled, ...
    return "failure"  # a plugin bug still means this backend did not answer


class HealthPolicy:
    """The knobs of :class:`BackendTracker` (built from the router config)."""

    __slots__ = (
        "failure_threshold",
        "open_s",
        "max_open_s",
        "rate_limit_cooldown_s",
        "degraded_error_rate",
        "degraded_ttft_s",
        "error_half_life_s",
        "ewma_alpha",
        "probe_interval_s",
        "probe_jitter",
        "probe_backoff_cap_s",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        open_s: float = 30.0,
        max_open_s: float = 300.0,
        rate_limit_cooldown_s: float = 5.0,
        degraded_error_rate: float = 0.25,
        degraded_ttft_s: float | None = None,
        error_half_life_s: float = 60.0,
        ewma_alpha: float = 0.3,
        probe_interval_s: float = 5.0,
        probe_jitter: float = 0.2,
        probe_backoff_cap_s: float = 60.0,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.max_open_s = max_open_s
        self.rate_limit_cooldown_s = rate_limit_cooldown_s
        self.degraded_error_rate = degraded_error_rate
        self.degraded_ttft_s = degraded_ttft_s
        self.error_half_life_s = error_half_life_s
        self.ewma_alpha = ewma_alpha
        self.probe_interval_s = probe_interval_s
        self.probe_jitter = probe_jitter
        self.probe_backoff_cap_s = probe_backoff_cap_s


class BackendTracker:
    """Everything the router knows about one backend."""

    def __init__(
        self,
        name: str,
        policy: HealthPolicy,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self.breaker = Breaker(
            threshold=policy.failure_threshold, open_s=policy.open_s, max_open_s=policy.max_open_s, clock=clock
        )
        self.stats = Stats(clock=clock, alpha=policy.ewma_alpha, half_life_s=policy.error_half_life_s)
        self.starting = False  # the last probe said "starting" (loading, warming up)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.probe_failures = 0  # consecutive
        self.last_probe_at: float | None = None
        self.next_probe_at = clock()  # probe at once when the router starts
        self.probing = False
        self.models: list[str] | None = None  # from our own models() refreshes
        self.models_at: float | None = None
        self.loaded: set[str] | None = None  # bare names of models loaded right now; None: not known
        self.missing: dict[str, float] = {}  # model -> when the backend said "not found"
        self._state: State = "healthy"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        breaker = self.breaker.state
        if breaker == "open":
            return "down"
        if breaker == "half_open" or self.starting:
            return "degraded"
        p = self.policy
        if self.stats.error_rate > p.degraded_error_rate:
            return "degraded"
        ttft = self.stats.ttft.value
        if p.degraded_ttft_s is not None and ttft is not None and ttft > p.degraded_ttft_s:
            return "degraded"
        return "healthy"

    def observe(self) -> State:
        """The current state; logs once when it differs from the last one observed."""
        state = self.state
        if state != self._state:
            level = logging.WARNING if RANK[state] > RANK[self._state] else logging.INFO
            why = f" ({self.last_error})" if state != "healthy" and self.last_error else ""
            log.log(level, "backend %s: %s -> %s%s", self.name, self._state, state, why)
            self._state = state
        return state

    def rank(self) -> int:
        """0 healthy, 1 degraded, 2 do not send (open breaker, or its one trial is taken)."""
        state = self.observe()
        if not self.breaker.allow():
            return 2
        return RANK[state]

    # ------------------------------------------------------------------ passive signals

    def success(self, model: str | None = None, ttft_s: float | None = None, tokens_per_s: float | None = None) -> None:
        self._close()
        self.stats.success(ttft_s, tokens_per_s)
        if model is not None:
            self.missing.pop(model, None)
            if self.loaded is not None:  # only for backends that report what is loaded
                self.loaded.add(bare(model))  # it is hot now (Ollama keeps it for keep_alive)
        self.observe()

    def failure(self, exc: BaseException, model: str | None = None) -> Verdict:
        verdict = classify(exc)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if verdict == "model_missing":
            if model is not None:
                self.missing[model] = self.clock()
            return verdict
        if verdict == "neutral":
            self.breaker.end_trial()
            return verdict
        self.last_error, self.last_error_at = message, self.clock()
        self.stats.failure()
        if verdict == "cooldown":
            retry_ms = getattr(exc, "retry_after_ms", None)
            seconds = retry_ms / 1000 if retry_ms is not None else self.policy.rate_limit_cooldown_s
            self.breaker.trip(seconds)
            self.next_probe_at = max(self.next_probe_at, self.clock() + seconds)
        else:
            self.breaker.failure()
        self.observe()
        return verdict

    # ------------------------------------------------------------------ probes

    def probe_result(self, ok: bool, detail: str = "", starting: bool = False) -> None:
        """Record a probe: ``ok`` False means down or no answer; ``starting`` is up-but-not-ready."""
        now = self.clock()
        self.last_probe_at = now
        self.probing = False
        if ok:
            self.probe_failures = 0
            self.starting = starting
            if not starting and self.breaker.state != "open":
                self._close()  # the half-open trial succeeded (an open breaker waits its cool-down)
        else:
            self.probe_failures += 1
            self.starting = False
            self.last_error, self.last_error_at = detail or "probe failed", now
            self.stats.failure()  # a failed probe is an error sample (a good one is not: probes are cheap)
            self.breaker.failure()
        self.next_probe_at = now + self.probe_delay()
        self.observe()

    def _close(self) -> None:
        if self.breaker.open_until is not None:
            self.stats.forget_errors()  # recovered: the breaker's verdict supersedes the old errors
        self.breaker.success()

    def probe_delay(self) -> float:
        """Seconds to the next probe: the interval with jitter; while failing, doubled per failed
        probe up to the cap; while the breaker is open, no later than the end of its cool-down
        (so the probe is the half-open trial and a recovered backend is used again at once)."""
        p = self.policy
        delay = min(p.probe_backoff_cap_s, p.probe_interval_s * 2**self.probe_failures)
        if p.probe_jitter:
            delay *= self.rng.uniform(1 - p.probe_jitter, 1 + p.probe_jitter)
        remaining = self.breaker.remaining_s()
        if remaining:
            delay = min(delay, remaining)
        return max(delay, 0.0)

    def due(self) -> bool:
        return not self.probing and self.clock() >= self.next_probe_at

    # ------------------------------------------------------------------ models

    def set_models(self, models: Iterable[str]) -> None:
        self.models = list(models)
        self.models_at = self.clock()
        present = {bare(m) for m in self.models}
        for model in [m for m in self.missing if bare(m) in present]:
            del self.missing[model]

    def set_loaded(self, models: Iterable[str] | None) -> None:
        self.loaded = None if models is None else {bare(m) for m in models}

    def is_missing(self, model: str | None, ttl_s: float) -> bool:
        if model is None or model not in self.missing:
            return False
        if self.clock() - self.missing[model] > ttl_s:
            del self.missing[model]
            return False
        return True

    def is_hot(self, model: str | None) -> bool | None:
        if model is None or self.loaded is None:
            return None
        return bare(model) in self.loaded

    # ------------------------------------------------------------------ view

    def as_dict(self) -> dict[str, object]:
        now = self.clock()
        out: dict[str, object] = {
            "state": self.observe(),
            "breaker": self.breaker.state,
            "consecutive_failures": self.breaker.failures,
            **self.stats.as_dict(),
        }
        remaining = self.breaker.remaining_s()
        if remaining:
            out["cooldown_s"] = round(remaining, 1)
        if self.loaded is not None:
            out["loaded_models"] = sorted(self.loaded)
        if self.last_error is not None and self.last_error_at is not None:
            out["last_error"] = self.last_error
            out["last_error_age_s"] = round(now - self.last_error_at, 1)
        if self.last_probe_at is not None:
            out["last_probe_age_s"] = round(now - self.last_probe_at, 1)
        out["next_probe_in_s"] = round(max(0.0, self.next_probe_at - now), 1)
        return out
