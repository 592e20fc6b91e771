"""The conformance suite every avatar cache plugin must pass (see :mod:`conductor_core.avatar_cache`).

One line in a plugin's tests::

    from conductor_core.testing.conformance import avatar_cache_conformance

    TestDiskCacheConformance = avatar_cache_conformance(lambda budget: DiskCache(DiskConfig(budget_bytes=budget)))

or subclass :class:`AvatarCacheConformance` and override the ``make_cache`` fixture. The
suite only relies on the protocol: the budget is never exceeded, least recently used unpinned
entries go first, pinned entries never go, session namespaces are separate and cleared
together, an entry that can never fit is refused with an ``AvatarCacheError`` (a
``ValueError``) and leaves the cache as it was. Sizes are chosen with margins so a cache that
counts a little overhead per entry passes too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from ..avatar_cache import AvatarCache, AvatarCacheError
from ..protocol import AvatarCacheStats

__all__ = ["AvatarCacheConformance", "avatar_cache_conformance"]

BUDGET = 1000
VALUE = 300  # three entries fit in BUDGET, four do not


def _value(tag: str, size: int = VALUE) -> bytes:
    return (tag.encode() * size)[:size]


class AvatarCacheConformance:
    """Mix-in test class: override ``make_cache`` (``budget_bytes -> AvatarCache``)."""

    @pytest.fixture
    def make_cache(self) -> Callable[[int], AvatarCache]:
        raise NotImplementedError("override `make_cache`: a function budget_bytes -> a fresh AvatarCache")

    @pytest.fixture
    def cache(self, make_cache: Callable[[int], AvatarCache]) -> AvatarCache:
        return make_cache(BUDGET)

    def test_put_then_get_and_a_miss_is_none(self, cache: AvatarCache) -> None:
        assert cache.get("a") is None
        cache.put("a", _value("a"))
        assert cache.get("a") == _value("a")

    def test_methods_are_sync(self, cache: AvatarCache) -> None:
        """The kernel calls the cache from the event loop: no coroutine, no await, no I/O wait."""
        for method in (cache.get, cache.put, cache.clear_session, cache.stats):
            assert not inspect.iscoroutinefunction(method), method

    def test_replacing_a_key_keeps_one_entry(self, cache: AvatarCache) -> None:
        cache.put("a", _value("a"))
        cache.put("a", _value("b"))
        assert cache.get("a") == _value("b")
        assert cache.stats().entries == 1

    def test_budget_is_never_exceeded(self, cache: AvatarCache) -> None:
        for i in range(20):
            cache.put(f"k{i}", _value(str(i % 10), 100 + 37 * (i % 5)))
            stats = cache.stats()
            assert stats.bytes <= stats.budget_bytes == BUDGET
        assert cache.stats().evictions > 0

    def test_least_recently_used_goes_first(self, cache: AvatarCache) -> None:
        for key in "abc":
            cache.put(key, _value(key))
        assert cache.get("a") is not None  # a is now the most recently used; b the least
        cache.put("d", _value("d"))
        assert cache.get("b") is None
        assert [cache.get(k) for k in "acd"] == [_value(k) for k in "acd"]

    def test_pinned_entries_are_never_evicted(self, cache: AvatarCache) -> None:
        cache.put("base", _value("p"), pinned=True)
        for i in range(10):
            cache.put(f"frame{i}", _value(str(i)))
        assert cache.get("base") == _value("p")
        stats = cache.stats()
        assert stats.pinned == 1 and stats.bytes <= BUDGET

    def test_pins_that_leave_no_room_refuse_the_entry(self, cache: AvatarCache) -> None:
        for key in "abc":
            cache.put(key, _value(key), pinned=True)
        with pytest.raises(AvatarCacheError):
            cache.put("d", _value("d"))
        with pytest.raises(AvatarCacheError):
            cache.put("e", _value("e"), pinned=True)
        assert [cache.get(k) for k in "abc"] == [_value(k) for k in "abc"]
        assert cache.get("d") is None and cache.get("e") is None

    def test_oversize_entry_is_refused_and_changes_nothing(self, cache: AvatarCache) -> None:
        cache.put("a", _value("a"))
        before = cache.stats()
        for pinned in (False, True):
            with pytest.raises(AvatarCacheError) as info:
                cache.put("huge", b"x" * (BUDGET + 1), pinned=pinned)
            assert isinstance(info.value, ValueError) and str(info.value)
        assert cache.get("huge") is None and cache.get("a") == _value("a")
        after = cache.stats()
        assert (after.entries, after.bytes, after.evictions) == (before.entries, before.bytes, before.evictions)

    def test_session_namespaces_are_separate(self, cache: AvatarCache) -> None:
        cache.put("k", _value("s"))
        cache.put("k", _value("1"), session="s1")
        assert cache.get("k") == _value("s")
        assert cache.get("k", session="s1") == _value("1")
        assert cache.get("k", session="s2") is None

    def test_clear_session_drops_only_that_session(self, cache: AvatarCache) -> None:
        cache.put("shared", _value("s", 100))
        cache.put("x", _value("1", 100), session="s1")
        cache.put("y", _value("1", 100), session="s1", pinned=True)
        cache.put("x", _value("2", 100), session="s2")
        before = cache.stats().bytes
        cache.clear_session("s1")
        assert cache.get("x", session="s1") is None and cache.get("y", session="s1") is None
        assert cache.get("shared") == _value("s", 100) and cache.get("x", session="s2") == _value("2", 100)
        assert cache.stats().bytes < before and cache.stats().entries == 2
        cache.clear_session("never-seen")  # a no-op
        assert cache.stats().entries == 2

    def test_stats_count_hits_misses_and_entries(self, cache: AvatarCache) -> None:
        cache.put("a", _value("a"))
        cache.get("a")
        cache.get("a")
        cache.get("nope")
        stats = cache.stats()
        assert isinstance(stats, AvatarCacheStats) and stats.type
        assert (stats.entries, stats.hits, stats.misses, stats.budget_bytes) == (1, 2, 1, BUDGET)
        assert 0 < stats.bytes <= BUDGET


def avatar_cache_conformance(
    make_cache: Callable[[int], Any], *, name: str = "TestAvatarCacheConformance"
) -> type[AvatarCacheConformance]:
    """A ready :class:`AvatarCacheConformance` test class; assign it to a ``Test*`` name."""

    class Suite(AvatarCacheConformance):
        @pytest.fixture
        def make_cache(self):
            return make_cache

    Suite.__name__ = Suite.__qualname__ = name
    return Suite
