"""ifindex → the interface's name, MAC and the IPv6 address machines on it can reach netbootd at.

A proxy DHCPv6 answer names netbootd in URLs (`tftp://[addr]/file`, `http://[addr]:port/...`), so
the address must be routable on the client's link: a global or unique-local one, never link-local
(a URL has no place for the interface). Linux lists every address with its scope and flags in
/proc/net/if_inet6; read it, prefer a non-temporary, non-deprecated global address, and cache the
answer for `ttl` seconds (a storm asks thousands of times a second; an interface readdressed is seen
within the TTL).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

IF_INET6 = Path("/proc/net/if_inet6")
SYS_NET = Path("/sys/class/net")
_SCOPE_GLOBAL = 0x00
_DEPRECATED, _TENTATIVE, _TEMPORARY = 0x20, 0x40, 0x01  # IFA_F_* flags


class Interface(NamedTuple):
    name: str | None
    address: str | None  # global (or unique-local) IPv6 address, None if it has none
    mac: str | None


def global_addresses(text: str) -> dict[int, list[str]]:
    """/proc/net/if_inet6 → ifindex → usable addresses, best first."""
    out: dict[int, list[tuple[int, str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        hexaddr, index, _plen, scope, flags = parts[0], int(parts[1], 16), parts[2], int(parts[3], 16), int(parts[4], 16)
        if scope != _SCOPE_GLOBAL or flags & _TENTATIVE:
            continue
        address = str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
        rank = (flags & _DEPRECATED != 0) * 2 + (flags & _TEMPORARY != 0)
        out.setdefault(index, []).append((rank, address))
    return {index: [a for _, a in sorted(found)] for index, found in out.items()}


class InterfaceAddresses6:
    def __init__(self, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 if_inet6: Path = IF_INET6, sys_net: Path = SYS_NET) -> None:
        self.ttl = ttl
        self._clock = clock
        self._if_inet6, self._sys_net = if_inet6, sys_net
        self._cache: dict[int, tuple[float, Interface]] = {}

    def lookup(self, ifindex: int) -> Interface:
        now = self._clock()
        hit = self._cache.get(ifindex)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            name: str | None = socket.if_indextoname(ifindex)
        except OSError:
            name = None
        try:
            addresses = global_addresses(self._if_inet6.read_text()).get(ifindex, [])
        except OSError:
            addresses = []
        mac = None
        if name:
            try:
                mac = (self._sys_net / name / "address").read_text().strip() or None
            except OSError:
                mac = None
        found = Interface(name, addresses[0] if addresses else None, mac)
        self._cache[ifindex] = (now + self.ttl, found)
        return found

    def all_indexes(self) -> list[int]:
        """Every interface with IPv6 (for joining the DHCPv6 multicast group on each)."""
        try:
            text = self._if_inet6.read_text()
        except OSError:
            return []
        return sorted({int(line.split()[1], 16) for line in text.splitlines() if len(line.split()) >= 6})
