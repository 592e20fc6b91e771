"""Percentiles, the median of round medians with its spread, and number formatting.

Rounds are interleaved (direct, conductor, direct, conductor, ...), so round *r* of one path is
paired with round *r* of the other: the added figure of a round is ``conductor_r - direct_r``,
and the verdict is the median over rounds with the min..max of the rounds as its spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

__all__ = ["Paired", "fmt", "fmt_ratio", "median", "pct", "percentile", "summarize"]


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def pct(p: float) -> Callable[[Sequence[float]], float]:
    return lambda values: percentile(values, p)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


class Paired:
    """One statistic over interleaved rounds of two paths."""

    def __init__(self, direct: list[float], conductor: list[float]) -> None:
        self.direct_rounds = direct
        self.conductor_rounds = conductor

    @property
    def direct(self) -> float:
        return median(self.direct_rounds)

    @property
    def conductor(self) -> float:
        return median(self.conductor_rounds)

    @property
    def added_rounds(self) -> list[float]:
        return [c - d for d, c in zip(self.direct_rounds, self.conductor_rounds)]

    @property
    def added(self) -> float:
        return median(self.added_rounds)

    @property
    def ratio_rounds(self) -> list[float]:
        return [c / d for d, c in zip(self.direct_rounds, self.conductor_rounds) if d]

    @property
    def ratio(self) -> float:
        return median(self.ratio_rounds)

    def spread(self, rounds: list[float]) -> tuple[float, float]:
        return (min(rounds), max(rounds)) if rounds else (math.nan, math.nan)


def summarize(direct: list[list[float]], conductor: list[list[float]], stat: Callable[[Sequence[float]], float]) -> Paired:
    """``stat`` of each round (a list of samples) for both paths, paired by round."""
    return Paired([stat(r) for r in direct], [stat(r) for r in conductor])


def fmt(value: float | None, unit: str = "ms", digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits is None:
        a = abs(value)
        digits = 3 if a < 1 else 2 if a < 10 else 1 if a < 1000 else 0
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}"
