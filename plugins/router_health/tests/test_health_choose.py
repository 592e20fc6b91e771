"""Unit tests of candidate ordering (pure) and the per-backend limiter (queue, handoff, timeout)."""

from __future__ import annotations

import anyio
import pytest

from conductor_core.errors import Overloaded
from conductor_router_health.choose import Candidate, all_unhealthy, order
from conductor_router_health.limits import Limiter


def names(cands, affinity=None):
    return [c.name for c in order(cands, affinity)]


def C(name, index, **kw):
    return Candidate(name, "m", index=index, **kw)


class TestOrder:
    def test_config_order_breaks_ties(self):
        assert names([C("a", 0), C("b", 1), C("c", 2)]) == ["a", "b", "c"]

    def test_tier_first(self):
        assert names([C("a", 0, tier=1), C("b", 1, tier=0)]) == ["b", "a"]

    def test_health_within_a_tier_but_not_across_tiers(self):
        assert names([C("a", 0, rank=1), C("b", 1, rank=0)]) == ["b", "a"]
        assert names([C("a", 0, rank=1), C("b", 1, rank=0, tier=1)]) == ["a", "b"]

    def test_excluded_go_last_whatever_their_tier(self):
        assert names([C("a", 0, rank=2), C("b", 1, tier=5)]) == ["b", "a"]
        assert names([C("a", 0, missing=True), C("b", 1, tier=5)]) == ["b", "a"]

    def test_known_model_list_before_unknown(self):
        assert names([C("a", 0, serves=None), C("b", 1)]) == ["b", "a"]

    def test_hot_model_before_cold(self):
        assert names([C("a", 0, hot=False), C("b", 1, hot=True)]) == ["b", "a"]
        assert names([C("a", 0, hot=None), C("b", 1, hot=True)]) == ["b", "a"]
        # but health comes first
        assert names([C("a", 0, hot=False), C("b", 1, hot=True, rank=1)]) == ["a", "b"]

    def test_fewest_in_flight_then_lowest_ttft(self):
        assert names([C("a", 0, in_flight=2), C("b", 1, in_flight=1)]) == ["b", "a"]
        assert names([C("a", 0, ttft_s=0.5), C("b", 1, ttft_s=0.1)]) == ["b", "a"]
        assert names([C("a", 0, ttft_s=0.5), C("b", 1, ttft_s=None)]) == ["b", "a"]  # explore the unknown
        assert names([C("a", 0, ttft_s=0.1, in_flight=1), C("b", 1, ttft_s=9)]) == ["b", "a"]

    def test_full_backends_after_those_with_a_free_slot(self):
        assert names([C("a", 0, full=True), C("b", 1, tier=1)]) == ["b", "a"]

    def test_affinity_wins_while_healthy_with_a_free_slot(self):
        cands = [C("a", 0), C("b", 1, tier=1)]
        assert names(cands, affinity="b") == ["b", "a"]
        assert names([C("a", 0), C("b", 1, rank=1)], affinity="b") == ["a", "b"]
        assert names([C("a", 0), C("b", 1, full=True)], affinity="b") == ["a", "b"]
        assert names([C("a", 0), C("b", 1, rank=2)], affinity="b") == ["a", "b"]
        assert names(cands, affinity="gone") == ["a", "b"]

    def test_all_unhealthy_are_still_returned_in_order(self):
        cands = [C("a", 0, rank=2, tier=1), C("b", 1, rank=2), C("c", 2, missing=True, tier=2)]
        assert all_unhealthy(cands)
        assert names(cands) == ["b", "a", "c"]
        assert not all_unhealthy([C("a", 0, rank=2), C("b", 1, rank=1)])
        assert not all_unhealthy([])


class TestLimiter:
    async def test_unlimited_counts_in_flight(self):
        lim = Limiter("b")
        for _ in range(100):
            await lim.acquire(0)
        assert lim.in_flight == 100 and not lim.full

    async def test_full_queue_and_zero_timeout_are_overloaded_at_once(self):
        lim = Limiter("b", max_concurrent=1, max_queue=0)
        await lim.acquire(1)
        assert lim.full
        with pytest.raises(Overloaded) as info:
            await lim.acquire(1)
        assert "queue is full" in info.value.message and info.value.retry_after_ms == 1000
        other = Limiter("c", max_concurrent=1)
        await other.acquire(0)
        with pytest.raises(Overloaded) as info:
            await other.acquire(0)
        assert "no free slot" in info.value.message

    async def test_release_hands_the_slot_to_the_oldest_waiter(self):
        lim = Limiter("b", max_concurrent=1, max_queue=4)
        await lim.acquire(1)
        got: list[str] = []

        async def wait(tag):
            await lim.acquire(10)
            got.append(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait, "second")
            await anyio.wait_all_tasks_blocked()
            assert lim.queued == 2 and not lim.try_acquire()  # no overtaking the queue
            lim.release()
            await anyio.wait_all_tasks_blocked()
            assert got == ["first"] and lim.in_flight == 1
            lim.release()
        assert got == ["first", "second"] and lim.in_flight == 1 and lim.queued == 0

    async def test_wait_times_out_with_an_estimate(self):
        held = 2.0
        lim = Limiter("b", max_concurrent=2, max_queue=4, estimate_s=lambda: held)
        await lim.acquire(1)
        await lim.acquire(1)
        with pytest.raises(Overloaded) as info:
            await lim.acquire(0.01)
        assert "no slot freed within 0.01 s" in info.value.message
        assert info.value.retry_after_ms == 1000  # 2 s held x 1 ahead / 2 slots
        assert lim.queued == 0 and lim.in_flight == 2

    async def test_cancelled_waiter_leaves_the_queue_and_passes_a_handed_slot_on(self):
        lim = Limiter("b", max_concurrent=1)
        await lim.acquire(1)
        with anyio.move_on_after(0.01):
            await lim.acquire(10)
        assert lim.queued == 0 and lim.in_flight == 1
        lim.release()
        assert lim.in_flight == 0

    def test_bad_caps(self):
        with pytest.raises(ValueError):
            Limiter("b", max_concurrent=0)
        with pytest.raises(ValueError):
            Limiter("b", max_queue=-1)
