"""Where the Unix socket and its token file live, shared by the transport and the clients.

Both sides must agree without talking to each other, so the rule is one function:
an explicit path wins, then ``$CONDUCTOR_SOCKET``, then ``$XDG_RUNTIME_DIR/conductor/conductor.sock``
(a per-user tmpfs the login manager makes 0700), else ``/tmp/conductor-$UID/conductor.sock``.
The token file sits next to the socket with the suffix ``.token``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SOCKET_ENV", "default_socket_path", "socket_path", "token_path"]

SOCKET_ENV = "CONDUCTOR_SOCKET"


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """The socket path when nothing is configured (ignores ``$CONDUCTOR_SOCKET``)."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "conductor" / "conductor.sock"
    return Path(f"/tmp/conductor-{os.getuid()}") / "conductor.sock"


def socket_path(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Explicit path, else ``$CONDUCTOR_SOCKET``, else :func:`default_socket_path`."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if environ.get(SOCKET_ENV):
        return Path(environ[SOCKET_ENV]).expanduser()
    return default_socket_path(environ)


def token_path(sock: str | os.PathLike[str]) -> Path:
    """The token file of a socket: ``conductor.sock`` -> ``conductor.token`` in the same directory."""
    return Path(sock).with_suffix(".token")
