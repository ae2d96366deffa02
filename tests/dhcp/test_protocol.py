"""netbootd.dhcp.protocol: the thin protocol (fake transports) and the IP_PKTINFO port (loopback)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.testing import FakeDatagramTransport

from netbootd.config.settings import DhcpSettings, Settings
from netbootd.dhcp import DhcpBindError, _bind_message, codec, listen_dhcp
from netbootd.dhcp.answer import DhcpController
from netbootd.dhcp.protocol import DhcpProtocol, InterfaceAddresses, PacketInfo, PktinfoPort
from netbootd.logs import RateLimiter
from netbootd.sockopts import parse_pktinfo
from tests.dhcp.conftest import FakeCore, OfferingCore
from tests.dhcp.test_codec import request_bytes
from tests.helpers import held_udp_port

REPO = Path(__file__).resolve().parents[2]
BIOS = b"\x35\x01\x01\x3c\x20PXEClient:Arch:00000:UNDI:002001\x5d\x02\x00\x00\xff"


def dropped(reason):
    return REGISTRY.get_sample_value("netbootd_dhcp_dropped_total", {"reason": reason}) or 0.0


class StubAddresses(InterfaceAddresses):
    def __init__(self, table):
        super().__init__()
        self.table = table

    def lookup(self, ifindex):
        return self.table.get(ifindex, (None, None))


class PktinfoTransport(FakeDatagramTransport):
    """A fake transport that also records sendFrom (as PktinfoPort offers)."""

    def __init__(self):
        super().__init__()
        self.sent = []

    def sendFrom(self, datagram, addr, ifindex=0, source=""):
        self.sent.append((datagram, addr, ifindex, source))


def make(proxy=False, transport=None, **kw):
    kw.setdefault("addresses", StubAddresses({3: ("eth0", "192.0.2.1"), 4: ("eth1", None)}))
    proto = DhcpProtocol(DhcpController(FakeCore()), proxy=proxy, **kw)
    proto.makeConnection(transport or PktinfoTransport())
    return proto


BCAST = PacketInfo(ifindex=3, local="255.255.255.255", spec_dst="192.0.2.1")


def test_broadcast_answered_out_of_receiving_interface_with_its_address():
    proto = make()
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    ((payload, dest, ifindex, source),) = proto.transport.sent
    assert (dest, ifindex, source) == (("255.255.255.255", 68), 3, "")  # kernel: the interface's address
    assert codec.decode(payload, op=codec.BOOTREPLY).siaddr == "192.0.2.1"


def test_unicast_uses_the_address_it_was_sent_to():
    proto = make(proxy=True)
    info = PacketInfo(ifindex=3, local="192.0.2.7", spec_dst="192.0.2.7")
    proto.packetReceived(
        request_bytes(BIOS.replace(b"\x35\x01\x01", b"\x35\x01\x03")), ("192.0.2.50", 4011), info, False
    )
    ((payload, dest, ifindex, source),) = proto.transport.sent
    assert (dest, ifindex, source) == (("192.0.2.50", 4011), 0, "192.0.2.7")
    assert codec.decode(payload, op=codec.BOOTREPLY).siaddr == "192.0.2.7"


# A BIOS PXE client's REQUEST for the lease of the server at 192.0.2.1 (option 54), asking for .50.
REQUEST_FOR_192_0_2_1 = BIOS.replace(b"\x35\x01\x01", b"\x35\x01\x03\x36\x04\xc0\x00\x02\x01\x32\x04\xc0\x00\x02\x32")


@pytest.mark.parametrize("advertise", ["", "192.0.2.1", "203.0.113.9"])
def test_request_on_67_sends_nothing(advertise):
    """Whatever we advertise, the interface's own address (192.0.2.1: the DHCP server's host and
    address) included, a REQUEST broadcast to 67 leaves nothing on the wire; on 4011 it is answered."""
    before = dropped("request-for-dhcp-server")
    proto = make(advertise=advertise)
    proto.packetReceived(request_bytes(REQUEST_FOR_192_0_2_1), ("0.0.0.0", 68), BCAST, False)
    assert proto.transport.sent == []
    assert dropped("request-for-dhcp-server") == before + 1
    proxy = make(proxy=True, advertise=advertise)
    proxy.packetReceived(request_bytes(REQUEST_FOR_192_0_2_1), ("192.0.2.50", 4011), BCAST, False)
    ((payload, _dest, _ifindex, _source),) = proxy.transport.sent
    assert codec.decode(payload, op=codec.BOOTREPLY).msgtype == codec.ACK


def test_advertise_overrides():
    proto = make(advertise="203.0.113.9")
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    ((payload, _dest, _ifindex, source),) = proto.transport.sent
    assert codec.decode(payload, op=codec.BOOTREPLY).siaddr == "203.0.113.9"
    assert source == "203.0.113.9"  # from the advertised address while the kernel accepts it as ours


def test_advertised_address_not_on_this_host_falls_back_to_the_interface_address():
    class NotLocal(PktinfoTransport):
        def sendFrom(self, datagram, addr, ifindex=0, source=""):
            if source:
                raise OSError(errno.EINVAL, "Invalid argument")
            super().sendFrom(datagram, addr, ifindex, source)

    proto = make(advertise="203.0.113.9", transport=NotLocal())
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    assert [(dest, ifindex, source) for _, dest, ifindex, source in proto.transport.sent] == [
        (("255.255.255.255", 68), 3, ""),
        (("255.255.255.255", 68), 3, ""),
    ]
    assert codec.decode(proto.transport.sent[0][0], op=codec.BOOTREPLY).siaddr == "203.0.113.9"


def test_interface_without_address_is_not_answered():
    before = dropped("no-address")
    proto = make()
    proto.packetReceived(
        request_bytes(BIOS), ("0.0.0.0", 68), PacketInfo(4, "255.255.255.255", "10.0.0.1"), False
    )
    assert proto.transport.sent == []
    assert dropped("no-address") == before + 1


def test_interfaces_filter():
    before = dropped("interface")
    proto = make(interfaces=["eth1"])
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    assert proto.transport.sent == []
    assert dropped("interface") == before + 1
    proto = make(interfaces=["eth0"])
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    assert len(proto.transport.sent) == 1


def test_plain_transport_without_pktinfo():
    transport = FakeDatagramTransport()
    proto = make(transport=transport, advertise="192.0.2.1")
    proto.datagramReceived(request_bytes(BIOS), ("0.0.0.0", 68))
    ((payload, dest),) = transport.written
    assert codec.decode(payload, op=codec.BOOTREPLY).siaddr == "192.0.2.1"
    assert dest == ("255.255.255.255", 68)


def test_malformed_is_counted_and_logging_is_rate_limited(capture_log):
    clock = task.Clock()
    proto = make(limiter=RateLimiter(burst=3, period=60, clock=clock.seconds))
    before = dropped("bad-cookie")
    for _ in range(20):
        proto.packetReceived(request_bytes(cookie=b"XXXX"), ("10.0.0.9", 68), BCAST, False)
    assert dropped("bad-cookie") == before + 20
    warned = [e for e in capture_log if e.get("reason") == "bad-cookie"]
    assert len(warned) == 3
    clock.advance(61)
    proto.packetReceived(request_bytes(cookie=b"XXXX"), ("10.0.0.9", 68), BCAST, False)
    warned = [e for e in capture_log if e.get("reason") == "bad-cookie"]
    assert warned[-1]["suppressed"] == 17
    assert proto.transport.sent == []


def test_truncated_by_socket_is_oversized():
    before = dropped("oversized")
    make().packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, True)
    assert dropped("oversized") == before + 1


def test_internal_errors_never_escape(capture_log):
    class Broken(OfferingCore):
        def offer(self, client, server_ip):
            raise RuntimeError("core bug")

    proto = DhcpProtocol(
        DhcpController(Broken()), proxy=False, addresses=StubAddresses({3: ("eth0", "192.0.2.1")})
    )
    proto.makeConnection(PktinfoTransport())
    before = dropped("internal")
    proto.packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    assert dropped("internal") == before + 1
    assert any(e.get("log_failure") is not None for e in capture_log)


def test_send_errors_are_counted():
    class Failing(PktinfoTransport):
        def sendFrom(self, *a, **kw):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

    before = dropped("send-error")
    make(transport=Failing()).packetReceived(request_bytes(BIOS), ("0.0.0.0", 68), BCAST, False)
    assert dropped("send-error") == before + 1


def test_parse_pktinfo():
    data = (3).to_bytes(4, sys.byteorder) + bytes([192, 0, 2, 1]) + bytes([255] * 4)
    assert parse_pktinfo([(socket.IPPROTO_IP, 8, data)]) == PacketInfo(3, "255.255.255.255", "192.0.2.1")
    assert parse_pktinfo([]) is None


def test_interface_addresses_of_loopback():
    name, address = InterfaceAddresses().lookup(socket.if_nametoindex("lo"))
    assert (name, address) == ("lo", "127.0.0.1")
    assert InterfaceAddresses().lookup(999999) == (None, None)


# -- real sockets on loopback (no root needed) -------------------------------------------------


def _wait_readable(sock, reactor):
    d = defer.Deferred()

    def poll():
        try:
            d.callback(sock.recvfrom(2048))
        except BlockingIOError:
            reactor.callLater(0.01, poll)

    poll()
    return d


@pytest_twisted.ensureDeferred
async def test_pktinfo_port_on_loopback():
    from twisted.internet import reactor

    proto = DhcpProtocol(DhcpController(FakeCore()), proxy=True)
    port = PktinfoPort(0, proto, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        request = request_bytes(BIOS.replace(b"\x35\x01\x01", b"\x35\x01\x03"))
        client.sendto(request, ("127.0.0.1", port.getHost().port))
        data, addr = await _wait_readable(client, reactor)
        assert addr == ("127.0.0.1", port.getHost().port)
        reply = codec.decode(data, op=codec.BOOTREPLY)
        assert (reply.msgtype, reply.siaddr, reply.file) == (codec.ACK, "127.0.0.1", b"undionly.kpxe")
        assert proto.port == port.getHost().port
        opts = port.socket.getsockopt
        assert opts(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert opts(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        assert opts(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert opts(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 200_000  # doubled by the kernel
    finally:
        client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_listen_dhcp_starts_both_ports():
    from twisted.internet import reactor

    settings = Settings(dhcp=DhcpSettings(port=0, proxy_port=0))
    ports = listen_dhcp(reactor, settings, FakeCore())
    try:
        assert len(ports) == 2
        assert [p.protocol.proxy for p in ports] == [False, True]
    finally:
        for p in ports:
            await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_listen_dhcp_port_in_use_names_dnsmasq_bind_interfaces():
    from twisted.internet import reactor

    with held_udp_port() as busy, pytest.raises(DhcpBindError) as info:
        listen_dhcp(reactor, Settings(dhcp=DhcpSettings(port=0, proxy_port=busy)), FakeCore())
    assert "--bind-interfaces" in str(info.value)
    assert f"UDP {busy}" in str(info.value)
    assert "dhcp.proxy_port" in str(info.value)


def test_bind_message_for_permission_denied():
    exc = CannotListenError("", 67, OSError(errno.EACCES, "Permission denied"))
    assert _bind_message(67, exc) == (
        "cannot bind UDP 67: needs root or CAP_NET_BIND_SERVICE (set dhcp.port or run as root)"
    )


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_unprivileged_bind_of_67_says_so():
    code = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from netbootd.config.settings import Settings\n"
        "from netbootd.dhcp import DhcpBindError, listen_dhcp\n"
        "from tests.dhcp.conftest import FakeCore\n"
        "try:\n"
        "    listen_dhcp(reactor, Settings(), FakeCore())\n"
        "except DhcpBindError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            code,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Permission denied" in out.stderr and "python" in out.stderr.lower() and not out.stdout:
        pytest.skip(f"the unprivileged user cannot run this interpreter: {out.stderr[-200:]}")
    assert "cannot bind UDP 67: needs root or CAP_NET_BIND_SERVICE" in out.stdout, out.stderr
