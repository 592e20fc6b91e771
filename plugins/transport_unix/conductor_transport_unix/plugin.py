"""Entry point of ``conductor-transport-unix``: registers the transport type ``unix``.

Registered with ``default={}`` so a conductor with no config file listens on the default
socket path. The transport module is imported only when a transport is built, keeping
``conductor chat``/``models`` start-up free of it.
"""

from __future__ import annotations

from typing import Any

from conductor_core.hookspecs import hookimpl

from .config import UnixConfig

__all__ = ["conductor_register_transports", "make_transport"]


def make_transport(name: str, config: UnixConfig) -> Any:
    from .transport import UnixTransport

    return UnixTransport(name, config)


@hookimpl
def conductor_register_transports(register):
    register("unix", make_transport, UnixConfig, default={})
