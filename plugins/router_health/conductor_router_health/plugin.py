"""Registers the ``health`` router type and validates its ``[router]`` table.

Example ``conductor.toml``::

    [router]
    type = "health"
    probe_interval_s = 5          # health() probes, with jitter; backed off to 60 s while down
    failure_threshold = 3         # consecutive failures that open a backend's breaker ...
    open_s = 30                   # ... for this long; then one trial request or probe
    max_concurrent = 4            # default cap per backend (none when left out)
    queue_timeout_s = 30          # how long a request waits for a slot, then `overloaded`

    [router.backends.gpu]
    tier = 0                      # lower tiers are preferred
    max_concurrent = 2
    [router.backends.cloud]
    tier = 1                      # last resort

    [router.models]               # a logical model name -> each backend's own name
    fast = { gpu = "llama3.2:3b", embedded = "smollm2-135m" }
"""

from __future__ import annotations

import msgspec

from conductor_core.hookspecs import hookimpl

from .router import HealthRouter

__all__ = ["BackendPolicy", "HealthConfig", "conductor_register_routers"]


class BackendPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[router.backends.NAME]``: per-backend settings (all optional)."""

    tier: int = 0
    max_concurrent: int | None = None  # default: the router's max_concurrent
    max_queue: int | None = None  # default: the router's max_queue


class HealthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[router]`` table of the ``health`` router (less ``type``). Times in seconds."""

    probe_interval_s: float = 5.0
    probe_jitter: float = 0.2  # each interval is multiplied by a random factor in [1-j, 1+j]
    probe_backoff_cap_s: float = 60.0
    probe_timeout_s: float = 5.0
    models_refresh_s: float = 60.0
    failure_threshold: int = 3
    open_s: float = 30.0
    max_open_s: float = 300.0  # a failed half-open trial doubles the cool-down, up to this
    rate_limit_cooldown_s: float = 5.0  # a 429 without Retry-After
    degraded_error_rate: float = 0.25
    degraded_ttft_ms: float | None = None  # slower than this (moving average) is degraded
    error_half_life_s: float = 60.0
    ewma_alpha: float = 0.3
    max_concurrent: int | None = None
    max_queue: int = 32
    queue_timeout_s: float = 30.0
    affinity: bool = True
    affinity_ttl_s: float = 1800.0
    max_affinities: int = 10_000
    backends: dict[str, BackendPolicy] = {}
    models: dict[str, dict[str, str]] = {}

    def __post_init__(self) -> None:
        positive = (
            "probe_interval_s",
            "probe_backoff_cap_s",
            "probe_timeout_s",
            "models_refresh_s",
            "open_s",
            "max_open_s",
            "error_half_life_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        for name in ("rate_limit_cooldown_s", "queue_timeout_s", "affinity_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds")
        if not 0 <= self.probe_jitter < 1:
            raise ValueError("probe_jitter must be in [0, 1)")
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not 0 < self.degraded_error_rate <= 1:
            raise ValueError("degraded_error_rate must be in (0, 1]")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        caps = [("max_concurrent", self.max_concurrent)] + [
            (f"backends.{n}.max_concurrent", p.max_concurrent) for n, p in self.backends.items()
        ]
        for name, cap in caps:
            if cap is not None and cap < 1:
                raise ValueError(f"{name} must be at least 1 (leave it out for no cap)")


@hookimpl
def conductor_register_routers(register):
    # default/order: a claim to be the router used when [router] is left out; the kernel
    # does not read it for routers yet (see docs/router-health.md, "Making it the default").
    register("health", HealthRouter, HealthConfig, default={}, order=10)
