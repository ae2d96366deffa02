"""Proxy DHCP edge: tells PXE, iPXE and UEFI HTTP-boot firmware where to boot from (UDP 67, 4011).

It never hands out addresses; the site's DHCP server keeps doing that. Layout:
- codec.py: strict DHCP parsing/encoding over dpkt (bytes ↔ Packet/Reply).
- classify.py: DHCP options → model.Client (firmware, arch, uuid).
- answer.py: the controller: Client + the core's decision → reply bytes and destination.
- protocol.py: the Twisted side (IP_PKTINFO-aware UDP port, thin DatagramProtocol).
- metrics.py: Prometheus counters.

`listen_dhcp` is the one entry point the service wiring calls.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from netbootd.binderrors import bind_message
from netbootd.config.settings import Settings
from netbootd.core.interfaces import DhcpCore
from netbootd.dhcp.answer import DhcpController
from netbootd.dhcp.flood import FloodGuard
from netbootd.dhcp.protocol import READ_SIZE, DhcpProtocol, InterfaceAddresses, PktinfoPort

__all__ = ["DhcpBindError", "DhcpController", "listen_dhcp"]


class DhcpBindError(RuntimeError):
    """A DHCP port could not be bound; the message says why and what to do."""


def _bind_message(port: int, exc: CannotListenError, setting: str = "dhcp.port") -> str:
    return bind_message(
        f"cannot bind UDP {port}", exc, port=port, setting=setting,
        denied="needs root or CAP_NET_BIND_SERVICE (set {setting} or run as root)",
        in_use=("another DHCP server holds it without SO_REUSEADDR. To share the host with dnsmasq, run dnsmasq "
                "with --bind-interfaces (or --bind-dynamic), which binds with SO_REUSEADDR; otherwise stop the "
                "other server or change {setting}"),
        not_here="{error} (check {setting})", other="{error} (check {setting})",
    )  # fmt: skip


def listen_dhcp(
    reactor: object, settings: Settings, core: DhcpCore, *, controller: DhcpController | None = None
) -> list[IListeningPort]:
    """Start the DHCP (settings.dhcp.port) and PXE boot-server (settings.dhcp.proxy_port) listeners.

    `reactor` must be one of Twisted's POSIX reactors (the ports use recvmsg/sendmsg on the fd).
    Raises DhcpBindError (with no port left open) if either cannot be bound.
    """
    controller = controller or DhcpController(core)
    addresses = InterfaceAddresses()
    flood = (FloodGuard(core.is_known, settings.dhcp.unknown_rate, settings.dhcp.unknown_burst)
             if settings.dhcp.unknown_rate > 0 else None)
    ports: list[IListeningPort] = []
    for number, proxy, setting in (
        (settings.dhcp.port, False, "dhcp.port"),
        (settings.dhcp.proxy_port, True, "dhcp.proxy_port"),
    ):
        protocol = DhcpProtocol(
            controller,
            proxy=proxy,
            advertise=settings.advertise,
            interfaces=settings.dhcp.interfaces,
            addresses=addresses,
            flood=flood,
        )
        port = PktinfoPort(number, protocol, interface="", maxPacketSize=READ_SIZE, reactor=reactor)
        try:
            port.startListening()
        except CannotListenError as exc:
            for started in ports:
                started.stopListening()
            raise DhcpBindError(_bind_message(number, exc, setting)) from exc
        ports.append(port)
    return ports
