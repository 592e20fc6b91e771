"""The ``unix`` transport: a listening socket, who may connect, and connection caps.

Start-up (all blocking steps in a worker thread): check or create the directory (0700, ours,
not a symlink, not group/world writable), replace a stale socket or refuse if a live conductor
answers, bind under umask 0177 (the socket is 0600 from its first instant), and in token mode
write a fresh 0600 token file. Each accepted connection is checked *before* the kernel sees it:
peer uid from ``SO_PEERCRED`` must be in the allow-list (unreadable credentials = refused), and
the per-uid and total connection caps must have room (else ``error{rate_limited}``). Everything
after that (hello, token check, heartbeat, message rate, chats) is the kernel's
``serve_channel``. On ``conductor.stopping`` the listener closes and both files are removed at
once; running connections are left for the kernel to drain.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from conductor_core.errors import ConductorError, ProtocolViolation, RateLimited, Unauthorized, to_wire
from conductor_core.paths import socket_path, token_path
from conductor_core.protocol import Error

from .channel import UnixChannel
from .config import UnixConfig
from .security import (
    PeerCredentials,
    SocketIdentity,
    bind_socket,
    clear_stale_socket,
    peer_credentials,
    prepare_directory,
    remove_if_ours,
    write_token_file,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from conductor_core.protocol import Hello

__all__ = ["UnixTransport"]

log = logging.getLogger("conductor.transport.unix")

MAX_REFUSING = 32  # refused connections waiting for their first frame (to learn their codec)
REFUSE_WAIT_S = 2.0
CAP_RETRY_AFTER_MS = 1000


class UnixTransport:
    """One configured Unix-socket listener (``factory(name, config)`` of the plugin)."""

    def __init__(self, name: str, config: UnixConfig) -> None:
        self.name = name
        self.config = config
        self.path: Path = socket_path(config.path)
        self.token_path: Path = token_path(self.path)
        self.active = 0
        self.per_uid: Counter[int] = Counter()
        self.refusing = 0
        self._socket_id: SocketIdentity | None = None
        self._token_id: SocketIdentity | None = None

    def __repr__(self) -> str:
        return f"<UnixTransport {self.name} {self.path} active={self.active}>"

    # ------------------------------------------------------------------ lifecycle

    def _start_files(self) -> tuple[Any, str | None]:
        """Directory, then the token, then the socket: a client that can connect must never
        find the token file of a previous (killed) conductor."""
        prepare_directory(self.path.parent)
        clear_stale_socket(self.path)
        token = None
        if self.config.auth == "token":
            token, self._token_id = write_token_file(self.token_path)
        try:
            sock, self._socket_id = bind_socket(self.path, self.config.backlog)
        except BaseException:
            self._remove_files()
            raise
        return sock, token

    def _remove_files(self) -> None:
        remove_if_ours(self.token_path, self._token_id)
        remove_if_ours(self.path, self._socket_id)
        self._token_id = self._socket_id = None

    async def serve(self, conductor: Any, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        uids = self.config.allowed_uids
        allowed = frozenset([os.geteuid()] if uids is None else uids)
        try:
            sock, token = await anyio.to_thread.run_sync(self._start_files)
            listener = await anyio.abc.SocketListener.from_socket(sock)
            authenticate = None
            if token is not None:
                from conductor_core.connection import check_token

                authenticate = check_token(token)
            async with anyio.create_task_group() as connections:
                async with listener, anyio.create_task_group() as accepting:
                    accepting.start_soon(self._accept_loop, listener, connections, conductor, allowed, authenticate)
                    log.info("%s: listening on %s (auth: %s)", self.name, self.path, self.config.auth)
                    task_status.started()
                    await conductor.stopping.wait()
                    accepting.cancel_scope.cancel()
                # not reachable any more; the kernel drains and closes the running connections
                await anyio.to_thread.run_sync(self._remove_files)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove_files)

    async def _accept_loop(
        self,
        listener: anyio.abc.SocketListener,
        connections: anyio.abc.TaskGroup,
        conductor: Any,
        allowed: frozenset[int],
        authenticate: Callable[[Hello], bool] | None,
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("%s: accept failed: %s", self.name, exc)
                await anyio.sleep(0.1)
                continue
            connections.start_soon(self._handle, stream, conductor, allowed, authenticate)

    # ------------------------------------------------------------------ one connection

    async def _handle(
        self,
        stream: anyio.abc.SocketStream,
        conductor: Any,
        allowed: frozenset[int],
        authenticate: Callable[[Hello], bool] | None,
    ) -> None:
        limits = conductor.config.limits
        creds: PeerCredentials | None
        try:
            creds = peer_credentials(stream.extra(SocketAttribute.raw_socket))
        except OSError:
            creds = None
        if creds is None:
            await self._refuse(stream, limits, Unauthorized("cannot read the peer's credentials; refusing"))
            return
        peer = f"unix:uid={creds.uid},pid={creds.pid}"
        if creds.uid not in allowed:
            log.warning("%s: refused %s: uid not allowed", self.name, peer)
            await self._refuse(stream, limits, Unauthorized(f"uid {creds.uid} may not connect to this conductor"))
            return
        if self.active >= self.config.max_connections:
            await self._refuse(
                stream,
                limits,
                RateLimited(
                    f"too many connections ({self.config.max_connections}); try again later",
                    retry_after_ms=CAP_RETRY_AFTER_MS,
                ),
            )
            return
        if self.per_uid[creds.uid] >= self.config.max_connections_per_uid:
            await self._refuse(
                stream,
                limits,
                RateLimited(
                    f"too many connections from uid {creds.uid} ({self.config.max_connections_per_uid})",
                    retry_after_ms=CAP_RETRY_AFTER_MS,
                ),
            )
            return
        self.active += 1
        self.per_uid[creds.uid] += 1
        channel = UnixChannel(stream, max_frame_bytes=limits.max_frame_bytes, peer=peer)
        try:
            await conductor.serve_channel(channel, authenticate=authenticate)
        except Exception:  # one connection's failure never takes the listener down
            log.exception("%s: connection %s failed", self.name, peer)
        finally:
            self.active -= 1
            self.per_uid[creds.uid] -= 1
            if not self.per_uid[creds.uid]:
                del self.per_uid[creds.uid]
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await channel.aclose()

    async def _refuse(self, stream: anyio.abc.SocketStream, limits: Any, error: ConductorError) -> None:
        """Answer ``error`` in the client's codec (learnt from its first frame), then close.

        The wait for that first frame is short and at most :data:`MAX_REFUSING` refusals wait at
        once; beyond that a refused connection is closed without a word.
        """
        channel = UnixChannel(stream, max_frame_bytes=limits.max_frame_bytes, peer="refused")
        try:
            if self.refusing >= MAX_REFUSING:
                return
            self.refusing += 1
            try:
                with anyio.move_on_after(min(limits.hello_timeout_s, REFUSE_WAIT_S)):
                    try:
                        await channel.receive()
                    except ProtocolViolation:
                        pass  # bad or huge: the codec is known anyway
                code, message, retryable, retry_after_ms = to_wire(error)
                with anyio.move_on_after(REFUSE_WAIT_S):
                    await channel.send([Error(code, message, retryable, retry_after_ms=retry_after_ms)])
            finally:
                self.refusing -= 1
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await channel.aclose()
