"""Address checks that keep host-side network tools away from internal services (SSRF defence).

A URL's host is checked in two steps: first as written (so numeric tricks such as `2130706433`,
`0177.0.0.1`, `0x7f.1` or `::ffff:127.0.0.1` are recognised without asking a resolver), then every
address it resolves to. Callers connect to the address returned by `resolve_checked`, never to the
name again, so a DNS answer that changes between check and connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from pydantic import BaseModel, Field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints. They are link-local or private anyway, but naming them lets the
# refusal say what was hit, and keeps them refused even when private addresses are allowed.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
    }
)
METADATA_HOSTNAMES: frozenset[str] = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(Exception):
    """A URL's host, or an address it resolves to, is not allowed by the policy."""


class AddressPolicy(BaseModel):
    """Which destinations host-side tools may connect to; the default allows public addresses only."""

    allow_loopback: bool = False
    allow_private: bool = False
    allow_metadata: bool = False
    # Networks always allowed whatever the flags say, e.g. ["10.1.2.0/24"] for a company wiki.
    allowed_networks: list[str] = Field(default_factory=list)

    def _allowed_nets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]


def parse_ip_loose(host: str) -> IPAddress | None:
    """Read `host` as an IP address the way permissive resolvers do, or return None for a name.

    Accepts IPv6 (with or without brackets) and the inet_aton IPv4 forms: 1 to 4 dot-separated parts,
    each decimal, octal (leading 0) or hex (0x), e.g. `2130706433`, `0177.1`, `0x7f.0.0.1`.
    """
    h = host.strip().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            return None
    parts = h.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        p = part.lower()
        try:
            if p.startswith("0x"):
                v = int(p[2:] or "0", 16)
            elif len(p) > 1 and p.startswith("0"):
                v = int(p[1:], 8)
            else:
                if not p.isdigit():
                    return None
                v = int(p, 10)
        except ValueError:
            return None
        values.append(v)
    # The last part fills all remaining bytes (so "127.1" is 127.0.0.1), as inet_aton does.
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to (mapped, compatible, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    packed = ip.packed
    # Deprecated IPv4-compatible form ::a.b.c.d (but not :: or ::1).
    if packed[:12] == b"\x00" * 12 and int(ip) > 1:
        return ipaddress.IPv4Address(packed[12:])
    return None


def refusal_reason(ip: IPAddress, policy: AddressPolicy) -> str | None:
    """Why `policy` refuses `ip`, or None when it may be contacted."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = refusal_reason(inner, policy)
            return f"{reason} (embedded in {ip})" if reason else None
    if any(ip in net for net in policy._allowed_nets()):
        return None
    if ip in METADATA_ADDRESSES:
        return None if policy.allow_metadata else f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return None if policy.allow_loopback else f"{ip} is a loopback address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return None if policy.allow_private else f"{ip} is a shared (carrier-grade NAT) address"
    if ip.is_private and not ip.is_reserved:
        return None if policy.allow_private else f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is a reserved or non-global address"
    return None


def check_host_literal(host: str, policy: AddressPolicy) -> IPAddress | None:
    """Refuse metadata host names and disallowed IP literals; return the literal's address, if any."""
    name = host.strip().rstrip(".").lower()
    if name in METADATA_HOSTNAMES and not policy.allow_metadata:
        raise AddressRefused(f"{host} is a cloud metadata host name")
    ip = parse_ip_loose(name)
    if ip is not None:
        reason = refusal_reason(ip, policy)
        if reason:
            raise AddressRefused(f"host {host!r} refused: {reason}")
    return ip


async def resolve_checked(host: str, port: int, policy: AddressPolicy) -> IPAddress:
    """Resolve `host` once and return an allowed address to connect to (the first of `resolve_all_checked`)."""
    return (await resolve_all_checked(host, port, policy))[0]


async def resolve_all_checked(host: str, port: int, policy: AddressPolicy) -> list[IPAddress]:
    """Resolve `host` once and return its addresses, in resolver order, all allowed by `policy`.

    Every resolved address must pass: a name that answers with one public and one internal address
    is refused, since which one a later connection uses is not under our control.
    """
    ip = check_host_literal(host, policy)
    if ip is not None:
        return [ip]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressRefused(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # the idna codec: a label over 63 characters, an empty one (`...`)
        raise AddressRefused(f"cannot resolve host {host!r}: {exc}") from None
    # An inet sockaddr's host is a str (the stub's `str | int` covers other families); `%` is an IPv6 zone.
    addresses = _unique(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)
    if not addresses:
        raise AddressRefused(f"host {host!r} resolved to no address")
    for address in addresses:
        reason = refusal_reason(address, policy)
        if reason:
            raise AddressRefused(f"host {host!r} resolves to a refused address: {reason}")
    return addresses


def _unique(items: Iterable[IPAddress]) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
