"""Registers the ``ollama`` backend type and validates its ``[backends.NAME]`` table.

Example ``conductor.toml``::

    [backends.local]
    type = "ollama"
    url = "http://127.0.0.1:11434"   # default: $OLLAMA_HOST, else http://127.0.0.1:11434
    keep_alive = "30m"               # sent on every request; -1 keeps the model loaded
    default_model = "llama3.2"       # default: the first model of /api/tags
    preload = ["llama3.2"]           # warmed in the background at start-up
    timeouts = { connect = 5, between_chunks = 300 }
"""

from __future__ import annotations

import re

import msgspec

from conductor_core.backends import Timeouts
from conductor_core.hookspecs import hookimpl

from .host import resolve_url

__all__ = ["OllamaConfig", "conductor_register_backends", "validate_keep_alive"]

_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def validate_keep_alive(value: str | int | float) -> str | int | float:
    """Accept what Ollama accepts: seconds, a Go duration ("30m", "1h30m"), negative = forever."""
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration like \"30m\" or a number of seconds, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            float(text)
        except ValueError:
            if not _DURATION.match(text):
                raise ValueError(f'keep_alive {value!r} is not a duration (examples: "30m", "1h", "-1", 0)') from None
    return value


class OllamaConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[backends.NAME]`` table of an ``ollama`` backend (less ``type``)."""

    url: str | None = None
    keep_alive: str | int | float = "30m"
    timeouts: Timeouts = Timeouts()
    default_model: str | None = None
    preload: list[str] = []
    max_connections: int = 32
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.url is not None:
            if not self.url.strip():
                raise ValueError("url must not be empty (leave it out to use $OLLAMA_HOST)")
            self.url = resolve_url(self.url)
        validate_keep_alive(self.keep_alive)
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _factory(name: str, config: OllamaConfig):
    from .backend import OllamaBackend

    return OllamaBackend(name, config)


@hookimpl
def conductor_register_backends(register):
    register("ollama", _factory, OllamaConfig, default={}, order=10)
