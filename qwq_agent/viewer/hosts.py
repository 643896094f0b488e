"""Which `Host` headers the viewer answers: a defence against DNS rebinding.

Binding to 127.0.0.1 is not enough: a page on attacker.example can rebind its own name to 127.0.0.1 and
then read the viewer same-origin, its requests carrying `Host: attacker.example:PORT`. A host name is
therefore answered only when it is `localhost` or the name the viewer was bound to. An IP literal is
always answered: an origin that is an address cannot be rebound, so such a request comes from a page
the viewer served itself (or from a non-browser client, which could send any header anyway).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["host_allowed"]


def host_allowed(header: str | None, bind_host: str, port: int) -> bool:
    """True when a request with this `Host` header may be answered by a viewer on `bind_host:port`."""
    if header is None:
        return True  # HTTP/1.0 without Host: no browser sends that, so it is no rebinding
    try:
        parts = urlsplit("//" + header.strip())
        name, asked_port = parts.hostname, parts.port
    except ValueError:
        return False
    if not name or (asked_port if asked_port is not None else 80) != port:
        return False
    if name in ("localhost", bind_host.strip("[]").lower()):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
