"""The Router protocol and the built-in ``priority`` router.

A router orders the backends that may serve a request; the relay tries them in that order while
nothing has reached the client yet, and tells the router how each attempt went so a smarter
router (conductor-router-health) can learn. The priority router keeps the configured order and
drops backends known not to serve the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

from .backends import Backend
from .hookspecs import hookimpl

__all__ = ["Outcome", "PriorityConfig", "PriorityRouter", "Router", "serves"]


class Outcome(msgspec.Struct):
    """What happened on one attempt: ``error`` is None on success."""

    backend: str
    model: str | None
    error: BaseException | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    first_token_sent: bool = False


class Router(Protocol):
    """Chooses backends per request. Called once per request, never per token."""

    name: str

    def candidates(
        self,
        model: str | None,
        catalog: Mapping[str, list[str] | None],
        conversation_key: str | None = None,
    ) -> list[tuple[Backend, str | None]]:
        """``(backend, model name for that backend)`` pairs to try, best first. ``catalog[b]``
        is backend b's model list, None when not known yet. ``conversation_key`` identifies
        the session's conversation (for affinity)."""
        ...

    def attempt(self, backend: Backend) -> AbstractAsyncContextManager[None]:
        """Entered around each attempt on ``backend``: may wait for a free slot or raise
        :class:`~conductor_core.errors.Overloaded` (concurrency caps)."""
        ...

    def report(self, outcome: Outcome) -> None:
        """Told how each attempt went, so the router can learn."""
        ...


def _bare(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name


def serves(models: Sequence[str] | None, model: str | None) -> bool | None:
    """True/False when the model list is known, None when it is not. ``llama3.2`` matches
    ``llama3.2:latest`` the way Ollama resolves names."""
    if model is None:
        return True
    if models is None:
        return None
    wanted = _bare(model)
    return any(_bare(m) == wanted for m in models)


class PriorityConfig(msgspec.Struct, forbid_unknown_fields=True):
    order: list[str] | None = None  # backend names; default: the config file's order


class PriorityRouter:
    def __init__(self, config: PriorityConfig, backends: Sequence[Backend]) -> None:
        self.name = "priority"
        by_name = {b.name: b for b in backends}
        order = config.order or list(by_name)
        unknown = [n for n in order if n not in by_name]
        if unknown:
            raise ValueError(f"router.order names unknown backends: {', '.join(unknown)} (configured: {', '.join(by_name)})")
        self.backends = [by_name[n] for n in order] + [b for b in backends if b.name not in order]

    def candidates(self, model, catalog, conversation_key=None):
        known, unknown = [], []
        for backend in self.backends:
            verdict = serves(catalog.get(backend.name), model)
            if verdict:
                known.append((backend, model))
            elif verdict is None:
                unknown.append((backend, model))
        return known + unknown

    def attempt(self, backend: Backend) -> AbstractAsyncContextManager[None]:
        return _NO_LIMIT

    def report(self, outcome: Outcome) -> None:
        pass


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LIMIT = _NoLimit()


@hookimpl
def conductor_register_routers(register):
    register("priority", PriorityRouter, PriorityConfig)
