"""The HTTP listeners: every IPv4 address and, on a port of its own, every IPv6 address (or the one
address http.listen names).

Two sockets rather than one dual-stack socket: on a dual-stack socket an IPv4 client appears as
::ffff:a.b.c.d, which would make one machine two in the per-client rate limits and in the boot
timeline (which knows machines by the address DHCP saw). IPV6_V6ONLY must be set before bind(),
so the IPv6 port is a tcp.Port that sets it when it makes its socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.error import CannotListenError

from netbootd.binderrors import no_ipv6
from netbootd.logs import get_logger
from netbootd.sockopts import v6only

log = get_logger("netbootd.http")

BACKLOG = 4096  # Twisted's default is 50; a storm of 4000 machines overflowed 1024 (bench/storm.py)


class V6OnlyPort(tcp.Port):
    def createInternetSocket(self):
        skt = super().createInternetSocket()
        v6only(skt)
        return skt


def listen_http(reactor: Any, port: int, site: Any, listen: str) -> list[Any]:
    """Start listening; raises CannotListenError for the first address that cannot be bound
    (an IPv6-less host is not an error: IPv4 only, logged)."""
    if listen:
        return [reactor.listenTCP(port, site, backlog=BACKLOG, interface=listen)]
    ports = [reactor.listenTCP(port, site, backlog=BACKLOG, interface="")]
    v6 = V6OnlyPort(port, site, BACKLOG, "::", reactor)
    try:
        v6.startListening()
    except CannotListenError as exc:
        if not no_ipv6(exc):
            ports[0].stopListening()
            raise
        log.warn("no IPv6 on this host: HTTP answers IPv4 only", error=str(exc.socketError))
        return ports
    return [*ports, v6]
