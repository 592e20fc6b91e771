"""Candidate ordering: a pure function over small value objects (no clock, no I/O).

Order, best first:

1. backends that may be sent to before those that may not (breaker open or its one half-open
   trial taken, or the backend said "model not found" recently);
2. backends with a free slot before full ones (only when every candidate is full does a
   request wait in a queue);
3. priority ``tier`` (config; lower first);
4. health: healthy, then degraded;
5. the model list is known to include the model, before "not known yet";
6. the model is loaded right now (hot) before not loaded or not known;
7. fewest requests in flight;
8. lowest recent TTFT (no sample yet counts as 0, so a new backend gets tried);
9. the config file's order.

Then conversation affinity: the backend that last served the conversation goes first when it
is healthy (not merely degraded), has a free slot and is not excluded by step 1, whatever its
tier: its KV cache makes the follow-up turn several times faster.

If nothing passes step 1, the list is still returned in the same order (the all-unhealthy
bypass): a fault in the health logic must never turn into a total outage.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

__all__ = ["Candidate", "all_unhealthy", "order"]


class Candidate(msgspec.Struct):
    name: str
    model: str | None  # the model name for this backend
    index: int = 0  # position in the config
    tier: int = 0
    rank: int = 0  # 0 healthy, 1 degraded, 2 do not send
    serves: bool | None = True  # None: the backend's model list is not known yet
    missing: bool = False  # said "model not found" recently
    hot: bool | None = None  # the model is loaded now; None: not known
    in_flight: int = 0
    full: bool = False
    ttft_s: float | None = None

    @property
    def excluded(self) -> bool:
        return self.rank >= 2 or self.missing


def _key(c: Candidate) -> tuple:
    return (
        c.excluded,
        c.full,
        c.tier,
        c.rank,
        c.serves is None,
        not c.hot,
        c.in_flight,
        c.ttft_s or 0.0,
        c.index,
    )


def order(candidates: Sequence[Candidate], affinity: str | None = None) -> list[Candidate]:
    """Best first; see the module docstring."""
    ranked = sorted(candidates, key=_key)
    if affinity is not None:
        for i, c in enumerate(ranked):
            if c.name == affinity:
                if i and c.rank == 0 and not c.full and not c.excluded:
                    ranked.insert(0, ranked.pop(i))
                break
    return ranked


def all_unhealthy(candidates: Sequence[Candidate]) -> bool:
    return bool(candidates) and all(c.excluded for c in candidates)
