"""conductor-transport-ws: browsers and remote clients over WebSocket, and a web chat page.

See docs/transport-ws.md for the security model (Origin allow-list, Host check, token),
the close codes and the configuration keys.
"""

from .plugin import WsConfig

__all__ = ["WsConfig"]
