"""Who may talk to the WebSocket transport: token, Origin allow-list, Host check, token file.

Three independent checks, all made on the HTTP upgrade request before any WebSocket frame:

* **Origin** (cross-site WebSocket hijacking): a browser always sends ``Origin`` on a WebSocket
  request, and a page cannot forge it. A request carrying an ``Origin`` is accepted only if it
  is one of the conductor's own page origins or listed in ``allowed_origins``; ``null``
  (sandboxed frames, ``file://`` pages) never is.
* **Host** (DNS rebinding): a page on ``evil.example`` whose name later resolves to 127.0.0.1
  is same-origin with itself, so the Origin check alone cannot catch a request the browser
  believes is going to ``evil.example``; its ``Host`` header still says ``evil.example``.
  Accepted hosts: IP literals (a rebinding attack needs a name), ``localhost``, the bind host
  and ``allowed_hosts``.
* **Token**: every connection needs it, either at the handshake (``Authorization: Bearer`` or
  ``?token=``) or in ``hello.token``. Compared in constant time.

The token file functions are plain blocking functions; the transport runs them in a worker thread.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conductor_core.privatefiles import FileIdentity, remove_if_ours, write_private_file

__all__ = [
    "LOCAL_HOST_NAMES",
    "FileIdentity",
    "OriginPolicy",
    "TokenFileError",
    "bearer_token",
    "generate_token",
    "host_allowed",
    "host_name",
    "is_loopback_host",
    "normalize_origin",
    "page_origins",
    "query_token",
    "remove_if_ours",
    "tokens_equal",
    "write_token_file",
]

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")
_DEFAULT_PORTS = {"http": 80, "https": 443}


# ---------------------------------------------------------------- token


def generate_token() -> str:
    """32 random bytes, URL-safe (it travels in a query string)."""
    return secrets.token_urlsafe(32)


def tokens_equal(given: str | None, expected: str) -> bool:
    """Constant-time comparison; ``None`` (no token presented) is never equal."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def query_token(path: str) -> str | None:
    """The ``token`` query parameter of a request path, else None."""
    query = urlsplit(path).query
    if not query:
        return None
    values = parse_qs(query, keep_blank_values=True).get("token")
    return values[0] if values else None


# ---------------------------------------------------------------- hosts and origins


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name counts as remote."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str | None) -> str | None:
    """The name part of a ``Host`` header (``[::1]:8765`` -> ``::1``), lower case, or None."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(host_header: str | None, allowed_names: frozenset[str]) -> bool:
    """The DNS-rebinding check: IP literals and the allowed names pass, anything else fails."""
    name = host_name(host_header)
    if name is None:
        return False
    return _is_ip(name) or name in allowed_names


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, default port dropped; ValueError if not an origin."""
    text = origin.strip().lower().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.username:
        raise ValueError(f"{origin!r} is not an origin like 'https://example.com:8443' (no wildcards, no path)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} has an invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def page_origins(scheme: str, port: int, bind_host: str, extra_hosts: list[str]) -> set[str]:
    """The origins the conductor's own page is served from (``http://127.0.0.1:PORT``, ...)."""
    hosts = {"127.0.0.1", "localhost", "::1", *(h.lower() for h in extra_hosts)}
    if bind_host.strip().lower() not in _WILDCARDS:
        hosts.add(bind_host.strip().strip("[]").lower())
    return {normalize_origin(f"{scheme}://{f'[{h}]' if ':' in h else h}:{port}") for h in hosts}


class OriginPolicy:
    """Which ``Origin`` header values may open a WebSocket (a request without one is not a
    browser's and must bring the token instead)."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = frozenset(allowed)

    def allows(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self.allowed
        except ValueError:  # "null", garbage, paths: never
            return False

    def __repr__(self) -> str:
        return f"<OriginPolicy {sorted(self.allowed)}>"


# ---------------------------------------------------------------- token file (blocking)


class TokenFileError(Exception):
    """The token file cannot be written safely; the message says why and what to do."""


def _prepare_directory(directory: Path) -> None:
    """Create the directory 0700, or check that an existing one is ours and private."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TokenFileError(f"cannot create {directory} for the token file: {exc.strerror}") from None
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise TokenFileError(f"refusing to write the token into {directory}: not a real directory")
    if st.st_uid != os.geteuid():
        raise TokenFileError(f"refusing to write the token into {directory}: owned by uid {st.st_uid}, not by us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TokenFileError(
            f"refusing to write the token into {directory}: writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}; run `chmod 700 {directory}`)"
        )


def write_token_file(path: Path, token: str) -> FileIdentity:
    """Write ``token`` to ``path`` with mode 0600 from its first instant, atomically, in a
    directory that is checked to be ours and private."""
    _prepare_directory(path.parent)
    return write_private_file(path, token)
