"""The filesystem and credential side of the Unix transport (plain blocking functions).

Everything here touches the filesystem or makes a blocking probe connect, so the transport
runs it with ``anyio.to_thread.run_sync``; keeping it synchronous also keeps the umask dance in
:func:`bind_socket` inside one thread call. Each refusal is a :class:`UnsafeSocketPath` or
:class:`AlreadyRunning` whose message is the one line the user sees.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
import struct
import sys
from pathlib import Path

import msgspec

from conductor_core.errors import StartupError
from conductor_core.privatefiles import FileIdentity as SocketIdentity
from conductor_core.privatefiles import remove_if_ours, write_private_file

__all__ = [
    "AlreadyRunning",
    "PeerCredentials",
    "SocketIdentity",
    "TransportStartError",
    "UnsafeSocketPath",
    "bind_socket",
    "clear_stale_socket",
    "peer_credentials",
    "prepare_directory",
    "remove_if_ours",
    "write_token_file",
]

_UCRED = struct.Struct("iII")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} on Linux
PROBE_TIMEOUT_S = 1.0


class TransportStartError(StartupError):
    """The transport refuses to start; the message says why and what to do."""


class UnsafeSocketPath(TransportStartError):
    pass


class AlreadyRunning(TransportStartError):
    pass


class PeerCredentials(msgspec.Struct, frozen=True):
    pid: int | None
    uid: int
    gid: int | None


def prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700, or check that an existing one is safe.

    Safe means: a real directory (not a symlink), owned by our effective uid, and not writable
    by group or others (anyone who can write there could replace our socket or token file).
    """
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise UnsafeSocketPath(
            f"cannot create the socket directory {directory}: its parent does not exist"
        ) from None
    except PermissionError:
        raise UnsafeSocketPath(f"cannot create the socket directory {directory}: permission denied") from None
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSocketPath(
            f"refusing to use {directory} for the socket: it is a symlink (remove it or configure another path)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketPath(f"refusing to use {directory} for the socket: it is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeSocketPath(
            f"refusing to use {directory} for the socket: it is owned by uid {st.st_uid}, not by us "
            f"(uid {os.geteuid()})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSocketPath(
            f"refusing to use {directory} for the socket: it is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}; run `chmod 700 {directory}`)"
        )


def _probe(path: Path) -> int | None:
    """Connect to a socket file: the peer's pid (0 if unknown) when someone answers, else None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return None
            return 0  # it exists and did not refuse (e.g. a full backlog): treat as live
        try:
            return peer_credentials(probe).pid or 0
        except OSError:
            return 0


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file no one answers on; refuse if a live process owns it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeSocketPath(f"refusing to start: {path} exists and is not a socket (remove it or choose another path)")
    pid = _probe(path)
    if pid is not None:
        who = f" (pid {pid})" if pid else ""
        raise AlreadyRunning(
            f"another conductor{who} is already listening on {path}; stop it first or configure another path"
        )
    os.unlink(path)


def bind_socket(path: Path, backlog: int) -> tuple[socket.socket, SocketIdentity]:
    """Create, bind (with umask 0177, so the file is 0600 from its first instant) and listen."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
        return sock, SocketIdentity.of(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AlreadyRunning(f"{path} appeared while starting: another conductor is starting there") from None
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise UnsafeSocketPath(f"socket path {path} is too long for a Unix socket (max ~107 bytes)") from None
        raise


def write_token_file(path: Path) -> tuple[str, SocketIdentity]:
    """Write a fresh token (32 random bytes, hex) to ``path``, 0600, atomically (a reader sees
    either the old file or the whole new one, never a partial or readable-by-others one)."""
    token = secrets.token_hex(32)
    return token, write_private_file(path, token)


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The connected peer's credentials; raises ``OSError`` when the platform cannot tell.

    Linux: ``SO_PEERCRED``. BSD/macOS: ``LOCAL_PEERCRED`` (``struct xucred``: version, uid, ...).
    Callers must treat an error as "refuse" (fail closed).
    """
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        return PeerCredentials(pid or None, uid, gid)
    if sys.platform == "darwin" or "bsd" in sys.platform:  # pragma: no cover - not Linux
        local_peercred = getattr(socket, "LOCAL_PEERCRED", 0x001)
        raw = sock.getsockopt(0, local_peercred, 256)
        _version, uid = struct.unpack_from("Ii", raw)
        return PeerCredentials(None, uid, None)
    raise OSError(errno.ENOSYS, "peer credentials are not available on this platform")  # pragma: no cover
