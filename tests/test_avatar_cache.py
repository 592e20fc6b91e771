"""The avatar cache: the byte budget is never exceeded, pinned entries survive, LRU order,
per-session namespaces, oversize rejection, stats; and the kernel builds it from config."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_core.avatar_cache import (
    CacheEntryTooLarge,
    CacheFull,
    MemoryAvatarCache,
    MemoryCacheConfig,
    build_avatar_cache,
)
from conductor_core.config import Config, ConfigError
from conductor_core.plugins import get_registry


def cache(budget: int) -> MemoryAvatarCache:
    return MemoryAvatarCache(MemoryCacheConfig(budget_bytes=budget))


def blob(n: int, fill: bytes = b"x") -> bytes:
    return fill * n


def test_get_put_and_stats():
    c = cache(1000)
    assert c.get("a") is None
    c.put("a", b"123")
    assert c.get("a") == b"123"
    s = c.stats()
    assert (s.type, s.entries, s.bytes, s.budget_bytes, s.hits, s.misses, s.evictions) == ("memory", 1, 4, 1000, 1, 1, 0)


def test_lru_order_evicts_the_least_recently_used():
    c = cache(3 * 11)  # three entries of 1 + 10 bytes
    for key in "abc":
        c.put(key, blob(10))
    c.get("a")  # a is now the most recent: b is the oldest
    c.put("d", blob(10))
    assert c.get("b") is None
    assert all(c.get(k) is not None for k in "acd")
    assert c.stats().evictions == 1
    c.put("c", blob(10, b"y"))  # replacing refreshes recency and does not grow
    c.put("e", blob(10))
    assert c.get("a") is None and c.get("c") == blob(10, b"y")
    assert c.bytes == 33


def test_pinned_entries_survive_any_churn():
    c = cache(100)
    c.put("base", blob(30), pinned=True)
    for i in range(200):
        c.put(f"k{i}", blob(20))
        assert c.bytes <= 100
    assert c.get("base") == blob(30)
    assert c.stats().pinned == 1


def test_an_entry_larger_than_the_budget_is_rejected_clearly():
    c = cache(50)
    c.put("keep", b"1")
    with pytest.raises(CacheEntryTooLarge) as info:
        c.put("huge", blob(100))
    assert "more than the whole budget of 50 bytes" in str(info.value)
    assert "budget_bytes" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert c.get("huge") is None and c.get("keep") == b"1" and c.bytes == 5


def test_pinned_entries_can_fill_the_budget_and_then_refuse_more():
    c = cache(50)
    c.put("p1", blob(20), pinned=True)
    c.put("p2", blob(20), pinned=True)
    c.put("u", blob(4))
    with pytest.raises(CacheFull) as info:
        c.put("x", blob(10))
    assert "pinned entries use 44 of 50 bytes" in str(info.value)
    with pytest.raises(CacheFull):
        c.put("p3", blob(10), pinned=True)
    assert c.get("u") == blob(4)  # a refused put changes nothing
    c.put("p1", blob(5), pinned=True)  # replacing a pinned entry with a smaller one is fine
    assert c.pinned_bytes == 22 + 7


def test_sessions_have_their_own_namespace_and_are_cleared():
    c = cache(1000)
    c.put("k", b"shared")
    c.put("k", b"mine", session="s1")
    c.put("j", b"mine too", session="s1")
    c.put("k", b"theirs", session="s2")
    assert (c.get("k"), c.get("k", session="s1"), c.get("k", session="s2")) == (b"shared", b"mine", b"theirs")
    c.clear_session("s1")
    assert c.get("k", session="s1") is None and c.get("j", session="s1") is None
    assert c.get("k") == b"shared" and c.get("k", session="s2") == b"theirs"
    assert c.bytes == len("k") * 2 + len(b"shared") + len(b"theirs")
    c.clear_session("s1")  # idempotent
    c.clear_session("never")


def test_eviction_keeps_the_session_index_right():
    c = cache(30)
    c.put("a", blob(9), session="s")
    c.put("b", blob(9))
    c.put("c", blob(9))
    c.put("d", blob(9))  # evicts s/a
    c.clear_session("s")
    assert c.bytes == 30 and len(c) == 3


# ---------------------------------------------------------------- random sequences

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcdefg"), st.integers(0, 60), st.sampled_from([None, "s1", "s2"]),
                  st.booleans()),
        st.tuples(st.just("get"), st.sampled_from("abcdefg"), st.sampled_from([None, "s1", "s2"])),
        st.tuples(st.just("clear"), st.sampled_from(["s1", "s2"])),
    ),
    max_size=80,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 150), OPS)
def test_budget_is_never_exceeded_and_accounting_is_exact(budget, ops):
    c = cache(budget)
    pinned: dict[tuple, bytes] = {}  # what must survive
    hits = misses = 0
    for op in ops:
        if op[0] == "put":
            _, key, size, session, pin = op
            value = blob(size)
            try:
                c.put(key, value, session=session, pinned=pin)
            except (CacheEntryTooLarge, CacheFull):
                continue
            pinned.pop((session, key), None)
            if pin:
                pinned[(session, key)] = value
        elif op[0] == "get":
            _, key, session = op
            if c.get(key, session=session) is None:
                misses += 1
            else:
                hits += 1
        else:
            c.clear_session(op[1])
            pinned = {k: v for k, v in pinned.items() if k[0] != op[1]}
        assert c.bytes <= budget
        entries = {**c._lru, **c._pinned}
        assert c.bytes == sum(len(k[1]) + len(v) for k, v in entries.items())
        assert c.pinned_bytes == sum(len(k[1]) + len(v) for k, v in c._pinned.items())
        for (session, key), value in pinned.items():
            assert c._pinned[(session, key)] == value
    stats = c.stats()
    assert (stats.hits, stats.misses) == (hits, misses)
    assert stats.entries == len(c)


# ---------------------------------------------------------------- registration and config


def test_memory_is_a_registered_builtin_type():
    reg = get_registry().avatar_caches["memory"]
    assert reg.factory is MemoryAvatarCache and reg.config_type is MemoryCacheConfig
    assert reg.distribution == "conductor"


def _config(avatar):
    return msgspec.convert({"source": "test.toml", "avatar": avatar}, Config)


def test_build_from_config():
    built = build_avatar_cache(_config({"cache": {"type": "memory", "budget_bytes": 4096}}), get_registry())
    assert isinstance(built, MemoryAvatarCache) and built.budget == 4096
    default = build_avatar_cache(Config(), get_registry())
    assert default.budget == 10 * 1024 * 1024
    assert build_avatar_cache(_config({"enabled": False}), get_registry()) is None


@pytest.mark.parametrize(
    "avatar, message",
    [
        ({"cache": {"type": "redis"}}, "test.toml: avatar.cache.type: unknown avatar cache type 'redis' (installed: memory)"),
        ({"cache": {"budget_bytes": 0}}, "test.toml: avatar.cache.budget_bytes: Expected `int` >= 1"),
        ({"cache": {"budget": 5}}, "test.toml: avatar.cache.budget: unknown key"),
        ({"prefix": "axolotl-with-a-long-name", "hold_back_chars": 20}, "test.toml: avatar.hold_back_chars: 20 is too short"),
    ],
)
def test_bad_cache_config_names_the_key(avatar, message):
    with pytest.raises(ConfigError) as info:
        build_avatar_cache(_config(avatar), get_registry())
    assert str(info.value).startswith(message), str(info.value)
