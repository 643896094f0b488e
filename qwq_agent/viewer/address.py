"""Where the viewer listens for `--host`: an IPv4 or IPv6 address, or a name resolved to one of them.

`http.server` binds IPv4 only, so `--host ::1` was refused as a host that "does not resolve". A name that
resolves to both families (`localhost` on most machines, a host name with A and AAAA records) binds its
IPv4 address, as before; one with only IPv6 addresses binds the first of those. A browser opening
`http://localhost:PORT/` tries both families, so either one serves it.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["ListenAddress", "listen_address", "url_host"]

ListenAddress = tuple[socket.AddressFamily, tuple[Any, ...]]


def _bare(host: str) -> str:
    """`host` without the brackets of a URL's IPv6 literal (`[::1]` → `::1`)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def listen_address(host: str, port: int) -> ListenAddress:
    """The address family and socket address to bind for `host` and `port`.

    Raises `socket.gaierror` when `host` resolves to no address this machine could listen on.
    """
    found = socket.getaddrinfo(_bare(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    usable = [(family, address) for family, _, _, _, address in found if family in _FAMILIES]
    if not usable:
        raise socket.gaierror(socket.EAI_FAMILY, f"{host} has no IPv4 or IPv6 address")
    ipv4 = [item for item in usable if item[0] == socket.AF_INET]
    return (ipv4 or usable)[0]


_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def url_host(host: str, family: socket.AddressFamily) -> str:
    """`host` as a URL writes it: an IPv6 literal in brackets, its zone's `%` escaped (`[fe80::1%25eth0]`)."""
    bare = _bare(host)
    if family == socket.AF_INET6 and ":" in bare:
        return "[" + bare.replace("%", "%25") + "]"
    return bare
