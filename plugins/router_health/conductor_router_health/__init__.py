"""conductor-router-health: the ``health`` router (probes, breakers, fallback, affinity, caps)."""

from .breaker import Breaker as Breaker
from .choose import Candidate as Candidate
from .choose import order as order
from .limits import Limiter as Limiter
from .plugin import BackendPolicy as BackendPolicy
from .plugin import HealthConfig as HealthConfig
from .router import HealthRouter as HealthRouter
from .router import LoadedModels as LoadedModels
from .stats import Stats as Stats

__all__ = [
    "BackendPolicy",
    "Breaker",
    "Candidate",
    "HealthConfig",
    "HealthRouter",
    "Limiter",
    "LoadedModels",
    "Stats",
    "order",
]
