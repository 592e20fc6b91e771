"""conductor-transport-unix: local surfaces over a Unix socket, with peer-credential and token auth.

See docs/transport-unix.md for the socket, the security model and the framing.
"""

from .config import UnixConfig

__all__ = ["UnixConfig"]
