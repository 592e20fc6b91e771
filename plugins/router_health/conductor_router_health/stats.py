"""Moving averages of one backend's traffic: TTFT, tokens/s, attempt duration, error rate.

TTFT, tokens/s and duration are exponentially weighted per sample (``alpha``: the weight of the
newest sample). The error rate is weighted by time instead: every attempt adds weight 1 to a sum
that halves every ``half_life_s`` seconds, and the rate is ``errors / max(total, min_weight)``,
so a burst of failures fades on its own even when the backend gets no traffic afterwards, and
one failure out of one attempt is not a 100 % error rate (it is 1/5: it takes two recent
failures to cross the default 25 % threshold).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Ewma", "Stats"]


class Ewma:
    __slots__ = ("alpha", "value", "samples")

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        self.alpha = alpha
        self.value: float | None = None
        self.samples = 0

    def add(self, sample: float) -> None:
        self.samples += 1
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


class Stats:
    __slots__ = ("ttft", "tokens_per_s", "duration", "clock", "half_life_s", "min_weight", "_errors", "_total", "_at")

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        alpha: float = 0.3,
        half_life_s: float = 60.0,
        min_weight: float = 5.0,
    ) -> None:
        self.ttft = Ewma(alpha)  # seconds
        self.tokens_per_s = Ewma(alpha)
        self.duration = Ewma(alpha)  # seconds a slot is held per attempt
        self.clock = clock
        self.half_life_s = half_life_s
        self.min_weight = min_weight
        self._errors = 0.0
        self._total = 0.0
        self._at = clock()

    def _decay(self) -> None:
        now = self.clock()
        dt = now - self._at
        if dt > 0:
            factor = 0.5 ** (dt / self.half_life_s)
            self._errors *= factor
            self._total *= factor
        self._at = now

    def success(self, ttft_s: float | None = None, tokens_per_s: float | None = None) -> None:
        self._decay()
        self._total += 1
        if ttft_s is not None and ttft_s >= 0:
            self.ttft.add(ttft_s)
        if tokens_per_s:  # 0 means "not measurable" (one token), not "slow"
            self.tokens_per_s.add(tokens_per_s)

    def failure(self) -> None:
        self._decay()
        self._total += 1
        self._errors += 1

    def forget_errors(self) -> None:
        self._errors = 0.0
        self._total = 0.0

    @property
    def error_rate(self) -> float:
        self._decay()
        return self._errors / max(self._total, self.min_weight)

    def as_dict(self) -> dict[str, float | None]:
        ttft = self.ttft.value
        tps = self.tokens_per_s.value
        return {
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
            "tokens_per_s": round(tps, 1) if tps is not None else None,
            "error_rate": round(self.error_rate, 3),
        }
