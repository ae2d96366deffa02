"""A UDP listening port that knows which local address each datagram was sent to.

With the server bound to every address (tftp.listen = ""), a transfer's socket must answer
from the address the client asked: PXE ROMs drop DATA from any other address, and
`connect()` alone picks the source by routing, which differs on hosts with several addresses
per interface or relayed clients. Linux tells the destination with IP_PKTINFO (`recvmsg`);
error replies sent from this port carry the same address as their source (`sendmsg`).
The IP_PKTINFO structure is read and built by netbootd.sockopts, shared with the DHCP edge.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import udp
from twisted.python import log as legacy_log

from netbootd.sockopts import (
    CMSG_SPACE,
    CMSG_SPACE6,
    IP_PKTINFO,
    parse_pktinfo,
    parse_pktinfo6,
    pktinfo_cmsg,
    v6only,
)


class PktinfoPort(udp.Port):
    """udp.Port whose protocol learns the local destination address of every datagram.

    The protocol's `datagramReceived(data, addr)` is called as usual, with `local_address`
    set on the protocol beforehand (None when the kernel did not say).
    """

    def createInternetSocket(self) -> socket.socket:
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            v6only(skt)  # IPv4 has its own port
        return skt

    def _bindSocket(self) -> None:
        super()._bindSocket()
        if self.addressFamily == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            self._parse, self._cmsg_space = parse_pktinfo6, CMSG_SPACE6
        else:
            self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self._parse, self._cmsg_space = parse_pktinfo, CMSG_SPACE

    def doRead(self) -> None:
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancdata, _flags, addr = self.socket.recvmsg(self.maxPacketSize, self._cmsg_space)
            except OSError:  # EAGAIN: all read; ECONNREFUSED and friends: nothing to read now (not connected)
                return
            read += len(data)
            info = self._parse(ancdata)
            self.protocol.local_address = info.spec_dst if info is not None else None
            try:
                self.protocol.datagramReceived(data, addr[:2])
            except BaseException:
                legacy_log.err()

    def write_from(self, datagram: bytes, addr: tuple[str, int], local_ip: str | None) -> Any:
        """sendto() leaving from `local_ip` (when given)."""
        if not local_ip:
            return self.write(datagram, addr)
        return self.socket.sendmsg([datagram], [pktinfo_cmsg(source=local_ip)], 0, addr)
