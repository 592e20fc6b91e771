"""Files only we may read, written atomically, and removed only while they are still ours.

Both transports keep a token file (and the Unix one a socket) next to the user's runtime
directory. Two rules make that safe: a secret is never readable by anyone else, not even for
an instant (an O_EXCL temporary file created 0600, fsynced and renamed into place), and
shutdown never removes a file a successor conductor has since created in the same place
(the file's (device, inode) is remembered and compared first). Blocking calls: run these in
``anyio.to_thread`` from async code.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

__all__ = ["FileIdentity", "remove_if_ours", "write_private_file"]


class FileIdentity(msgspec.Struct, frozen=True):
    """(device, inode) of a file we created."""

    dev: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.lstat(path)
        return cls(st.st_dev, st.st_ino)


def write_private_file(path: Path, content: str) -> FileIdentity:
    """Write ``content`` and a newline to ``path``, mode 0600 from its first instant, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, content.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return FileIdentity.of(path)


def remove_if_ours(path: Path, identity: FileIdentity | None) -> None:
    """Unlink ``path`` only if it is still the file we created (never a successor's)."""
    if identity is None:
        return
    try:
        if FileIdentity.of(path) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
