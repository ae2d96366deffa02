"""TFTP edge: a read-only server for chainloading iPXE (RFC 1350, 2347, 2348, 2349, 7440).

`listen_tftp(reactor, settings, files)` is the only entry point the wiring needs; `files` provides
netbootd.core.interfaces.TftpCore (the boot core, or `TftpFiles` for a plain file server).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase

from netbootd.binderrors import bind_message, no_ipv6
from netbootd.config.settings import Settings, TftpSettings
from netbootd.core.interfaces import TftpCore
from netbootd.logs import get_logger
from netbootd.sockopts import enlarge_receive_buffer
from netbootd.tftp.server import TftpServer
from netbootd.udpport import PktinfoUdpPort

__all__ = ["TftpListenError", "TftpServer", "listen_tftp", "listen_tftp_all"]

log = get_logger("netbootd.tftp")


class TftpPort(PktinfoUdpPort):
    """The listener on every address: each request's local address comes with it (netbootd.udpport),
    so the server answers from the address the client asked (`connect()` alone would pick the
    source by routing, which differs on hosts with several addresses per interface)."""

    reuse_address = False  # a second TFTP server on the port is an error to report, not to share with
    broadcast = False  # a request "from" a broadcast address must not get its answer broadcast
    close_on_read_error = False  # whatever a read says, the port keeps taking requests


class TftpListenError(CannotListenError):
    """The TFTP port could not be bound; `str()` says why and what to do."""

    def __init__(self, interface: str, port: int, socketError: Any, message: str) -> None:
        super().__init__(interface, port, socketError)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _explain(interface: str, port: int, err: BaseException | None) -> str:
    return bind_message(
        f"cannot listen for TFTP on UDP {interface or '0.0.0.0'}:{port}", err, port=port, setting="tftp.port",
        denied=("permission denied: port {port} needs root or CAP_NET_BIND_SERVICE (or set {setting})" if port < 1024
                else "permission denied"),
        in_use="address already in use: is another TFTP server (tftpd-hpa, dnsmasq, ...) running? (or set {setting})",
        not_here="address not available on this host: check tftp.listen",
    )  # fmt: skip


def listen_tftp(reactor: Any, settings: Settings | TftpSettings, files: TftpCore) -> Any:
    """Start the TFTP server; returns its IListeningPort (stopListening() ends all transfers).
    With tftp.listen empty it listens on every IPv4 address and, on a second port whose server
    shares the transfers (`also`), every IPv6 address."""
    return listen_tftp_all(reactor, settings, files)[0]


def listen_tftp_all(reactor: Any, settings: Settings | TftpSettings, files: TftpCore) -> list[Any]:
    """Every TFTP port: IPv4 (first) and IPv6 when tftp.listen is empty, else the one address."""
    tftp = settings.tftp if isinstance(settings, Settings) else settings
    server = TftpServer(reactor, tftp, files)
    ports = []
    try:
        if not tftp.listen and isinstance(reactor, PosixReactorBase):
            # every address: learn each request's destination, answer from it
            port = TftpPort(tftp.port, server, "", 8192, reactor)
            port.startListening()
            ports.append(port)
            try:
                port6 = TftpPort(tftp.port, server.sibling(), "::", 8192, reactor)
                port6.startListening()
                ports.append(port6)
            except CannotListenError as e:
                if not no_ipv6(e):
                    raise
                log.warn("no IPv6 on this host: TFTP answers IPv4 only", error=str(e.socketError))
        else:
            ports.append(reactor.listenUDP(tftp.port, server, interface=tftp.listen, maxPacketSize=8192))
            socket = getattr(ports[0], "socket", None)
            if socket is not None:
                enlarge_receive_buffer(socket)  # a rack's RRQs wait in the kernel, not dropped, while we feed downloads
        return ports
    except CannotListenError as e:
        for started in ports:
            started.stopListening()
        raise TftpListenError(tftp.listen, tftp.port, e.socketError, _explain(tftp.listen, tftp.port, e.socketError)) from e
