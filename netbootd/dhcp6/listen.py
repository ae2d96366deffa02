"""`listen_dhcp6`: the proxy-DHCPv6 ports (547 and 4011 over IPv6), the one entry point the service
wiring calls. Kept out of the package's __init__ so the codec and classifier import without Twisted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError

from netbootd.binderrors import bind_message, no_ipv6
from netbootd.config.settings import Settings
from netbootd.core.interfaces import DhcpCore
from netbootd.dhcp6.addresses import InterfaceAddresses6
from netbootd.dhcp6.answer import Dhcp6Controller
from netbootd.dhcp6.protocol import READ_SIZE, Dhcp6Port, Dhcp6Protocol
from netbootd.logs import get_logger

log = get_logger("netbootd.dhcp6")
JOIN_INTERVAL = 5.0  # seconds: interfaces that appear later join the multicast group this soon


def listen_dhcp6(reactor: Any, settings: Settings, core: DhcpCore) -> tuple[list[Any], Callable[[], None] | None]:
    """Start UDP 547 and 4011 on every IPv6 address. A host without IPv6 is not an error (logged,
    nothing started); a port held without SO_REUSEADDR is (the message says what to do). Also
    returns what to call every JOIN_INTERVAL seconds: interfaces that appear later join ff02::1:2."""
    controller = Dhcp6Controller(core)
    addresses = InterfaceAddresses6()
    ports: list[Any] = []
    servers: list[Dhcp6Protocol] = []
    for number, proxy, setting in ((settings.dhcp.port6, False, "dhcp.port6"),
                                   (settings.dhcp.proxy_port, True, "dhcp.proxy_port")):
        protocol = Dhcp6Protocol(controller, proxy=proxy, advertise6=settings.advertise6,
                                 interfaces=settings.dhcp.interfaces, addresses=addresses)
        port = Dhcp6Port(number, protocol, interface="::", maxPacketSize=READ_SIZE, reactor=reactor)
        try:
            port.startListening()
        except CannotListenError as exc:
            for started in ports:
                started.stopListening()
            if no_ipv6(exc):
                log.warn("no IPv6 on this host: proxy DHCPv6 is off", error=str(exc.socketError))
                return [], None
            off = " (or set {setting}, or dhcp.ipv6 = false)"
            raise OSError(bind_message(
                f"cannot bind UDP [::]:{number} for proxy DHCPv6", exc, port=number, setting=setting,
                denied="needs root or CAP_NET_BIND_SERVICE" + off,
                in_use="another DHCPv6 server holds it without SO_REUSEADDR (run dnsmasq with --bind-interfaces)" + off,
                other="{error}" + off,
            )) from exc  # fmt: skip
        ports.append(port)
        servers.append(protocol)
    def join_new_interfaces() -> None:
        for server in servers:
            server.join_groups()

    return ports, join_new_interfaces
