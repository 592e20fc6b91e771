"""conductor.toml + environment -> typed, validated settings.

Found by ``--config PATH``, else ``$CONDUCTOR_CONFIG``, else
``$XDG_CONFIG_HOME/conductor/conductor.toml`` (``~/.config/...``), else built-in defaults made
from the installed plugins' default instances. Validation happens in two steps because plugin
sections can only be checked once the plugins are known: :func:`load_config` checks the kernel's
own keys, :func:`resolve_components` checks each ``[backends.X]``/``[transports.X]``/``[router]``
table against its registered type. Every failure is a :class:`ConfigError` naming the file, the
key path and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .plugins import Registration, Registry

__all__ = [
    "AvatarConfig",
    "ComponentSpec",
    "Config",
    "ConfigError",
    "HistoryConfig",
    "LimitsConfig",
    "find_config_file",
    "load_config",
    "redacted",
    "resolve_components",
]

SECRET_KEYS = re.compile(r"(api_key|token|secret|password)$", re.IGNORECASE)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Bounds that keep the kernel sane (a zero rate divides by zero, a zero heartbeat spins).
Positive = Annotated[float, msgspec.Meta(gt=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """A configuration problem; the message is the one line the user sees."""


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_frame_bytes: AtLeastOne = 1 << 20
    max_pending_bytes: AtLeastOne = 1 << 20  # unsent output per connection before it is closed as too slow
    messages_per_second: Positive = 100.0
    message_burst: AtLeastOne = 50
    max_chats_per_connection: AtLeastOne = 8
    hello_timeout_s: Positive = 5.0
    heartbeat_interval_s: Positive = 30.0
    heartbeat_timeout_s: Positive = 10.0
    heartbeat_misses: AtLeastOne = 3
    max_content_chars: AtLeastOne = 1_000_000
    max_reply_pieces: AtLeastOne = 100_000  # a backend streaming forever is cut here (backend_error)


class HistoryConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_messages: NonNegative = 40  # history window sent to the backend (system prompt not counted)
    max_conversations: AtLeastOne = 64  # per session
    max_stored_messages: AtLeastOne = 1000  # kept per conversation (oldest dropped); bounds a long-lived connection


class AvatarConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[avatar]``: the model's inline avatar commands and the sprite cache (docs/avatar.md)."""

    enabled: bool = True  # parse and strip [PREFIX:...] tags from every reply
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")] = "yolla"
    max_commands_per_reply: NonNegative = 10
    hold_back_chars: Annotated[int, msgspec.Meta(ge=8, le=1024)] = 64  # longest tag, brackets included
    sprite_requests_per_minute: AtLeastOne = 120
    cache: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "memory"})


class Config(msgspec.Struct, forbid_unknown_fields=True):
    default_model: str | None = None
    system_prompt: str | None = None
    shutdown_grace_s: float = 5.0
    backends: dict[str, dict[str, Any]] = {}
    transports: dict[str, dict[str, Any]] = {}
    router: dict[str, Any] | None = None  # None: the installed router with a default (lowest order), else priority
    limits: LimitsConfig = LimitsConfig()
    history: HistoryConfig = HistoryConfig()
    avatar: AvatarConfig = AvatarConfig()
    log_level: str = "info"
    source: str = "built-in defaults"  # where this config came from (not a TOML key users set)


class ComponentSpec(msgspec.Struct):
    name: str
    registration: Registration
    config: Any


ENV_OVERRIDES = {
    "CONDUCTOR_DEFAULT_MODEL": "default_model",
    "CONDUCTOR_SYSTEM_PROMPT": "system_prompt",
    "CONDUCTOR_LOG_LEVEL": "log_level",
}


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Path | None:
    """``explicit``, else ``$CONDUCTOR_CONFIG``, else the XDG file if it exists, else None."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    env = environ.get("CONDUCTOR_CONFIG")
    if env:
        return Path(env)
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    candidate = Path(base) / "conductor" / "conductor.toml"
    return candidate if candidate.is_file() else None


def _path_of(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """Split msgspec's ``... - at `$.a.b` `` into (``prefix.a.b``, message)."""
    text = str(exc)
    match = re.search(r" - at `\$(.*)`$", text)
    if not match:
        return prefix, text
    sub = match.group(1).lstrip(".")
    sub = re.sub(r"\[(\d+)\]", r".\1", sub)
    path = ".".join(p for p in (prefix, sub) if p)
    return path, text[: match.start()]


def _fail(source: str, exc: msgspec.ValidationError, prefix: str = "") -> ConfigError:
    path, message = _path_of(exc, prefix)
    if message.startswith("Object contains unknown field"):
        field = re.search(r"`(.*)`", message)
        name = field.group(1) if field else "?"
        path = ".".join(p for p in (path, name) if p)
        message = "unknown key (check the spelling; `conductor config --help` lists the keys)"
    elif message.startswith("Object missing required field"):
        field = re.search(r"`(.*)`", message)
        name = field.group(1) if field else "?"
        path = ".".join(p for p in (path, name) if p)
        message = "required key is missing"
    return ConfigError(f"{source}: {path or '(top level)'}: {message}")


def load_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the kernel's part of the configuration (sync: runs before the loop)."""
    environ = os.environ if environ is None else environ
    file = find_config_file(path, environ=environ)
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if file is not None:
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        if "source" in raw:
            raise ConfigError(f"{source}: source: unknown key")
    for var, key in ENV_OVERRIDES.items():
        if environ.get(var):
            raw[key] = environ[var]
    # msgspec reports a bad value inside a dict as `backends[...]`; check the tables first so
    # the message can name the instance.
    for kind in ("backends", "transports"):
        tables = raw.get(kind)
        if isinstance(tables, dict):
            for name, table in tables.items():
                if not isinstance(table, dict):
                    raise ConfigError(
                        f"{source}: {kind}.{name}: expected a table ([{kind}.{name}]), got {_toml_type(table)}"
                    )
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _fail(source, exc) from None
    config.source = source
    if config.shutdown_grace_s < 0:
        raise ConfigError(f"{source}: shutdown_grace_s: must be >= 0 seconds")
    level = config.log_level.lower()
    if level not in LOG_LEVELS:
        where = f"{source} ($CONDUCTOR_LOG_LEVEL)" if environ.get("CONDUCTOR_LOG_LEVEL") else source
        raise ConfigError(f"{where}: log_level: expected one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    config.log_level = level
    return config


def _toml_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float", list: "an array"}
    return names.get(type(value), type(value).__name__)


def _defaults(registry: Registry, kind: str) -> dict[str, dict[str, Any]]:
    regs = sorted((r for r in registry.of(kind).values() if r.default is not None), key=lambda r: r.order)
    return {r.type_name: {"type": r.type_name, **(r.default or {})} for r in regs}


def _default_router(registry: Registry) -> dict[str, Any]:
    """A router plugin that registers ``default=`` becomes the router when config names none
    (installing conductor-router-health makes it the default, as its users expect)."""
    defaults = _defaults(registry, "routers")
    return next(iter(defaults.values()), {"type": "priority"})


def resolve_components(config: Config, registry: Registry) -> dict[str, list[ComponentSpec]]:
    """Validate plugin sections against their registered types. Missing sections get defaults
    only when the whole config is the built-in default (a file means: exactly what it says)."""
    builtin = config.source == "built-in defaults"
    sections = {
        "backends": config.backends or (_defaults(registry, "backends") if builtin else {}),
        "transports": config.transports or (_defaults(registry, "transports") if builtin else {}),
        "routers": {"router": config.router or _default_router(registry)},
    }
    out: dict[str, list[ComponentSpec]] = {}
    for kind, tables in sections.items():
        specs = []
        for name, table in tables.items():
            prefix = "router" if kind == "routers" else f"{kind}.{name}"
            table = dict(table)
            type_name = table.pop("type", None)
            available = sorted(registry.of(kind))
            if type_name is None:
                raise ConfigError(f"{config.source}: {prefix}.type: required key is missing (one of: {', '.join(available) or 'none installed'})")
            reg = registry.of(kind).get(type_name)
            if reg is None:
                raise ConfigError(
                    f"{config.source}: {prefix}.type: unknown {kind[:-1]} type {type_name!r} "
                    f"(installed: {', '.join(available) or 'none'}; is its plugin installed?)"
                )
            try:
                settings = msgspec.convert(table, reg.config_type)
            except msgspec.ValidationError as exc:
                raise _fail(config.source, exc, prefix) from None
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{config.source}: {prefix}: {exc}") from None
            specs.append(ComponentSpec(name, reg, settings))
        out[kind] = specs
    return out


def redacted(value: Any) -> Any:
    """A copy of a plain config value with secrets replaced, for ``conductor config``."""
    if isinstance(value, dict):
        return {k: ("***" if SECRET_KEYS.search(str(k)) and v else redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
