"""The Twisted side of proxy DHCPv6: UDP 547 (joined to All_DHCP_Relay_Agents_and_Servers,
ff02::1:2, on every interface) and UDP 4011 over IPv6. Thin: decode, drop and count garbage, hand
to the controller (answer.py), send what it returns out of the interface the request came in on.

Both ports set SO_REUSEADDR, so the site's DHCPv6 server may run on the same host (dnsmasq with
--bind-interfaces does too); each socket gets its own copy of a multicast SOLICIT. Membership is
refreshed every few seconds, so interfaces that come up later are joined.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

from twisted.internet.protocol import DatagramProtocol

from netbootd.dhcp6 import codec
from netbootd.dhcp6.addresses import InterfaceAddresses6
from netbootd.dhcp6.answer import Arrival, Dhcp6Controller
from netbootd.dhcp6.duid import duid_ll
from netbootd.dhcp6.metrics import DROPPED
from netbootd.logs import RateLimiter, get_logger
from netbootd.sockopts import PacketInfo
from netbootd.udpport import PktinfoUdpPort

ALL_DHCP_SERVERS = "ff02::1:2"
READ_SIZE = codec.MAX_PACKET + 1  # one byte more than we accept, so oversize is seen
# Our Server Identifier when the interface has no MAC to make a DUID-LL from (a tunnel, loopback).
FALLBACK_DUID = duid_ll("02:00:00:00:00:01")


class Dhcp6Port(PktinfoUdpPort):
    """A DHCPv6 UDP port that can join the DHCP servers' multicast group on each interface."""

    def join(self, ifindex: int) -> bool:
        mreq = socket.inet_pton(socket.AF_INET6, ALL_DHCP_SERVERS) + struct.pack("@I", ifindex)
        try:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE  # already a member
        return True


class Dhcp6Protocol(DatagramProtocol):
    def __init__(self, controller: Dhcp6Controller, *, proxy: bool, advertise6: str = "",
                 interfaces: Iterable[str] = (), addresses: InterfaceAddresses6 | None = None) -> None:
        self.controller = controller
        self.proxy = proxy
        self.advertise6 = advertise6
        self.interfaces = frozenset(interfaces)
        self.addresses = addresses or InterfaceAddresses6()
        self.limiter = RateLimiter(burst=5, period=60.0)
        self.log = get_logger("netbootd.dhcp6")
        self.port = 0
        self.joined: set[int] = set()

    def startProtocol(self) -> None:
        host = getattr(self.transport, "getHost", None)
        self.port = getattr(host(), "port", 0) if host is not None else 0
        self.join_groups()

    def join_groups(self) -> None:
        """Join ff02::1:2 on every (allowed) interface not joined yet: 547 only (EDK2 sends its 4011
        REQUEST unicast)."""
        join = getattr(self.transport, "join", None)
        if self.proxy or join is None:
            return
        for ifindex in self.addresses.all_indexes():
            if ifindex in self.joined:
                continue
            name = self.addresses.lookup(ifindex).name
            if name == "lo" or (self.interfaces and name not in self.interfaces):
                continue
            if join(ifindex):
                self.joined.add(ifindex)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        """Plain transports (tests with fake transports): no interface information."""
        self.packetReceived(datagram, addr, None, False)

    def packetReceived(self, datagram: bytes, addr, info: PacketInfo | None, truncated: bool) -> None:
        try:
            self._received(datagram, addr, info, truncated)
        except Exception:
            DROPPED.labels("internal").inc()
            self.log.failure("internal error handling a DHCPv6 packet", source=str(addr[0]), size=len(datagram))

    def _received(self, datagram: bytes, addr, info: PacketInfo | None, truncated: bool) -> None:
        accept = codec.TO_BOOT_SERVER if self.proxy else codec.TO_SERVER
        try:
            if truncated:
                raise codec.MalformedPacket("oversized", "truncated by the socket buffer")
            packet = codec.decode(datagram, accept=accept)
        except codec.MalformedPacket as exc:
            DROPPED.labels(exc.reason).inc()
            if self.limiter.allow(exc.reason):
                self.log.warn("dropped malformed DHCPv6 packet", reason=exc.reason, detail=exc.detail,
                              source=str(addr[0]), size=len(datagram), suppressed=self.limiter.take_suppressed(exc.reason))
            return
        ifindex = info.ifindex if info is not None else (addr[3] if len(addr) > 3 else 0)
        interface = self.addresses.lookup(ifindex) if ifindex else None
        if self.interfaces and (interface is None or interface.name not in self.interfaces):
            DROPPED.labels("interface").inc()
            return
        local = info.local if info is not None else ""
        # Unicast to a global address of ours (4011, relays): that address; multicast: the interface's.
        reached = local if local and not local.startswith(("ff", "fe80")) else ""
        server_ip = self.advertise6 or reached or (interface.address if interface else "") or ""
        if not server_ip:
            DROPPED.labels("no-address").inc()
            if self.limiter.allow("no-address"):
                self.log.warn("not answered: no global IPv6 address on the receiving interface to put in URLs "
                              "(give it one, or set advertise6)", interface=interface.name if interface else ifindex)
            return
        mac = interface.mac if interface is not None else None
        server_duid = duid_ll(mac) if mac and mac != "00:00:00:00:00:00" else FALLBACK_DUID
        source = addr if len(addr) > 3 else (addr[0], addr[1], 0, ifindex)
        if source[3] == 0 and source[0].startswith("fe80"):
            source = (source[0], source[1], source[2], ifindex)
        answer = self.controller.answer(packet, Arrival(self.port, self.proxy, source, server_ip, server_duid))
        if answer is None:
            return
        try:
            send_from = getattr(self.transport, "sendFrom", None)
            if send_from is None:
                assert self.transport is not None
                self.transport.write(answer.payload, answer.dest)
            else:
                send_from(answer.payload, answer.dest, ifindex, reached)
        except OSError as exc:
            DROPPED.labels("send-error").inc()
            if self.limiter.allow("send-error"):
                self.log.warn("could not send a DHCPv6 answer: {error}", error=str(exc), dest=str(answer.dest[0]))
