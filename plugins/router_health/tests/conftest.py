"""Fixtures for the health router's tests: a hand-driven clock, and kernels that use it."""

from __future__ import annotations

import pytest

import conductor_router_health.router as router_module


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """A FakeClock, also used by every HealthRouter built during the test (kernels included)."""
    fake = FakeClock()
    monkeypatch.setattr(router_module, "DEFAULT_CLOCK", fake)
    return fake
