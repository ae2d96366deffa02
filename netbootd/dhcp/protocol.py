"""Thin Twisted protocols for UDP 67 and 4011: decode, drop and count garbage, hand to the controller.

Why our own UDP port class: a proxy must know which interface a broadcast DISCOVER arrived on (to
advertise that interface's address and to send the broadcast answer back out of it), and the only
per-packet way to learn that on one wildcard socket is IP_PKTINFO, read with recvmsg(). Twisted's
`udp.Port` only calls recvfrom()/sendto(), so `PktinfoPort` subclasses it and overrides `doRead`
(recvmsg + ancillary data) and adds `sendFrom` (sendmsg + IP_PKTINFO), keeping everything else
(reactor registration, bind errors, stopListening) from Twisted. It works with Twisted's POSIX
reactors (epoll, poll, select), which is what netbootd runs on (Linux).

One wildcard socket per port rather than one per interface (SO_BINDTODEVICE): interfaces that
appear later just work, and `dhcp.interfaces` is enforced by filtering on the receiving interface.

Sockets set SO_REUSEADDR so a DHCP server on the same host can bind 67 too: dnsmasq does the same
when run with `--bind-interfaces` (or `--bind-dynamic`); both then receive every broadcast.
Never SO_REUSEPORT: it load-balances datagrams between the sockets, so each server would see only
part of the clients.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import time
from collections.abc import Callable, Iterable

from twisted.internet.protocol import DatagramProtocol

from netbootd.dhcp import codec
from netbootd.dhcp.answer import Answer, Arrival, DhcpController
from netbootd.dhcp.flood import FloodGuard
from netbootd.dhcp.metrics import DROPPED
from netbootd.logs import RateLimiter, get_logger
from netbootd.sockopts import PacketInfo
from netbootd.udpport import PktinfoUdpPort

SIOCGIFADDR = 0x8915
READ_SIZE = codec.MAX_PACKET + 1  # one byte more than we accept, so oversize is seen
# Reads in a row that left more queued (each takes up to 256 KiB: ~700 DISCOVERs) before unknown MACs
# are shed: a storm's burst fills a read or two, a flood beyond this process's speed fills them all.
SHED_AFTER_READS = 2


class PktinfoPort(PktinfoUdpPort):
    """The DHCP ports: netbootd.udpport's port, which tells the protocol the receiving interface
    and sends out of it (SO_REUSEADDR, SO_BROADCAST, IP_PKTINFO)."""


class InterfaceAddresses:
    """ifindex → (name, primary IPv4 address), from if_indextoname + SIOCGIFADDR, cached for `ttl` s.

    The cache keeps the per-packet cost of a boot storm at one dict lookup; the TTL picks up
    readdressed interfaces without a restart.
    """

    def __init__(self, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[int, tuple[float, str | None, str | None]] = {}
        self._sock: socket.socket | None = None

    def lookup(self, ifindex: int) -> tuple[str | None, str | None]:
        now = self._clock()
        hit = self._cache.get(ifindex)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        name = address = None
        try:
            name = socket.if_indextoname(ifindex)
            address = self._ioctl_address(name)
        except OSError:
            pass
        self._cache[ifindex] = (now + self.ttl, name, address)
        return name, address

    def _ioctl_address(self, name: str) -> str | None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            res = fcntl.ioctl(self._sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None  # no IPv4 address on this interface
        return socket.inet_ntoa(res[20:24])


class DhcpProtocol(DatagramProtocol):
    """One UDP port (67 or 4011). Decodes, filters, asks the controller, sends what it returns."""

    def __init__(
        self,
        controller: DhcpController,
        *,
        proxy: bool,
        advertise: str = "",
        interfaces: Iterable[str] = (),
        addresses: InterfaceAddresses | None = None,
        limiter: RateLimiter | None = None,
        flood: FloodGuard | None = None,
    ) -> None:
        self.controller = controller
        self.flood = flood  # unknown MACs beyond a budget are dropped before they are decoded
        self.behind_reads = 0  # consecutive reads of the socket that left more queued
        self.proxy = proxy
        self.advertise = advertise
        self.interfaces = frozenset(interfaces)
        self.addresses = addresses or InterfaceAddresses()
        self.limiter = limiter or RateLimiter(burst=5, period=60.0)
        self.log = get_logger("netbootd.dhcp")
        self.port = 0
        self._bound_ip = ""
        self._advertise_is_local = bool(advertise)  # until sendmsg says otherwise

    def set_advertise(self, advertise: str) -> None:
        """`advertise` changed by a reload: the next answer carries it."""
        self.advertise = advertise
        self._advertise_is_local = bool(advertise)

    def startProtocol(self) -> None:
        host = getattr(self.transport, "getHost", None)
        address = host() if host is not None else None
        self.port = getattr(address, "port", 0)
        bound = getattr(address, "host", "")
        self._bound_ip = bound if bound not in ("", "0.0.0.0") else ""

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Plain transports (no IP_PKTINFO): used by tests with fake transports."""
        self.packetReceived(datagram, addr, None, False)

    def batchReceived(self, batch: list, behind: bool = False) -> None:
        """One read of the socket (netbootd.udpport): configured machines first, then the rest —
        none of the rest while `behind` (more was queued than one read takes) during a flood (the
        unknown-MAC budget ran out lately), so the queue drains at the speed of reading and a
        configured machine waits one read, not a flood. A storm of new machines within the budget
        is behind too, and answered in full."""
        if self.flood is None:
            for packet in batch:
                self.packetReceived(*packet)
            return
        # Behind for several reads in a row: a standing queue (a storm's burst fills one read, then drains)
        self.behind_reads = self.behind_reads + 1 if behind else 0
        shedding = self.behind_reads >= SHED_AFTER_READS and self.flood.flooding()
        for packet in self.flood.order(batch):
            if shedding and not self.flood.is_known(packet[0]):
                self.flood.admit(packet[0])  # its budget still counts: the flood is over when it refills
                DROPPED.inc("unknown-while-behind")
                continue
            self.packetReceived(*packet)

    def packetReceived(
        self, datagram: bytes, addr: tuple[str, int], info: PacketInfo | None, truncated: bool
    ) -> None:
        try:
            self._received(datagram, addr, info, truncated)
        except Exception:
            DROPPED.inc("internal")
            self.log.failure("internal error handling a DHCP packet", source=addr[0], size=len(datagram))

    def _received(
        self, datagram: bytes, addr: tuple[str, int], info: PacketInfo | None, truncated: bool
    ) -> None:
        if self.flood is not None and not self.flood.admit(datagram):
            DROPPED.inc("unknown-over-budget")
            if self.limiter.allow("unknown-over-budget"):
                self.log.warn("requests from unknown MACs over dhcp.unknown_rate: dropped (a flood of spoofed MACs?); "
                              "machines with a file of their own are still answered",
                              suppressed=self.limiter.take_suppressed("unknown-over-budget"))
            return
        try:
            if truncated:
                raise codec.MalformedPacket("oversized", "truncated by the socket buffer")
            request = codec.decode(datagram)
        except codec.MalformedPacket as exc:
            self.malformed(exc, addr, len(datagram))
            return
        local_ip = ""
        ifindex = 0
        if info is not None:
            ifindex = info.ifindex
            name, if_address = self.addresses.lookup(ifindex)
            if self.interfaces and name not in self.interfaces:
                DROPPED.inc("interface")
                return
            # Unicast to us (relay, 4011): the address the sender used. Broadcast: the interface's.
            local_ip = info.local if info.local == info.spec_dst else (if_address or "")
        else:
            local_ip = self._bound_ip  # plain transport: only a specifically bound address is known
        server_ip = self.advertise or local_ip
        if not server_ip:
            DROPPED.inc("no-address")
            self.log.debug("not answered: no IPv4 address on the receiving interface", ifindex=ifindex)
            return
        arrival = Arrival(self.port, self.proxy, addr, server_ip)
        answer = self.controller.answer(request, arrival)
        if answer is not None:
            self.send(answer, ifindex, local_ip)

    def send(self, answer: Answer, ifindex: int, local_ip: str) -> None:
        try:
            send_from = getattr(self.transport, "sendFrom", None)
            if send_from is None:
                assert self.transport is not None  # answers are only sent while listening
                self.transport.write(answer.payload, answer.dest)
            elif answer.broadcast:
                # Out of the receiving interface. Source: the advertised address when it is one of
                # ours (a host with several addresses on the segment), else the kernel's choice
                # for that interface, its primary address, which is the one advertised anyway.
                source = self.advertise if self._advertise_is_local else ""
                try:
                    send_from(answer.payload, answer.dest, ifindex, source)
                except OSError as exc:
                    if not source or exc.errno not in (errno.EINVAL, errno.EADDRNOTAVAIL):
                        raise
                    self._advertise_is_local = False  # advertised address is not on this host
                    send_from(answer.payload, answer.dest, ifindex, "")
            else:
                # Unicast (relay, 4011): routed normally, from the address the sender used.
                send_from(answer.payload, answer.dest, 0, local_ip)
        except OSError as exc:
            DROPPED.inc("send-error")
            if self.limiter.allow("send-error"):
                self.log.warn("could not send a DHCP answer: {error}", error=str(exc), dest=answer.dest[0])

    def malformed(self, exc: codec.MalformedPacket, addr: tuple[str, int], size: int) -> None:
        DROPPED.inc(exc.reason)
        if self.limiter.allow(exc.reason):
            self.log.warn(
                "dropped malformed DHCP packet",
                reason=exc.reason,
                detail=exc.detail,
                source=f"{addr[0]}:{addr[1]}",
                size=size,
                suppressed=self.limiter.take_suppressed(exc.reason),
            )
