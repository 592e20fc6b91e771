"""The plugin manager: entry points of group ``conductor``, the built-ins, and the registry.

Loading is an explicit, idempotent function. A plugin that fails to import is reported (its
distribution and the error) and the rest load. ``CONDUCTOR_LOAD_PLUGINS`` (comma list of
distribution names; empty means none) restricts which installed plugins load; the kernel's
own built-ins always load. ``CONDUCTOR_TRACE_HOOKS=1`` writes every hook call (pluggy's
tracer) and every registration to stderr, for debugging a plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import pluggy

from . import hookspecs

__all__ = [
    "BUILTIN_PLUGINS",
    "PluginInfo",
    "Registration",
    "RegistrationError",
    "Registry",
    "TRACE_ENV",
    "enable_hook_tracing",
    "get_plugins",
    "get_registry",
    "load_plugins",
    "pm",
]

log = logging.getLogger("conductor.plugins")

BUILTIN_PLUGINS = ("conductor_core.routing", "conductor_core.avatar_cache")
KINDS = ("backends", "transports", "routers", "avatar_caches")

TRACE_ENV = "CONDUCTOR_TRACE_HOOKS"

pm = pluggy.PluginManager("conductor")
pm.add_hookspecs(hookspecs)
_hooktrace = pm.trace.root.get("hook")  # writes nothing until a writer is set

_loaded = False
_untrace: Callable[[], None] | None = None
_distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
load_errors: list[tuple[str, str]] = []  # (distribution or entry point, error)


class RegistrationError(Exception):
    """A plugin registered something invalid, or two plugins claimed the same type name."""


class PluginInfo(msgspec.Struct):
    name: str
    distribution: str
    version: str
    hooks: list[str]
    builtin: bool = False


class Registration(msgspec.Struct):
    kind: str
    type_name: str
    factory: Callable[..., Any]
    config_type: type
    plugin: str
    distribution: str
    default: dict[str, Any] | None = None
    order: int = 100


class Registry(msgspec.Struct):
    backends: dict[str, Registration] = {}
    transports: dict[str, Registration] = {}
    routers: dict[str, Registration] = {}
    avatar_caches: dict[str, Registration] = {}

    def of(self, kind: str) -> dict[str, Registration]:
        return getattr(self, kind)


def _normalize(name: str) -> str:
    """Distribution names compare the way pip compares them: ``Conductor_Foo`` is ``conductor-foo``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted() -> set[str] | None:
    raw = os.environ.get("CONDUCTOR_LOAD_PLUGINS")
    if raw is None:
        return None
    return {_normalize(name.strip()) for name in raw.split(",") if name.strip()}


def _stderr(message: str) -> None:
    sys.stderr.write("".join(f"conductor: trace: {line}" for line in message.splitlines(keepends=True)))


def enable_hook_tracing(write: Callable[[str], None] | None = None) -> Callable[[], None]:
    """Send every hook call, its arguments and result, and every registration to ``write``
    (default: stderr). Returns the function that turns tracing off again. Start-up and
    shutdown only: the kernel never calls a hook per request or per token."""
    global _untrace
    if _untrace is not None:
        _untrace()
    pm.trace.root.setwriter(write or _stderr)
    undo_monitoring = pm.enable_tracing()

    def undo() -> None:
        global _untrace
        undo_monitoring()
        pm.trace.root.setwriter(None)
        _untrace = None

    _untrace = undo
    return undo


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    if os.environ.get(TRACE_ENV, "") not in ("", "0") and _untrace is None:
        enable_hook_tracing()
    wanted = _wanted()
    for ep in importlib.metadata.entry_points(group="conductor"):
        dist = ep.dist.name if ep.dist else ep.value
        version = ep.dist.version if ep.dist else "?"
        if wanted is not None and _normalize(dist) not in wanted and _normalize(ep.name) not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            other = _distributions.get(ep.name, (None,))[0]
            if other is not None and other != dist:  # never drop a plugin silently
                load_errors.append((dist, f"entry point name {ep.name!r} is already used by {other}"))
                log.warning("plugin %s (%s) not loaded: the name is already used by %s", ep.name, dist, other)
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the rest down
            load_errors.append((dist, f"{type(exc).__name__}: {exc}"))
            log.warning("plugin %s (%s) failed to load: %s: %s", ep.name, dist, type(exc).__name__, exc)
            continue
        _distributions[ep.name] = (dist, version)
    extra = [m.strip() for m in os.environ.get("CONDUCTOR_EXTRA_PLUGINS", "").split(",") if m.strip()]
    for modname in extra:  # plugins by import path, for development and tests: no install needed
        if pm.get_plugin(modname) is not None:
            continue
        try:
            pm.register(importlib.import_module(modname), name=modname)
            _distributions[modname] = (modname, "(CONDUCTOR_EXTRA_PLUGINS)")
        except Exception as exc:
            load_errors.append((modname, f"{type(exc).__name__}: {exc}"))
            log.warning("plugin module %s failed to load: %s: %s", modname, type(exc).__name__, exc)
    for modname in BUILTIN_PLUGINS:
        if pm.get_plugin(modname) is None:
            pm.register(importlib.import_module(modname), name=modname)
            _distributions[modname] = ("conductor", _kernel_version())


def _kernel_version() -> str:
    from . import __version__

    return __version__


def get_plugins(include_builtins: bool = False) -> list[PluginInfo]:
    load_plugins()
    out = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in BUILTIN_PLUGINS
        if builtin and not include_builtins:
            continue
        dist, version = _distributions.get(name, (name, "?"))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append(PluginInfo(name, dist, version, hooks, builtin))
    return sorted(out, key=lambda p: (p.builtin, p.distribution))


def get_registry() -> Registry:
    """Collect every registration hook into a validated, plain :class:`Registry`."""
    load_plugins()
    registry = Registry()
    for kind in KINDS:
        hook = getattr(pm.hook, f"conductor_register_{kind}")
        for impl in hook.get_hookimpls():
            register = _registrar(registry, kind, impl.plugin_name)
            _hooktrace(f"conductor_register_{kind}", {"plugin": impl.plugin_name})
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except RegistrationError:
                raise
            except Exception as exc:  # a plugin bug is a start-up error that names the plugin
                dist = _distributions.get(impl.plugin_name, (impl.plugin_name, "?"))[0]
                raise RegistrationError(
                    f"{dist}: conductor_register_{kind} failed: {type(exc).__name__}: {exc}"
                ) from exc
    return registry


def _registrar(registry: Registry, kind: str, plugin_name: str) -> Callable[..., None]:
    table = registry.of(kind)
    dist = _distributions.get(plugin_name, (plugin_name, "?"))[0]

    def register(
        type_name: str,
        factory: Callable[..., Any],
        config_type: type,
        *,
        default: dict[str, Any] | None = None,
        order: int = 100,
    ) -> None:
        if not isinstance(type_name, str) or not type_name:
            raise RegistrationError(f"{dist}: {kind} type name must be a non-empty string")
        if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
            raise RegistrationError(f"{dist}: config_type for {kind} {type_name!r} must be a msgspec.Struct")
        if type_name in table:
            other = table[type_name].distribution
            raise RegistrationError(
                f"two plugins register the {kind[:-1].replace('_', ' ')} type {type_name!r}: "
                f"{other} and {dist}; uninstall one or limit CONDUCTOR_LOAD_PLUGINS"
            )
        table[type_name] = Registration(kind, type_name, factory, config_type, plugin_name, dist, default, order)
        _hooktrace("register", kind, repr(type_name), "from", dist)

    return register


def reset_for_tests() -> None:
    """Forget loaded plugins (tests that change CONDUCTOR_LOAD_PLUGINS use this)."""
    global _loaded
    if _untrace is not None:
        _untrace()
    for name, plugin in list(pm.list_name_plugin()):
        pm.unregister(plugin, name=name)
    _distributions.clear()
    load_errors.clear()
    _loaded = False
