"""The web chat page: one static file, served with a strict Content-Security-Policy.

The page's inline ``<script>`` and ``<style>`` are allowed by their SHA-256 hashes, computed
once when the page is loaded, so the policy can forbid every other script, style, frame and
connection target: an injected ``<script>`` would not run even if model text ever reached the
DOM as HTML (it does not: the page renders it with ``textContent``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

import msgspec

__all__ = ["Page", "load_page"]

_BLOCK = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


class Page(msgspec.Struct, frozen=True):
    body: bytes
    csp: str


def _hash(source: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source).digest()).decode() + "'"


def load_page() -> Page:
    """Read ``static/index.html`` and build its policy (blocking: run it in a worker thread)."""
    body = (importlib.resources.files(__package__) / "static" / "index.html").read_bytes()
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, source in _BLOCK.findall(body):
        hashes[kind.decode()].append(_hash(source))
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes["script"] or ["'none'"]),
            "style-src " + " ".join(hashes["style"] or ["'none'"]),
            "connect-src 'self'",  # CSP 3: 'self' covers ws:// and wss:// to this host and port
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(body, csp)
