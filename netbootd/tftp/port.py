"""A UDP listening port that knows which local address each datagram was sent to.

With the server bound to every address (tftp.listen = ""), a transfer's socket must answer
from the address the client asked: PXE ROMs drop DATA from any other address, and
`connect()` alone picks the source by routing, which differs on hosts with several addresses
per interface or relayed clients. Linux tells the destination with IP_PKTINFO (`recvmsg`);
error replies sent from this port carry the same address as their source (`sendmsg`).
Python 3.11 has no socket.IP_PKTINFO constant: it is 8 on Linux.
"""

from __future__ import annotations

import socket
import struct
from errno import EAGAIN, EINTR, EWOULDBLOCK
from typing import Any

from twisted.internet import udp
from twisted.python import log as legacy_log

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst (local address), addr (header destination)
_CMSG_SPACE = socket.CMSG_SPACE(_IN_PKTINFO.size)


def pktinfo(local_ip: str) -> list[tuple[int, int, bytes]]:
    """Ancillary data making a sendmsg() leave from `local_ip`."""
    return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, socket.inet_aton(local_ip), b"\0" * 4))]


class PktinfoPort(udp.Port):
    """udp.Port whose protocol learns the local destination address of every datagram.

    The protocol's `datagramReceived(data, addr)` is called as usual, with `local_address`
    set on the protocol beforehand (None when the kernel did not say).
    """

    def _bindSocket(self) -> None:
        super()._bindSocket()
        self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def doRead(self) -> None:
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancdata, _flags, addr = self.socket.recvmsg(self.maxPacketSize, _CMSG_SPACE)
            except OSError as e:
                if e.errno in (EAGAIN, EINTR, EWOULDBLOCK):
                    return
                return  # ECONNREFUSED and friends: nothing to read now (not connected)
            read += len(data)
            local = None
            for level, kind, cdata in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= _IN_PKTINFO.size:
                    local = socket.inet_ntoa(_IN_PKTINFO.unpack_from(cdata)[1])
            self.protocol.local_address = local
            try:
                self.protocol.datagramReceived(data, addr[:2])
            except BaseException:
                legacy_log.err()

    def write_from(self, datagram: bytes, addr: tuple[str, int], local_ip: str | None) -> Any:
        """sendto() leaving from `local_ip` (when given)."""
        if not local_ip:
            return self.write(datagram, addr)
        return self.socket.sendmsg([datagram], pktinfo(local_ip), 0, addr)
