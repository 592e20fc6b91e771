"""Unit tests of the sans-I/O parts: breaker, moving averages, one backend's tracker."""

from __future__ import annotations

import logging
import random

import pytest

from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    Overloaded,
    StreamFailed,
)
from conductor_router_health.breaker import Breaker
from conductor_router_health.health import BackendTracker, HealthPolicy, classify
from conductor_router_health.stats import Ewma, Stats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- breaker


class TestBreaker:
    def test_opens_after_threshold_consecutive_failures(self):
        clock = Clock()
        b = Breaker(threshold=3, open_s=30, clock=clock)
        b.failure()
        b.failure()
        assert b.state == "closed" and b.allow()
        b.failure()
        assert b.state == "open" and not b.allow() and b.remaining_s() == 30

    def test_a_success_resets_the_count(self):
        b = Breaker(threshold=3, clock=Clock())
        b.failure()
        b.failure()
        b.success()
        b.failure()
        b.failure()
        assert b.state == "closed"

    def test_half_open_after_cool_down_lets_one_trial_through(self):
        clock = Clock()
        b = Breaker(threshold=1, open_s=30, clock=clock)
        b.failure()
        clock.now += 29.9
        assert b.state == "open"
        clock.now += 0.1
        assert b.state == "half_open" and b.allow()
        b.begin_trial()
        assert not b.allow()
        b.success()
        assert b.state == "closed" and b.allow()

    def test_failed_trial_reopens_with_a_doubled_cool_down_up_to_the_cap(self):
        clock = Clock()
        b = Breaker(threshold=1, open_s=10, max_open_s=35, clock=clock)
        b.failure()
        for expected in (20, 35, 35):
            clock.now += b.remaining_s()
            assert b.state == "half_open"
            b.begin_trial()
            b.failure()
            assert b.state == "open" and b.remaining_s() == expected

    def test_cancelled_trial_frees_the_slot(self):
        clock = Clock()
        b = Breaker(threshold=1, open_s=1, clock=clock)
        b.failure()
        clock.now += 1
        b.begin_trial()
        b.end_trial()
        assert b.allow()

    def test_trip_opens_at_once_and_never_shortens(self):
        clock = Clock()
        b = Breaker(threshold=3, open_s=30, clock=clock)
        b.trip(10)
        assert b.state == "open" and b.remaining_s() == 10
        b.trip(2)
        assert b.remaining_s() == 10
        b.trip(50)  # Retry-After may be longer than the breaker's own cap
        assert b.remaining_s() == 50

    def test_threshold_must_be_positive(self):
        with pytest.raises(ValueError):
            Breaker(threshold=0, clock=Clock())


# ---------------------------------------------------------------- stats


def test_ewma_starts_at_the_first_sample_then_moves_by_alpha():
    e = Ewma(0.5)
    assert e.value is None
    e.add(10)
    e.add(20)
    assert e.value == 15 and e.samples == 2


def test_error_rate_needs_weight_and_fades_with_time():
    clock = Clock()
    s = Stats(clock=clock, half_life_s=60)
    s.failure()
    assert s.error_rate == pytest.approx(0.2)  # one failure out of one attempt is not 100 %
    s.failure()
    assert s.error_rate == pytest.approx(0.4)
    for _ in range(6):
        s.success(0.1, 50)
    assert s.error_rate == pytest.approx(0.25)
    clock.now += 60
    assert s.error_rate == pytest.approx(0.2)  # halved weights fall under min_weight
    clock.now += 600
    assert s.error_rate < 0.01


def test_zero_tokens_per_s_is_not_a_sample():
    s = Stats(clock=Clock())
    s.success(0.2, 0.0)
    assert s.tokens_per_s.value is None and s.ttft.value == 0.2
    assert s.as_dict() == {"ttft_ms": 200.0, "tokens_per_s": None, "error_rate": 0.0}


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (BackendUnavailable("refused"), "failure"),
        (BackendTimeout("slow"), "failure"),
        (StreamFailed("cut"), "failure"),
        (BackendError("500"), "failure"),
        (RuntimeError("plugin bug"), "failure"),
        (BackendRateLimited("429"), "cooldown"),
        (BackendUnavailable("503 queue full", retry_after_ms=2000), "cooldown"),
        (ModelNotFound("no such model"), "model_missing"),
        (BackendBadRequest("bad option"), "neutral"),
        (Overloaded("our own cap"), "neutral"),
    ],
)
def test_classify(exc, verdict):
    assert classify(exc) == verdict


# ---------------------------------------------------------------- tracker


def tracker(clock, **policy) -> BackendTracker:
    return BackendTracker("b", HealthPolicy(**policy), clock, random.Random(7))


class TestTracker:
    def test_states_follow_breaker_and_error_rate(self):
        clock = Clock()
        t = tracker(clock, failure_threshold=3, open_s=30)
        assert t.state == "healthy"
        t.failure(BackendUnavailable("refused"))
        assert t.state == "healthy"
        t.failure(BackendUnavailable("refused"))
        assert t.state == "degraded"  # 2 recent failures: error rate 0.4
        t.failure(BackendUnavailable("refused"))
        assert t.state == "down" and t.rank() == 2
        clock.now += 30
        assert t.state == "degraded" and t.rank() == 1  # half-open: one trial allowed
        t.success("m", 0.1, 20)
        assert t.state == "healthy"  # recovered: old errors forgotten

    def test_slow_ttft_is_degraded(self):
        t = tracker(Clock(), degraded_ttft_s=1.0)
        t.success("m", 0.5)
        assert t.state == "healthy"
        for _ in range(5):
            t.success("m", 3.0)
        assert t.state == "degraded"

    def test_rate_limit_cools_down_for_retry_after_at_once(self):
        clock = Clock()
        t = tracker(clock, rate_limit_cooldown_s=5)
        t.failure(BackendRateLimited("429", retry_after_ms=12_000))
        assert t.state == "down" and t.breaker.remaining_s() == 12
        assert t.next_probe_at >= clock.now + 12  # no probe during the cool-down either
        clock.now += 12
        assert t.breaker.state == "half_open"
        t2 = tracker(clock, rate_limit_cooldown_s=5)
        t2.failure(BackendRateLimited("429 without Retry-After"))
        assert t2.breaker.remaining_s() == 5

    def test_model_missing_and_bad_request_do_not_hurt_health(self):
        t = tracker(Clock())
        for _ in range(5):
            t.failure(ModelNotFound("nope"), "m")
            t.failure(BackendBadRequest("bad"), "m")
        assert t.state == "healthy" and t.breaker.failures == 0
        assert t.is_missing("m", 60) and not t.is_missing("other", 60)
        t.set_models(["m:latest"])
        assert not t.is_missing("m", 60)

    def test_missing_expires(self):
        clock = Clock()
        t = tracker(clock)
        t.failure(ModelNotFound("nope"), "m")
        clock.now += 61
        assert not t.is_missing("m", 60)

    def test_success_marks_the_model_hot(self):
        t = tracker(Clock())
        assert t.is_hot("m") is None
        t.set_loaded(["other:latest"])
        assert t.is_hot("m") is False and t.is_hot("other") is True
        t.success("m:latest")
        assert t.is_hot("m") is True

    def test_probe_interval_has_jitter_within_bounds(self):
        t = tracker(Clock(), probe_interval_s=5, probe_jitter=0.2)
        delays = {round(t.probe_delay(), 6) for _ in range(50)}
        assert len(delays) > 10 and all(4 <= d <= 6 for d in delays)

    def test_failed_probes_back_off_exponentially_to_the_cap(self):
        clock = Clock()
        t = tracker(clock, probe_interval_s=5, probe_jitter=0, probe_backoff_cap_s=60, failure_threshold=100)
        delays = []
        for _ in range(6):
            t.probe_result(False, "connection refused")
            delays.append(t.next_probe_at - clock.now)
        assert delays == [10, 20, 40, 60, 60, 60]
        t.probe_result(True)
        assert t.next_probe_at - clock.now == 5

    def test_probe_while_open_waits_for_the_cool_down_only(self):
        clock = Clock()
        t = tracker(clock, probe_interval_s=5, probe_jitter=0, failure_threshold=1, open_s=3)
        t.failure(BackendUnavailable("refused"))
        t.probe_result(False, "down")  # open: the breaker stays open, next probe at its end
        assert t.next_probe_at - clock.now == pytest.approx(3)
        clock.now += 3
        t.probe_result(True)  # the half-open trial by probe closes it
        assert t.breaker.state == "closed" and t.state == "healthy"

    def test_probe_success_does_not_cut_a_cool_down_short(self):
        clock = Clock()
        t = tracker(clock, rate_limit_cooldown_s=10)
        t.failure(BackendRateLimited("429"))
        t.probe_result(True)
        assert t.state == "down"

    def test_starting_backend_is_degraded_not_failed(self):
        t = tracker(Clock())
        t.probe_result(True, starting=True)
        assert t.state == "degraded" and t.breaker.failures == 0
        t.probe_result(True)
        assert t.state == "healthy"

    def test_transitions_are_logged_once(self, caplog):
        clock = Clock()
        t = tracker(clock, failure_threshold=3, open_s=30, probe_jitter=0)
        caplog.set_level(logging.INFO, "conductor.router.health")
        for _ in range(10):
            t.probe_result(False, "connection refused")
            t.rank()
            t.as_dict()
        clock.now += 1000
        t.probe_result(True)
        for _ in range(3):
            t.probe_result(True)
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "backend b: healthy -> degraded (connection refused)",
            "backend b: degraded -> down (connection refused)",
            "backend b: down -> healthy",
        ]

    def test_flapping_probes_degrade_the_backend(self):
        clock = Clock()
        t = tracker(clock, failure_threshold=3)
        for up in (False, True, False, True):
            t.probe_result(up, "" if up else "refused")
            clock.now += 5
        assert t.breaker.state == "closed" and t.state == "degraded"

    def test_as_dict(self):
        clock = Clock()
        t = tracker(clock, rate_limit_cooldown_s=5, probe_jitter=0)
        t.failure(BackendRateLimited("429 too many requests"))
        clock.now += 2
        view = t.as_dict()
        assert view["state"] == "down" and view["breaker"] == "open"
        assert view["cooldown_s"] == 3 and view["last_error"] == "429 too many requests"
        assert view["last_error_age_s"] == 2
