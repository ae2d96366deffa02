"""A UDP port that tells its protocol where each datagram arrived (interface, local address) and
can send out of a given interface from a given address: what every proxy-boot UDP edge needs on a
wildcard socket (DHCP, DHCPv6, and the TFTP listener, whose answers must leave from the address
the client asked: PXE ROMs drop them from any other). IPv4 uses IP_PKTINFO, IPv6 IPV6_PKTINFO
(netbootd.sockopts).

Twisted's udp.Port only calls recvfrom()/sendto(); this subclass overrides doRead (recvmsg with
ancillary data) and adds sendFrom (sendmsg), keeping Twisted's registration, bind errors and
stopListening. It works with Twisted's POSIX reactors (epoll, poll, select).

The protocol gets `packetReceived(data, addr, info, truncated)`: `info` a sockopts.PacketInfo (or
None when the kernel did not say), `truncated` True when the datagram was longer than the buffer.
"""

from __future__ import annotations

import socket

from twisted.internet import udp
from twisted.python import log as legacy_log

from netbootd.sockopts import (
    CMSG_SPACE,
    CMSG_SPACE6,
    IP_PKTINFO,
    enlarge_receive_buffer,
    parse_pktinfo,
    parse_pktinfo6,
    pktinfo6_cmsg,
    pktinfo_cmsg,
    v6only,
)


class PktinfoUdpPort(udp.Port):
    reuse_address = True  # share the port with a DHCP server on the same host (it must set it too)
    broadcast = True  # IPv4: answers may go to 255.255.255.255 (DHCP clients without an address)
    # A read error other than "nothing more to read now": raise (Twisted's way: the reactor logs it
    # and closes the port), or, False, end this read and keep the port
    close_on_read_error = True

    def createInternetSocket(self) -> socket.socket:
        skt = super().createInternetSocket()
        if self.reuse_address:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.addressFamily == socket.AF_INET6:
            v6only(skt)  # IPv4 has its own port
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            self._parse, self._cmsg_space = parse_pktinfo6, CMSG_SPACE6
        else:
            if self.broadcast:
                skt.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            skt.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self._parse, self._cmsg_space = parse_pktinfo, CMSG_SPACE
        enlarge_receive_buffer(skt)
        return skt

    def doRead(self) -> None:
        """Read what is queued (up to maxThroughput bytes). A protocol with `batchReceived(batch,
        behind)` gets the whole read at once (to order it: the DHCP edge answers configured machines
        first), with `behind` True when more was still queued (the process is not keeping up);
        others get each datagram as it is read."""
        read = 0
        recvmsg = self.socket.recvmsg
        protocol = self.protocol
        batch: list | None = [] if hasattr(protocol, "batchReceived") else None
        drained = False  # the socket had nothing more: this read is not behind
        while read < self.maxThroughput:
            try:
                data, ancdata, flags, addr = recvmsg(self.maxPacketSize, self._cmsg_space)
            except OSError as se:
                if se.args[0] in udp._sockErrReadIgnore or se.args[0] in udp._sockErrReadRefuse:
                    drained = True
                    break
                if self.close_on_read_error:
                    raise
                break
            read += len(data) or 1
            packet = (data, addr, self._parse(ancdata), bool(flags & socket.MSG_TRUNC))
            if batch is not None:
                batch.append(packet)
                continue
            try:
                protocol.packetReceived(*packet)
            except BaseException:
                legacy_log.err()
        if batch:
            try:
                protocol.batchReceived(batch, not drained)
            except BaseException:
                legacy_log.err()

    def sendFrom(self, datagram: bytes, addr: tuple, ifindex: int = 0, source: str = "") -> None:
        """sendmsg out of interface `ifindex` (0: routing decides), from `source` ("": the kernel's choice)."""
        if not ifindex and not source:
            self.socket.sendto(datagram, addr)
            return
        cmsg = pktinfo6_cmsg(ifindex, source) if self.addressFamily == socket.AF_INET6 else pktinfo_cmsg(ifindex, source)
        self.socket.sendmsg([datagram], [cmsg], 0, addr)
