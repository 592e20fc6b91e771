"""Entry point of ``conductor-transport-ws``: the ``[transports.NAME]`` table and the ``ws`` type.

Example ``conductor.toml``::

    [transports.ws]
    type = "ws"
    host = "127.0.0.1"          # the default; a non-loopback host needs TLS or insecure_remote
    port = 8765                 # 0: any free port (read it back from the transport's .port)

    [transports.lan]
    type = "ws"
    host = "0.0.0.0"
    port = 8443
    cert = "/etc/conductor/cert.pem"
    key = "/etc/conductor/key.pem"
    allowed_hosts = ["conductor.lan"]

Registered with ``default={}`` so a conductor with no config file serves the web page on
``http://127.0.0.1:8765/``. The server module (and ``websockets``) is imported only when a
transport is built, keeping ``conductor chat`` start-up free of it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from conductor_core.hookspecs import hookimpl

from .security import is_loopback_host, normalize_origin

__all__ = ["WsConfig", "conductor_register_transports", "make_transport"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class WsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[transports.NAME]`` with ``type = "ws"`` (every key is documented in docs/transport-ws.md)."""

    host: str = "127.0.0.1"
    port: int = 8765
    auth: Literal["token", "none"] = "token"
    token: str | None = None  # else $CONDUCTOR_WS_TOKEN, else a random token per start
    token_file: str | None = None  # default: <conductor runtime dir>/<name>.token; "" writes none
    allowed_origins: list[str] = []  # besides the conductor's own page origins
    allowed_hosts: list[str] = []  # Host names besides localhost, IP literals and the bind host
    cert: str | None = None  # PEM certificate chain: serve wss:// and https://
    key: str | None = None
    insecure_remote: bool = False  # allow a non-loopback bind without TLS (token still required)
    serve_page: bool = True
    max_message_bytes: int = 1 << 20
    compression: bool = False  # permessage-deflate (off: CPU and compression side channels)
    open_timeout_s: float = 10.0  # TCP accept -> finished HTTP handshake (TLS included)
    ping_interval_s: float | None = 20.0  # websockets keepalive; None disables it
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 2.0
    max_connections: int = 64
    max_connections_per_origin: int = 16
    write_limit_bytes: int = 64 * 1024  # per-connection socket write buffer high-water mark
    max_queue: int = 16  # received frames buffered before reading from the socket pauses

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535 (0: any free port)")
        for name in ("max_connections", "max_connections_per_origin", "max_message_bytes", "write_limit_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("open_timeout_s", "close_timeout_s", "ping_interval_s", "ping_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters (or leave it out for a random one)")
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key for TLS, or neither")
        for origin in self.allowed_origins:
            normalize_origin(origin)  # raises ValueError for "*", "null", paths, ...
        if not is_loopback_host(self.host):
            if self.auth != "token":
                raise ValueError(
                    f"refusing to listen on {self.host!r} without a token: a non-loopback address is "
                    f"reachable by other machines; remove auth = \"none\" or bind 127.0.0.1"
                )
            if self.cert is None and not self.insecure_remote:
                raise ValueError(
                    f"refusing to listen on {self.host!r} without TLS: the token and every message would "
                    f"cross the network in clear text; set cert and key, or insecure_remote = true if "
                    f"the network is trusted, or bind 127.0.0.1"
                )

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def __repr__(self) -> str:  # never show the token, even in a debug log of the config
        token = "***" if self.token else None
        return f"WsConfig(host={self.host!r}, port={self.port}, auth={self.auth!r}, token={token})"


def make_transport(name: str, config: WsConfig) -> Any:
    """The registered factory: one configured transport (the server module loads here)."""
    if not _NAME.match(name):
        raise ValueError(f"transport name {name!r} may only use letters, digits, '_', '.' and '-'")
    from .server import WsTransport

    return WsTransport(name, config)


@hookimpl
def conductor_register_transports(register):
    register("ws", make_transport, WsConfig, default={})
