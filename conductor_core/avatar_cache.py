"""The avatar cache: the AvatarCache protocol and the built-in ``memory`` type.

Surfaces ask for sprites; the conductor answers from a cache with a byte budget. Entries are
bytes under a string key, in the shared namespace (``session=None``) or in a session's own
namespace, which the kernel clears when that connection ends. Pinned entries (the base sprites)
are never evicted. A third-party plugin adds another type (a disk cache, a shared one) with
``conductor_register_avatar_caches``; ``[avatar.cache] type = "..."`` selects it.

``memory`` is an LRU with O(1) get and put: one ordered dict for the evictable entries, one plain
dict for the pinned ones. An entry's size is ``len(key) + len(value)``; the sum over all entries,
pinned ones included, never exceeds ``budget_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec

from .hookspecs import hookimpl
from .protocol import AvatarCacheStats

if TYPE_CHECKING:
    from .config import Config
    from .plugins import Registry

__all__ = [
    "AvatarCache",
    "AvatarCacheError",
    "CacheEntryTooLarge",
    "CacheFull",
    "MemoryAvatarCache",
    "MemoryCacheConfig",
    "build_avatar_cache",
]

DEFAULT_BUDGET = 10 * 1024 * 1024


class AvatarCacheError(ValueError):
    """A cache refused an entry; the message says why and what to change."""


class CacheEntryTooLarge(AvatarCacheError):
    """One entry is larger than the whole budget."""


class CacheFull(AvatarCacheError):
    """Pinned entries leave no room for this one."""


class AvatarCache(Protocol):
    """Sprites or animation frames by key under a byte budget. Sync and fast: the kernel calls
    these from the event loop (never per token)."""

    def get(self, key: str, *, session: str | None = None) -> bytes | None:
        """The value, or None on a miss. A hit makes the entry the most recently used."""
        ...

    def put(self, key: str, value: bytes, *, session: str | None = None, pinned: bool = False) -> None:
        """Store (or replace) an entry, evicting least recently used unpinned entries to make
        room. Raises :class:`AvatarCacheError` (a ``ValueError``) if it cannot fit."""
        ...

    def clear_session(self, session: str) -> None:
        """Drop every entry of a session's namespace (its connection ended)."""
        ...

    def stats(self) -> AvatarCacheStats: ...


class MemoryCacheConfig(msgspec.Struct, forbid_unknown_fields=True):
    budget_bytes: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_BUDGET


_Key = tuple[str | None, str]  # (session or None, key)


class MemoryAvatarCache:
    """An in-process LRU under a byte budget with pinned entries and session namespaces."""

    def __init__(self, config: MemoryCacheConfig | None = None) -> None:
        self.budget = (config or MemoryCacheConfig()).budget_bytes
        self._lru: OrderedDict[_Key, bytes] = OrderedDict()  # oldest first
        self._pinned: dict[_Key, bytes] = {}
        self._sessions: dict[str, set[str]] = {}
        self.bytes = 0
        self.pinned_bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def get(self, key: str, *, session: str | None = None) -> bytes | None:
        k = (session, key)
        value = self._pinned.get(k)
        if value is None:
            value = self._lru.get(k)
            if value is None:
                self.misses += 1
                return None
            self._lru.move_to_end(k)
        self.hits += 1
        return value

    def put(self, key: str, value: bytes, *, session: str | None = None, pinned: bool = False) -> None:
        size = self._size(key, value)
        if size > self.budget:
            raise CacheEntryTooLarge(
                f"avatar cache entry {key!r} is {size} bytes, more than the whole budget of "
                f"{self.budget} bytes (raise [avatar.cache] budget_bytes)"
            )
        k = (session, key)
        old_pinned = self._pinned.get(k)
        pinned_after = self.pinned_bytes - (self._size(key, old_pinned) if old_pinned is not None else 0)
        if pinned:
            pinned_after += size
        if pinned_after > self.budget or (not pinned and pinned_after + size > self.budget):
            raise CacheFull(
                f"avatar cache entry {key!r} ({size} bytes) does not fit: pinned entries use "
                f"{self.pinned_bytes} of {self.budget} bytes (raise [avatar.cache] budget_bytes)"
            )
        self._remove(k)
        while self.bytes + size > self.budget:  # only unpinned entries are left to evict
            (s, evicted_key), evicted = self._lru.popitem(last=False)
            self._forget(s, evicted_key, evicted)
            self.evictions += 1
        if pinned:
            self._pinned[k] = value
            self.pinned_bytes += size
        else:
            self._lru[k] = value
        self.bytes += size
        if session is not None:
            self._sessions.setdefault(session, set()).add(key)

    def _remove(self, k: _Key) -> None:
        value = self._pinned.pop(k, None)
        if value is not None:
            self.pinned_bytes -= self._size(k[1], value)
        else:
            value = self._lru.pop(k, None)
            if value is None:
                return
        self._forget(k[0], k[1], value)

    def _forget(self, session: str | None, key: str, value: bytes) -> None:
        self.bytes -= self._size(key, value)
        if session is not None:
            keys = self._sessions.get(session)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._sessions[session]

    def clear_session(self, session: str) -> None:
        for key in list(self._sessions.get(session, ())):
            self._remove((session, key))

    def stats(self) -> AvatarCacheStats:
        return AvatarCacheStats(
            type="memory",
            entries=len(self._lru) + len(self._pinned),
            bytes=self.bytes,
            budget_bytes=self.budget,
            pinned=len(self._pinned),
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
        )

    def __len__(self) -> int:
        return len(self._lru) + len(self._pinned)

    def __contains__(self, key: object) -> bool:
        return key in self._lru or key in self._pinned

    def __repr__(self) -> str:
        return f"<MemoryAvatarCache entries={len(self)} bytes={self.bytes}/{self.budget} pinned={len(self._pinned)}>"


def build_avatar_cache(config: Config, registry: Registry) -> Any:
    """The cache ``[avatar.cache]`` asks for, or None when the avatar is disabled."""
    from .config import ConfigError, _fail

    settings = config.avatar
    if not settings.enabled:
        return None
    if settings.hold_back_chars < len(settings.prefix) + 4:
        raise ConfigError(
            f"{config.source}: avatar.hold_back_chars: {settings.hold_back_chars} is too short for "
            f"a [{settings.prefix}:...] tag (at least {len(settings.prefix) + 4})"
        )
    table = dict(settings.cache)
    type_name = table.pop("type", "memory")
    reg = registry.avatar_caches.get(type_name)
    if reg is None:
        available = ", ".join(sorted(registry.avatar_caches)) or "none"
        raise ConfigError(
            f"{config.source}: avatar.cache.type: unknown avatar cache type {type_name!r} (installed: {available})"
        )
    try:
        cache_config = msgspec.convert(table, reg.config_type)
    except msgspec.ValidationError as exc:
        raise _fail(config.source, exc, "avatar.cache") from None
    try:
        return reg.factory(cache_config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{config.source}: avatar.cache: {exc}") from None


@hookimpl
def conductor_register_avatar_caches(register):
    register("memory", MemoryAvatarCache, MemoryCacheConfig)
