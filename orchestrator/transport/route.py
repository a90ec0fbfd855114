"""Which of this machine's addresses a node would see us at: the source address the kernel
picks for the route to the node. A connected UDP socket asks the routing table and sends
nothing, so `submit --dry-run` can use it too."""

from __future__ import annotations

import socket


def source_address(host: str, port: int = 22) -> str | None:
    """This machine's address on its route to `host`, or None when there is no route (or the
    name does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.connect(address)
            except OSError:
                continue
            return str(sock.getsockname()[0])
    return None
