"""Pieces of the Ollama emulator that hold no sockets: models, faults, counters, keep_alive.

Kept apart from the routes so each stays small and so tests (and the backend plugin's tests)
can build faults and read counters without importing the server.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio

__all__ = [
    "DEFAULT_KEEP_ALIVE_S",
    "EmulatedModel",
    "FOREVER",
    "Fault",
    "ModelState",
    "NOT_FOUND",
    "QUEUE_FULL",
    "Stats",
    "default_error",
    "parse_keep_alive",
    "rfc3339",
    "split_tokens",
]

#: Ollama's exact texts (server/routes.go, server/sched.go).
NOT_FOUND = 'model "{model}" not found, try pulling it first'
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE default: 5m
FOREVER = float("inf")

_DEFAULT_ERRORS = {
    400: "invalid request",
    429: "too many requests",
    500: "an unexpected error occurred",
    502: "bad gateway",
    503: QUEUE_FULL,
}


def default_error(status: int, model: str) -> str:
    if status == 404:
        return NOT_FOUND.format(model=model)
    return _DEFAULT_ERRORS.get(status, f"error {status}")


@dataclass
class Fault:
    """What goes wrong with one request. Every field is optional; combine freely.

    ``status``: answer this HTTP status with ``{"error": message}`` before any stream
    (404/503 default to Ollama's exact texts). ``die_after``: cut the connection after N tokens
    (no final line, no end of body). ``error_after``: send an ``{"error": message}`` line after N
    tokens and end the stream (Ollama's in-stream error form). ``hang_before_first_byte`` /
    ``hang_after``: stop sending until the client goes away or :meth:`OllamaEmulator.release`
    is called. ``garbage_after``: send a line that is not JSON after N tokens.
    ``no_done``: end the body cleanly without the ``done`` line. ``ttft``/``token_delay``
    override the emulator's timing (a slow backend). ``load_time`` overrides the cold-load time.
    """

    status: int | None = None
    message: str | None = None
    die_after: int | None = None
    error_after: int | None = None
    hang_before_first_byte: bool = False
    hang_after: int | None = None
    garbage_after: int | None = None
    no_done: bool = False
    ttft: float | None = None
    token_delay: float | None = None
    load_time: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``"status=503"``, ``"die_after=3,token_delay=0.01"``, ``"hang_before_first_byte"``."""
        kwargs: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown fault field {key!r} (fields: {', '.join(cls.__dataclass_fields__)})")
            if not sep:
                kwargs[key] = True
            elif key == "message":
                kwargs[key] = value
            elif key in ("ttft", "token_delay", "load_time"):
                kwargs[key] = float(value)
            elif key in ("hang_before_first_byte", "no_done"):
                kwargs[key] = value.lower() in ("1", "true", "yes")
            else:
                kwargs[key] = int(value)
        return cls(**kwargs)


@dataclass
class EmulatedModel:
    """One model the emulator serves. ``reply``/``tokens`` override the prompt-derived text."""

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2_019_393_189
    context_length: int = 4096
    reply: str | None = None
    tokens: list[str] | None = None
    fault: Fault | None = None  # applied to every request for this model

    def __post_init__(self) -> None:
        if ":" not in self.name:
            self.name = f"{self.name}:latest"

    @property
    def digest(self) -> str:
        return (format(abs(hash(self.name)), "x") * 8)[:64]

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass
class ModelState:
    loaded: bool = False
    expires_at: float | None = None  # epoch seconds; inf = forever
    loading: anyio.Event | None = None


@dataclass
class Stats:
    """Counters a test can read (and wait on with :meth:`OllamaEmulator.wait_until`)."""

    requests: Counter[str] = field(default_factory=Counter)  # by route path
    statuses: Counter[int] = field(default_factory=Counter)
    connections_opened: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0  # client went away after the model was loaded, before the end
    loads: int = 0
    loads_aborted: int = 0  # client went away during a cold load (Ollama answers 499)
    unloads: int = 0
    last_bodies: dict[str, Any] = field(default_factory=dict)  # route -> last decoded JSON body
    bodies: list[Any] = field(default_factory=list)  # every generation body, bounded


_GO_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any, default: float = DEFAULT_KEEP_ALIVE_S) -> float:
    """Ollama's keep_alive: seconds (number), a Go duration ("5m", "1h30m"), negative = forever.

    Raises ValueError with Ollama's wording for anything else.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"time: invalid duration {value!r}")
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return FOREVER if number < 0 else number
        pos, total = 0, 0.0
        negative = text.startswith("-")
        body = text[1:] if negative else text
        for match in _GO_DURATION.finditer(body):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if body and pos == len(body):
            return FOREVER if negative and total > 0 else total
    raise ValueError(f'time: invalid duration "{value}"')


def rfc3339(epoch: float | None = None) -> str:
    when = datetime.fromtimestamp(time.time() if epoch is None else epoch, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TOKEN = re.compile(r"\s*\S+|\s+$")


def split_tokens(text: str) -> list[str]:
    """Word-ish tokens that join back to ``text`` (leading spaces stay on the token)."""
    return _TOKEN.findall(text) or [text]
