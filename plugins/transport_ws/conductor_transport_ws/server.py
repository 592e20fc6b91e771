"""The ``ws`` transport: a ``websockets`` asyncio server in front of the kernel.

Every HTTP request passes :meth:`WsTransport._process_request` before anything else happens:
Host check (DNS rebinding), Origin allow-list (cross-site WebSocket hijacking), routing
(``/healthz``, the page at ``/``, the WebSocket at ``/``), the handshake token if one was
presented, and the connection caps. A refusal is an HTTP status with a one-line reason, sent
before any WebSocket frame. An accepted connection becomes a :class:`WsChannel` run by
``conductor.serve_channel`` inside this transport's task group, so the kernel's cancellation
reaches it; the token is then required in ``hello`` unless the handshake already carried it.

Start-up: bind (port 0 picks a free port: read it back from :attr:`WsTransport.port`), write
the 0600 token file, log the page URL with the token. On ``conductor.stopping`` the listener
closes and the token file goes; running connections are the kernel's to drain and close.
"""

from __future__ import annotations

import email.utils
import errno
import http
import logging
import os
import ssl
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from conductor_core.connection import check_token
from conductor_core.paths import default_socket_path
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .channel import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, WsChannel
from .page import Page, load_page
from .plugin import WsConfig
from .security import (
    LOCAL_HOST_NAMES,
    FileIdentity,
    OriginPolicy,
    bearer_token,
    generate_token,
    host_allowed,
    normalize_origin,
    page_origins,
    query_token,
    remove_if_ours,
    tokens_equal,
    write_token_file,
)

__all__ = ["TOKEN_ENV", "WsTransport"]

TOKEN_ENV = "CONDUCTOR_WS_TOKEN"
log = logging.getLogger("conductor.transport.ws")
_wire_log = logging.getLogger("conductor.transport.ws.wire")  # websockets' own per-connection lines

_PAGE_PATHS = ("/", "/index.html")


class _Slot:
    """What the handshake learned about one connection, kept until its TCP connection ends."""

    __slots__ = ("key", "origin", "preauthorized")

    def __init__(self, key: str, origin: str | None, preauthorized: bool) -> None:
        self.key, self.origin, self.preauthorized = key, origin, preauthorized


class WsTransport:
    """One configured ``ws`` transport. After start-up: :attr:`port`, :attr:`url`, :attr:`token`."""

    def __init__(self, name: str, config: WsConfig) -> None:
        self.name = name
        self.config = config
        self.port: int | None = None
        self.url: str | None = None
        self.token: str | None = None
        self.token_file: Path | None = None
        self.origins = OriginPolicy(set())
        self.refused: Counter[int] = Counter()  # HTTP status -> how many requests got it
        self._hosts = frozenset()
        self._page: Page | None = None
        self._slots: dict[ServerConnection, _Slot] = {}
        self._per_key: Counter[str] = Counter()
        self._tg: anyio.abc.TaskGroup | None = None
        self._conductor: Any = None
        self._stopping = False
        self._released = anyio.Event()

    def __repr__(self) -> str:
        return f"<WsTransport {self.name} port={self.port} connections={len(self._slots)}>"

    @property
    def connections(self) -> int:
        """Connections holding a slot: from an accepted handshake until their TCP connection ends."""
        return len(self._slots)

    async def wait_connections(self, at_most: int) -> None:
        """Wait until no more than ``at_most`` connections hold a slot."""
        while len(self._slots) > at_most:
            self._released = released = anyio.Event()
            await released.wait()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, conductor: Any, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self._conductor = conductor
        if cfg.auth == "token":
            self.token = cfg.token or os.environ.get(TOKEN_ENV) or generate_token()
        tls, self._page = await anyio.to_thread.run_sync(self._load_files)
        if _wire_log.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            _wire_log.setLevel(logging.WARNING)
        try:
            server = await self._listen(tls)
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            hint = f" (another conductor running? set port in [transports.{self.name}])" if exc.errno == errno.EADDRINUSE else ""
            raise OSError(exc.errno, f"transports.{self.name}: cannot listen on {cfg.host}:{cfg.port}: {why}{hint}") from None
        token_identity: FileIdentity | None = None
        try:
            self.port = server.sockets[0].getsockname()[1]
            self._configure_policy()
            token_identity = await self._write_token_file()
            self._announce()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await conductor.stopping.wait()
                self._stopping = True
                server.close(close_connections=False)  # stop accepting; the kernel closes the rest
                await self._remove_token_file(token_identity)
                token_identity = None
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._stopping = True
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(cfg.close_timeout_s + 1):
                    server.close()  # no-op if already closing; else closes leftovers with 1001
                    await server.wait_closed()
                await self._remove_token_file(token_identity)

    async def _listen(self, tls: ssl.SSLContext | None):
        cfg = self.config
        return await serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            compression="deflate" if cfg.compression else None,
            server_header=None,  # no version banner
            open_timeout=cfg.open_timeout_s,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            close_timeout=cfg.close_timeout_s,
            max_size=cfg.max_message_bytes,
            max_queue=cfg.max_queue,
            write_limit=(cfg.write_limit_bytes, cfg.write_limit_bytes // 4),
            logger=_wire_log,
            ssl=tls,
        )

    def _load_files(self) -> tuple[ssl.SSLContext | None, Page | None]:
        cfg = self.config
        tls = None
        if cfg.cert is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                tls.load_cert_chain(cfg.cert, cfg.key)
            except (OSError, ssl.SSLError) as exc:
                raise OSError(f"transports.{self.name}: cannot load cert/key: {exc}") from None
        return tls, load_page() if cfg.serve_page else None

    def _configure_policy(self) -> None:
        cfg = self.config
        scheme = "https" if cfg.tls else "http"
        extra = {normalize_origin(origin) for origin in cfg.allowed_origins}
        self.origins = OriginPolicy(page_origins(scheme, self.port, cfg.host, cfg.allowed_hosts) | extra)
        bind = cfg.host.strip().strip("[]").lower()
        self._hosts = frozenset({*LOCAL_HOST_NAMES, bind, *(h.lower() for h in cfg.allowed_hosts)})
        host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else (f"[{bind}]" if ":" in bind else bind)
        query = f"?token={self.token}" if self.token else ""
        self.url = f"{scheme}://{host}:{self.port}/{query}"

    async def _write_token_file(self) -> FileIdentity | None:
        cfg = self.config
        if self.token is None or cfg.token_file == "":
            return None
        path = Path(cfg.token_file).expanduser() if cfg.token_file else default_socket_path().parent / f"{self.name}.token"
        self.token_file = path
        try:
            return await anyio.to_thread.run_sync(write_token_file, path, self.token)
        except Exception as exc:
            raise OSError(f"transports.{self.name}: cannot write the token file {path}: {exc}") from None

    async def _remove_token_file(self, identity: FileIdentity | None) -> None:
        if identity is not None and self.token_file is not None:
            try:
                await anyio.to_thread.run_sync(remove_if_ours, self.token_file, identity)
            except OSError as exc:
                log.warning("could not remove the token file %s: %s", self.token_file, exc)

    def _announce(self) -> None:
        log.info("web chat on %s", self.url if self.config.serve_page else "(page disabled)")
        log.info(
            "websocket %s://%s:%d/ accepts origins %s",
            "wss" if self.config.tls else "ws",
            self.config.host,
            self.port,
            ", ".join(sorted(self.origins.allowed)),
        )
        if self.token_file is not None:
            log.info("websocket token written to %s", self.token_file)
        if self.config.auth == "none":
            log.warning("websocket transport %s has auth = \"none\": any local process can chat", self.name)

    # ------------------------------------------------------------------ handshake

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Every HTTP request: Host, Origin, route, token, caps. None = go on with the upgrade."""
        cfg = self.config
        headers = request.headers
        hosts = headers.get_all("Host")
        if len(hosts) != 1 or not host_allowed(hosts[0], self._hosts):
            log.warning("refused a request for Host %r (not an allowed host name: DNS rebinding?)", hosts[:1])
            return self._refuse(ws, http.HTTPStatus.FORBIDDEN, "Host not allowed (add it to allowed_hosts)")
        origins = headers.get_all("Origin")
        if len(origins) > 1:
            return self._refuse(ws, http.HTTPStatus.BAD_REQUEST, "more than one Origin header")
        origin = origins[0] if origins else None
        if origin is not None and not self.origins.allows(origin):
            log.warning("refused a request from origin %r (not in the allow-list)", origin)
            return self._refuse(ws, http.HTTPStatus.FORBIDDEN, "Origin not allowed")
        path = urlsplit(request.path).path
        upgrade = "websocket" in headers.get("Upgrade", "").lower()
        if path == "/healthz" and not upgrade:
            return self._healthz(ws)
        if path not in _PAGE_PATHS:
            return self._refuse(ws, http.HTTPStatus.NOT_FOUND, "not found")
        if not upgrade:
            if self._page is None:
                return self._refuse(ws, http.HTTPStatus.NOT_FOUND, "the web page is disabled (serve_page = false)")
            return self._page_response()
        preauthorized = self.token is None
        presented = bearer_token(headers.get("Authorization")) or query_token(request.path)
        if presented is not None and self.token is not None:
            if not tokens_equal(presented, self.token):
                response = self._refuse(ws, http.HTTPStatus.UNAUTHORIZED, "wrong token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="conductor"'
                return response
            preauthorized = True
        if self._stopping:
            return self._refuse(ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "conductor shutting down", retry_after=5)
        key = origin or f"peer {_peer_host(ws)}"
        if len(self._slots) >= cfg.max_connections:
            log.warning("refused a connection: %d connections already open", len(self._slots))
            return self._refuse(ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections", retry_after=5)
        if self._per_key[key] >= cfg.max_connections_per_origin:
            log.warning("refused a connection: %d connections already open from %s", self._per_key[key], key)
            return self._refuse(ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections from this origin", retry_after=5)
        self._slots[ws] = _Slot(key, origin, preauthorized)
        self._per_key[key] += 1
        ws.connection_lost_waiter.add_done_callback(lambda _: self._release(ws))
        return None

    def _release(self, ws: ServerConnection) -> None:
        slot = self._slots.pop(ws, None)
        if slot is not None:
            self._per_key[slot.key] -= 1
            if self._per_key[slot.key] <= 0:
                del self._per_key[slot.key]
            self._released.set()

    def _refuse(self, ws: ServerConnection, status: http.HTTPStatus, reason: str, *, retry_after: int | None = None) -> Response:
        self.refused[status.value] += 1
        response = ws.respond(status, f"{status.value} {status.phrase}: {reason}\n")
        response.headers["Cache-Control"] = "no-store"
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _healthz(self, ws: ServerConnection) -> Response:
        """Liveness for probes: no token, nothing sensitive (no version, no models, no counts)."""
        stopping = self._stopping
        body = b'{"status":"stopping"}\n' if stopping else b'{"status":"ok"}\n'
        status = http.HTTPStatus.SERVICE_UNAVAILABLE if stopping else http.HTTPStatus.OK
        return _response(status, body, "application/json")

    def _page_response(self) -> Response:
        assert self._page is not None
        response = _response(http.HTTPStatus.OK, self._page.body, "text/html; charset=utf-8")
        h = response.headers
        h["Content-Security-Policy"] = self._page.csp
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"  # the token is in the URL
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        return response

    # ------------------------------------------------------------------ connections

    async def _handler(self, ws: ServerConnection) -> None:
        slot = self._slots.get(ws)
        tg = self._tg
        if slot is None or tg is None or self._stopping:
            await ws.close(1001, "conductor shutting down")
            return
        codec = "msgpack" if ws.subprotocol == MSGPACK_SUBPROTOCOL else "json"
        peer = f"ws {_peer_host(ws)}:{_peer_port(ws)}" + (f" origin {slot.origin}" if slot.origin else "")
        channel = WsChannel(
            ws,
            codec=codec,
            max_message_bytes=self.config.max_message_bytes,
            close_timeout=self.config.close_timeout_s,
            peer=peer,
        )
        authenticate = None if slot.preauthorized else check_token(self.token)
        done = anyio.Event()
        tg.start_soon(self._run_channel, channel, authenticate, done, name=f"ws connection {peer}")
        await done.wait()

    async def _run_channel(self, channel: WsChannel, authenticate, done: anyio.Event) -> None:
        try:
            await self._conductor.serve_channel(channel, authenticate=authenticate)
        except Exception:  # one connection's failure must not take the transport down
            log.exception("%r failed", channel)
        finally:
            with anyio.CancelScope(shield=True):
                await channel.aclose()
            done.set()


def _select_subprotocol(ws: ServerConnection, offered) -> str | None:
    """msgpack if offered, else explicit JSON if offered, else none (JSON text frames)."""
    for choice in (MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL):
        if choice in offered:
            return choice
    return None


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _peer_host(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "?"


def _peer_port(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[1]) if address and len(address) > 1 else "?"
