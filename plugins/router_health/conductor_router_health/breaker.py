"""A circuit breaker per backend, driven by an injected clock (no I/O, no sleeps).

::

    closed --N consecutive failures--> open --cool-down over--> half_open
    half_open --trial succeeds--> closed
    half_open --trial fails--> open (cool-down doubled, up to max_open_s)
    any state --trip(seconds)--> open for at least that long (429 / Retry-After)
    any state --success--> closed (a real success proves the backend is up)

The open -> half_open step is a matter of time, so :attr:`state` is computed from the clock on
each read. ``half_open`` lets one trial through (a request or a probe): :meth:`allow` is True
until :meth:`begin_trial`, and False again until that trial ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["Breaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    __slots__ = ("threshold", "open_s", "max_open_s", "clock", "failures", "open_until", "reopens", "trial")

    def __init__(
        self,
        *,
        threshold: int = 3,
        open_s: float = 30.0,
        max_open_s: float = 300.0,
        clock: Callable[[], float],
    ) -> None:
        if threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.threshold = threshold
        self.open_s = open_s
        self.max_open_s = max(max_open_s, open_s)
        self.clock = clock
        self.failures = 0  # consecutive
        self.open_until: float | None = None  # None: closed
        self.reopens = 0  # failed half-open trials in a row (each doubles the cool-down)
        self.trial = False

    @property
    def state(self) -> BreakerState:
        if self.open_until is None:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

    def allow(self) -> bool:
        """May a request or probe go through now?"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial)

    def remaining_s(self) -> float:
        """Seconds of cool-down left (0 when closed or half-open)."""
        if self.open_until is None:
            return 0.0
        return max(0.0, self.open_until - self.clock())

    def begin_trial(self) -> None:
        if self.state == "half_open":
            self.trial = True

    def end_trial(self) -> None:
        """The trial ended with no verdict (cancelled): let the next one through."""
        self.trial = False

    def success(self) -> None:
        self.failures = 0
        self.open_until = None
        self.reopens = 0
        self.trial = False

    def failure(self) -> None:
        now = self.clock()
        self.failures += 1
        state = self.state
        if state == "half_open":
            self.reopens += 1
            self._open(now, self.open_s * 2**self.reopens)
        elif state == "closed" and self.failures >= self.threshold:
            self._open(now, self.open_s)
        self.trial = False

    def trip(self, seconds: float) -> None:
        """Open at once for ``seconds`` (never shortening a longer cool-down already running)."""
        self._open(self.clock(), seconds, extend_only=True)
        self.trial = False

    def _open(self, now: float, seconds: float, extend_only: bool = False) -> None:
        until = now + min(seconds, self.max_open_s) if not extend_only else now + seconds
        if extend_only and self.open_until is not None and self.open_until > until:
            return
        self.open_until = until

    def __repr__(self) -> str:
        return f"<Breaker {self.state} failures={self.failures} remaining={self.remaining_s():.1f}s>"
