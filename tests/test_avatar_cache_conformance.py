"""The built-in ``memory`` avatar cache passes the avatar cache conformance suite."""

from conductor_core.avatar_cache import MemoryAvatarCache, MemoryCacheConfig
from conductor_core.testing.conformance import avatar_cache_conformance

TestMemoryCacheConformance = avatar_cache_conformance(lambda budget: MemoryAvatarCache(MemoryCacheConfig(budget_bytes=budget)))
