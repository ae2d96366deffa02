"""Fuzz the DHCP edge: the codec, and the whole answer path (protocol → controller → the real
boot core with the example configuration → encoded reply), with the captured firmware requests
(tests/fuzz/corpus/dhcp) mutated, random options in valid framing, and random bytes.

Properties: `codec.decode` raises nothing but MalformedPacket with a known reason; the protocol
never reaches its internal-error safety net; every answer it sends is a valid BOOTREPLY that gives
no address away, for the request's xid, and on port 67 only an OFFER to a DISCOVER; the real
daemon's 4011 port, fed the same, stays up.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settingsfile import load_settings
from netbootd.core.decide import BootCore
from netbootd.dhcp import codec
from netbootd.dhcp.answer import DhcpController
from netbootd.dhcp.protocol import DhcpProtocol, InterfaceAddresses, PacketInfo
from tests.conftest import wait_for
from tests.fuzz.conftest import EXAMPLE_CONFIG, EXAMPLES, corpus, corpus_files, fuzz, mutated

SEEDS = corpus("dhcp")
REQUESTS = [s for s in SEEDS if s[:1] == b"\x01"]
# MACs with a machine file in the example configuration, so mutations reach every boot kind.
EXAMPLE_MACS = [bytes.fromhex(f"52540000000{n}") for n in range(1, 8)] + [bytes.fromhex("525400770010")]
BROADCAST = PacketInfo(ifindex=3, local="255.255.255.255", spec_dst="192.0.2.1")
UNICAST = PacketInfo(ifindex=3, local="192.0.2.1", spec_dst="192.0.2.1")


class OneInterface(InterfaceAddresses):
    """Our own InterfaceAddresses with a fixed table (ifindex 3 = eth0, 192.0.2.1) instead of ioctls."""

    def lookup(self, ifindex):
        return ("eth0", "192.0.2.1") if ifindex == 3 else (None, None)


class RecordingTransport:
    """Where the protocol's answers go: recorded, never sent. A real socket would broadcast port-67
    answers off this host (the live test below uses the unicast 4011 port instead)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data, addr):
        self.sent.append((data, addr))

    def sendFrom(self, data, addr, ifindex=0, source=""):
        self.sent.append((data, addr))

    def getHost(self):
        return None


def _core() -> BootCore:
    """The shipped example with its opt-in default.toml taken (a copy): the captures' MACs are
    machines the example does not know, and they must get an answer to be worth fuzzing."""
    copy = Path(tempfile.mkdtemp(prefix="netbootd-fuzz-")) / "netbootd"
    shutil.copytree(EXAMPLE_CONFIG, copy, ignore=shutil.ignore_patterns("state", "cache"))
    atexit.register(shutil.rmtree, copy.parent, True)
    (copy / "machines" / "default.toml.example").rename(copy / "machines" / "default.toml")
    settings = load_settings(copy / "netbootd.toml")
    result = load_machines(settings)
    assert not result.errors, result.errors
    return BootCore(settings, build_catalog(result))


CORE = _core()


def internal_errors() -> float:
    return REGISTRY.get_sample_value("netbootd_dhcp_dropped_total", {"reason": "internal"}) or 0.0


def answer_path(data: bytes, proxy: bool, info: PacketInfo | None) -> list[tuple[bytes, tuple[str, int]]]:
    transport = RecordingTransport()
    proto = DhcpProtocol(DhcpController(CORE, answer_lines_per_second=5), proxy=proxy, addresses=OneInterface())
    proto.makeConnection(transport)
    before = internal_errors()
    proto.packetReceived(data, ("10.77.0.50", 4011 if proxy else 68), info, False)
    assert internal_errors() == before, "an exception reached the protocol's safety net"
    return transport.sent


def check(data: bytes, proxy: bool, info: PacketInfo | None) -> None:
    try:
        request = codec.decode(data)
    except codec.MalformedPacket as exc:
        assert exc.reason in codec.REASONS
        request = None
    sent = answer_path(data, proxy, info)
    assert len(sent) <= 1
    if sent:
        assert request is not None, "answered a packet the codec refuses"
        payload, _dest = sent[0]
        reply = codec.decode(payload, op=codec.BOOTREPLY)
        assert reply.yiaddr == "0.0.0.0"
        # On 67 only DISCOVERs are answered: an ACK there races the site server's (answer.py).
        assert proxy or (request.msgtype, reply.msgtype) == (codec.DISCOVER, codec.OFFER)
        assert reply.xid == request.xid and reply.chaddr == request.chaddr
        assert codec.MIN_BOOTP <= len(payload) <= codec.MAX_PACKET


def with_mac(data: bytes, mac: bytes) -> bytes:
    return data[:28] + mac + data[34:] if len(data) >= 34 else data


infos = st.sampled_from([BROADCAST, UNICAST, None])


@fuzz(300)
@given(data=mutated(SEEDS), proxy=st.booleans(), info=infos)
@example(data=REQUESTS[0], proxy=False, info=BROADCAST)
def test_mutated_captures(data, proxy, info):
    check(data, proxy, info)


@fuzz(150)
@given(data=mutated(REQUESTS, max_ops=3), mac=st.sampled_from(EXAMPLE_MACS), proxy=st.booleans(), info=infos)
def test_mutated_requests_of_configured_machines(data, mac, proxy, info):
    check(with_mac(data, mac), proxy, info)


def structured() -> st.SearchStrategy[bytes]:
    """Valid framing, hostile contents: random option codes and values after a PXE vendor class,
    so they reach classification, the core and the reply builder, not just the parser."""
    option = st.tuples(
        st.sampled_from([43, 52, 53, 54, 57, 60, 61, 67, 77, 93, 94, 97, 175, 255, 0]) | st.integers(1, 254),
        st.binary(max_size=60),
    )
    vendor = st.sampled_from(
        [b"", b"\x3c\x09PXEClient", b"\x3c\x20PXEClient:Arch:00007:UNDI:003016", b"\x3c\x0aHTTPClient", b"\x4d\x04iPXE"]
    )
    msgtype = st.sampled_from([b"\x35\x01\x01", b"\x35\x01\x03", b"\x35\x01\x08", b"\x35\x01\x09", b""])

    def build(head, mac, mtype, vend, options, giaddr, flags):
        body = mtype + vend + b"".join(bytes((c, min(len(v), 255))) + v[:255] for c, v in options) + b"\xff"
        fixed = bytearray(head[: codec.HEADER_LEN].ljust(codec.HEADER_LEN, b"\0"))
        fixed[0] = 1
        fixed[10:12] = struct.pack("!H", flags)
        fixed[24:28] = giaddr
        fixed[28:34] = mac
        return bytes(fixed) + codec.MAGIC + body

    return st.builds(
        build,
        st.sampled_from(REQUESTS),
        st.sampled_from(EXAMPLE_MACS) | st.binary(min_size=6, max_size=6),
        msgtype,
        vendor,
        st.lists(option, max_size=30),
        st.sampled_from([b"\0\0\0\0", socket.inet_aton("10.77.0.1")]),
        st.integers(0, 0xFFFF),
    )


@fuzz(200)
@given(data=structured(), proxy=st.booleans(), info=infos)
def test_random_options(data, proxy, info):
    check(data, proxy, info)


@fuzz(150)
@given(data=st.binary(max_size=1700), proxy=st.booleans(), info=infos)
def test_random_bytes(data, proxy, info):
    check(data, proxy, info)


@pytest.mark.parametrize("name", [n for n, data in corpus_files("dhcp") if data[:1] == b"\x01"])
def test_every_captured_request_gets_its_answer(name):
    """The seeds are not vacuous: each captured DISCOVER and 4011 REQUEST gets an answer from the
    example config, each port-67 REQUEST (the site server's lease) none
    (seed names end in -<source port>-<destination port>.bin)."""
    data = dict(corpus_files("dhcp"))[name]
    proxy = name.endswith("-4011.bin")
    sent = answer_path(data, proxy, UNICAST if proxy else BROADCAST)
    site_request = not proxy and codec.decode(data).msgtype == codec.REQUEST
    assert len(sent) == (0 if site_request else 1)


def test_live_daemon_proxy_port_survives_garbage(daemon_factory):
    """The real PktinfoPort and protocol in the daemon: mutated requests to the 4011 port (its answers
    are unicast back to the sender, here on loopback); the daemon answers what it should and lives."""
    from hypothesis import HealthCheck, settings

    d = daemon_factory(dhcp=True)
    (d.machines / "default.toml").write_text('[boot]\nchain = "http://boot.example/x"\n')
    d.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0)
    sent = 0

    @settings(max_examples=EXAMPLES or 200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated(REQUESTS))
    def feed(data):
        nonlocal sent
        sock.sendto(data[:1400], ("127.0.0.1", d.proxy_port))
        sent += 1

    try:
        feed()
        # a valid request still gets its answer after all that
        ipxe_request = next(s for s in REQUESTS if b"iPXE" in s and codec.decode(s).msgtype == codec.REQUEST)
        sock.settimeout(5)

        def answered() -> bool:
            sock.sendto(ipxe_request, ("127.0.0.1", d.proxy_port))
            try:
                while True:
                    reply = codec.decode(sock.recv(2048), op=codec.BOOTREPLY)
                    if reply.xid == codec.decode(ipxe_request).xid:
                        return True
            except (TimeoutError, BlockingIOError, codec.MalformedPacket):
                return False

        wait_for(answered, timeout=15, interval=0.2)
    finally:
        sock.close()
    assert d.proc.poll() is None
    assert "Traceback" not in d.log()
    assert sent
