"""Per-backend concurrency caps with a bounded FIFO wait queue.

A :class:`Limiter` counts attempts in flight (always, so the router can prefer idle backends)
and, when ``max_concurrent`` is set, makes the excess wait in a queue of at most ``max_queue``
requests. A released slot is handed straight to the oldest waiter, so a newcomer never
overtakes the queue. A full queue or a wait past the deadline raises
:class:`~conductor_core.errors.Overloaded` with ``retry_after_ms`` (an estimate of when a slot
frees up); the relay then tries the next candidate, and the client gets ``overloaded`` if
there is none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from conductor_core.errors import Overloaded

__all__ = ["Limiter"]


class Limiter:
    def __init__(
        self,
        name: str,
        max_concurrent: int | None = None,
        max_queue: int = 32,
        *,
        estimate_s: Callable[[], float | None] = lambda: None,
    ) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1 (leave it out for no cap)")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[anyio.Event] = deque()
        self._estimate_s = estimate_s  # mean seconds a slot is held, when known

    @property
    def full(self) -> bool:
        return self.max_concurrent is not None and (self.in_flight >= self.max_concurrent or bool(self._waiters))

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self.full:
            return False
        self.in_flight += 1
        return True

    async def acquire(self, timeout_s: float) -> None:
        """Take a slot, waiting up to ``timeout_s`` in the queue; raises Overloaded."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queue or timeout_s <= 0:
            raise self.overloaded("queue is full" if timeout_s > 0 else "no free slot")
        event = anyio.Event()
        self._waiters.append(event)
        try:
            with anyio.move_on_after(timeout_s):
                await event.wait()
        except BaseException:  # cancelled while waiting
            self._abandon(event)
            raise
        if not event.is_set():
            self._abandon(event)
            raise self.overloaded(f"no slot freed within {timeout_s:g} s")
        # the releaser handed its slot over: in_flight already counts us

    def _abandon(self, event: anyio.Event) -> None:
        if event.is_set():
            self.release()  # handed a slot as we gave up: pass it on
        else:
            self._waiters.remove(event)

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # hand the slot over; in_flight unchanged
        else:
            self.in_flight -= 1

    def retry_after_ms(self) -> int:
        held = self._estimate_s()
        if held is None or self.max_concurrent is None:
            return 1000
        ahead = len(self._waiters) + 1
        return int(min(60_000, max(100, held * 1000 * ahead / self.max_concurrent)))

    def overloaded(self, why: str) -> Overloaded:
        return Overloaded(
            f"backend {self.name!r} is at its limit of {self.max_concurrent} concurrent requests and {why}",
            retry_after_ms=self.retry_after_ms(),
        )

    def __repr__(self) -> str:
        return f"<Limiter {self.name} in_flight={self.in_flight}/{self.max_concurrent} queued={self.queued}>"
