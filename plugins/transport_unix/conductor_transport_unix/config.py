"""The ``[transports.NAME]`` table of a ``type = "unix"`` transport (cheap to import:
the plugin registers it at start-up of every ``conductor`` command)."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["UnixConfig"]


class UnixConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[transports.NAME]`` with ``type = "unix"``."""

    path: str | None = None  # default: $CONDUCTOR_SOCKET, else conductor_core.paths.default_socket_path()
    auth: Literal["peer", "token"] = "peer"  # "token": peer uid check *and* a token in hello
    allowed_uids: list[int] | None = None  # None: only the uid the conductor runs as
    max_connections: int = 128
    max_connections_per_uid: int = 64
    backlog: int = 128

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_uid", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
