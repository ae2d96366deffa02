"""Socket options shared by the UDP edges (DHCP, TFTP): receive buffers and IP_PKTINFO."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; lets root exceed net.core.rmem_max

# A boot storm arrives in bursts (a rack powering on), and this process may be busy for tens of
# milliseconds (hundreds of downloads to feed). The default receive buffer (~200 KiB, a few
# hundred requests) overflows then, and a dropped DISCOVER or RRQ costs the firmware a retry
# seconds later, where a queued one costs milliseconds. 4 MiB holds a few thousand requests.
STORM_RECEIVE_BUFFER = 4 << 20


def enlarge_receive_buffer(skt: socket.socket, size: int = STORM_RECEIVE_BUFFER) -> None:
    """As large as allowed: SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it the kernel caps
    SO_RCVBUF at net.core.rmem_max (raise that sysctl on a boot server for large fleets)."""
    try:
        skt.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# IP_PKTINFO: which local address (and interface) a datagram on a wildcard socket was sent to,
# read with recvmsg(); the same structure on sendmsg() picks the source address and interface.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11's socket module lacks it
_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
CMSG_SPACE = socket.CMSG_SPACE(_PKTINFO.size)  # recvmsg's ancillary buffer size


class PacketInfo(NamedTuple):
    """IP_PKTINFO of a received datagram."""

    ifindex: int
    local: str  # ipi_addr: the destination address in the IP header (ours, or a broadcast address)
    spec_dst: str  # ipi_spec_dst: the local address the kernel would reply from


_PKTINFO_CACHE: dict[bytes, PacketInfo] = {}  # a storm repeats the same few (ifindex, addresses)


def parse_pktinfo(ancdata: Iterable[tuple[int, int, bytes]]) -> PacketInfo | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            info = _PKTINFO_CACHE.get(data)
            if info is None:
                ifindex, spec_dst, addr = _PKTINFO.unpack_from(data)
                info = PacketInfo(ifindex, socket.inet_ntoa(addr), socket.inet_ntoa(spec_dst))
                if len(_PKTINFO_CACHE) >= 1024:
                    _PKTINFO_CACHE.clear()
                _PKTINFO_CACHE[data] = info
            return info
    return None


def pktinfo_cmsg(ifindex: int = 0, source: str = "") -> tuple[int, int, bytes]:
    """Ancillary data for sendmsg(): out of interface `ifindex` (0: routing decides), from `source`."""
    if ":" in source:
        return pktinfo6_cmsg(ifindex, source)
    spec_dst = socket.inet_aton(source) if source else b"\0\0\0\0"
    return (socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(ifindex, spec_dst, b"\0\0\0\0"))


# IPv6: IPV6_RECVPKTINFO asks for, and IPV6_PKTINFO carries, struct in6_pktinfo { in6_addr addr; unsigned ifindex; }
_PKTINFO6 = struct.Struct("=16sI")
CMSG_SPACE6 = socket.CMSG_SPACE(_PKTINFO6.size)


def parse_pktinfo6(ancdata: Iterable[tuple[int, int, bytes]]) -> PacketInfo | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= _PKTINFO6.size:
            addr, ifindex = _PKTINFO6.unpack_from(data)
            local = socket.inet_ntop(socket.AF_INET6, addr)
            return PacketInfo(ifindex, local, local)
    return None


def pktinfo6_cmsg(ifindex: int = 0, source: str = "") -> tuple[int, int, bytes]:
    addr = socket.inet_pton(socket.AF_INET6, source) if source else bytes(16)
    return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _PKTINFO6.pack(addr, ifindex))


def v6only(skt: socket.socket) -> None:
    """An IPv6 socket for IPv6 only: IPv4 has its own socket (and v4-mapped addresses would make one
    client look like two, in rate limits and the boot timeline)."""
    skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
