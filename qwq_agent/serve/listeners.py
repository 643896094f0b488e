"""Which processes listen on a TCP port, read from Linux's /proc.

A server is ready when *it* answers `/health`, not when something on its port does: SGLang binds its port
only after loading the model (minutes), and whatever starts listening there meanwhile (another user's
SGLang, a second `qwq-agent serve` whose own port check passed because ours had not bound yet) would
answer in its place. The kernel lists every listening socket in /proc/net/tcp and /proc/net/tcp6 with
its inode; a process's open sockets are links `socket:[inode]` in /proc/<pid>/fd, readable for the
processes of our own user (the server we started among them). Other systems have no such files: there
`port_listeners` returns None and the caller cannot tell who answered.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"
"""The state column of a listening socket in /proc/net/tcp (include/net/tcp_states.h)."""


@dataclass(frozen=True)
class PortListeners:
    """Who listens where a connection to `host:port` would land, split by the session they run in."""

    ours: bool
    """A listening socket there is held by a process of the session."""
    foreign: bool
    """A listening socket there is held by no process of the session."""
    foreign_pids: tuple[int, ...] = ()
    """The processes holding the foreign sockets, those whose /proc/<pid>/fd we may read (our user's)."""


def port_listeners(host: str, port: int, session: int) -> PortListeners | None:
    """The listeners that would accept a connection to `host:port`, as held by processes of `session`
    (a session id: the pid of its leader) or by others; None where /proc cannot tell (not Linux).

    A session and not just a process group: the server is started as the leader of a new session, and
    a worker it starts that moves to a group of its own still belongs to it. A stranger does not.
    """
    listening = _listening_inodes(port)
    if listening is None:
        return None
    targets = _targets(host, port)
    inodes = {inode for address, inode in listening if any(_accepts(address, t) for t in targets)}
    ours = inodes & _session_sockets(session)
    strangers = inodes - ours
    return PortListeners(
        ours=bool(ours),
        foreign=bool(strangers),
        foreign_pids=_holders(strangers) if strangers else (),
    )


def _listening_inodes(port: int) -> list[tuple[IPAddress, int]] | None:
    """(local address, inode) of every socket listening on `port` (any address); None if no table can
    be read."""
    found: list[tuple[IPAddress, int]] = []
    read_any = False
    for table in TCP_TABLES:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:  # tcp6 is absent on a kernel without IPv6; both are absent off Linux
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            try:
                if int(hex_port, 16) != port:
                    continue
                found.append((_address(address), int(fields[9])))
            except ValueError:
                continue
    return found if read_any else None


def _address(hex_address: str) -> IPAddress:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in the host's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _targets(host: str, port: int) -> set[IPAddress]:
    """The addresses a client connecting to `host` may reach (a name can resolve to several)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    targets: set[IPAddress] = set()
    for _, _, _, _, sockaddr in infos:
        try:
            targets.add(_plain(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])))
        except ValueError:
            continue
    return targets


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _accepts(listening: IPAddress, target: IPAddress) -> bool:
    """Whether a socket listening on `listening` may accept a connection to `target`.

    An IPv6 wildcard (`::`) counts for IPv4 too: it takes IPv4 connections unless IPV6_V6ONLY is set,
    which /proc does not show, so it is counted as a possible taker.
    """
    if listening.is_unspecified:
        return listening.version == 6 or target.version == 4
    return _plain(listening) == target


def _session_sockets(session: int) -> set[int]:
    """The inodes of the sockets held by every process of `session`."""
    inodes: set[int] = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
                if int(f.read().rsplit(")", 1)[1].split()[3]) != session:
                    continue
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        inodes |= _sockets_of(pid)
    return inodes


def _holders(inodes: set[int]) -> tuple[int, ...]:
    """The processes holding any of `inodes`, among those whose descriptors we may read."""
    return tuple(pid for pid in _pids() if _sockets_of(pid) & inodes)


def _pids() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return []


def _sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets `pid` holds; empty when its descriptors cannot be read (another user's,
    or it ended)."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            inodes.add(int(link[8:-1]))
    return inodes
