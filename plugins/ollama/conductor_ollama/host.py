"""Where Ollama is: the ``url`` setting, else ``OLLAMA_HOST`` in every form Ollama accepts.

Mirrors Ollama's own ``envconfig.Host()``: ``host``, ``host:port``, ``:port``,
``http://host:port``, ``https://host`` (port 443), ``http://host`` (port 80), an optional path,
and the client-side rule that a listen-everywhere address (``0.0.0.0``, ``::``, empty) means
"connect to this machine".
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

__all__ = ["DEFAULT_URL", "resolve_url"]

DEFAULT_URL = "http://127.0.0.1:11434"


def resolve_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The base URL to talk to (no trailing slash).

    >>> resolve_url(None, {"OLLAMA_HOST": ":9000"})
    'http://127.0.0.1:9000'
    >>> resolve_url(None, {"OLLAMA_HOST": "https://ollama.example.com"})
    'https://ollama.example.com:443'
    """
    raw = url if url is not None else (os.environ if environ is None else environ).get("OLLAMA_HOST", "")
    raw = raw.strip()
    if not raw:
        return DEFAULT_URL
    default_port = "11434"
    scheme, sep, hostport = raw.partition("://")
    if not sep:
        scheme, hostport = "http", raw
    else:
        scheme = scheme.lower()
        if scheme == "http":
            default_port = "80"
        elif scheme == "https":
            default_port = "443"
        else:
            raise ValueError(f"unsupported scheme {scheme!r} in {raw!r} (use http:// or https://)")
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport, default_port)
    try:
        number = int(port)
        if not 0 < number <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid port {port!r} in {raw!r}") from None
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    base = f"{scheme}://{host}:{port}"
    return f"{base}/{path.rstrip('/')}" if path.strip("/") else base


def _split_host_port(hostport: str, default_port: str) -> tuple[str, str]:
    if hostport.startswith("["):  # [v6] or [v6]:port
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 address in {hostport!r}")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest.startswith(":") and rest[1:]:
            return host, rest[1:]
        return host, default_port
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, port or default_port
    if hostport.count(":") > 1:  # a bare IPv6 address
        try:
            return str(ipaddress.IPv6Address(hostport)), default_port
        except ValueError:
            raise ValueError(f"invalid host {hostport!r}") from None
    return hostport, default_port
