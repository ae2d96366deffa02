"""The DHCPv6 edge under fuzz: mutated firmware datagrams (every captured and lab fixture) fed to
`Dhcp6Protocol` on 547 and 4011, with a real BootCore behind it and a fake transport (the only
stand-in: no socket is needed to reach the code under test). Each datagram is dropped as malformed
(counted under a known reason) or handled; no exception reaches the protocol's safety net, and
every answer sent parses and is a proxy's (no IA_NA, status or Preference), to the sender.

Examples per target: the fuzz suite's setting (tests/fuzz/conftest.py, NETBOOTD_FUZZ_EXAMPLES)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import HttpSettings, Settings
from netbootd.core.decide import BootCore
from netbootd.dhcp6 import codec
from netbootd.dhcp6.addresses import Interface
from netbootd.dhcp6.answer import Dhcp6Controller
from netbootd.dhcp6.protocol import Dhcp6Protocol
from netbootd.sockopts import PacketInfo
from tests.dhcp6.conftest import LAB_FIXTURES, fixtures
from tests.dhcp6.test_fuzz import SEEDS as CODEC_SEEDS
from tests.fuzz.conftest import fuzz, mutated

SEEDS = [*CODEC_SEEDS, *(f.payload for f in fixtures(LAB_FIXTURES))]
IFINDEX = 2
MACHINES = ("52:54:00:66:00:01", "52:54:00:66:00:02", "52:54:00:99:00:41")


class Addresses:
    """The receiving interface (the lab's bridge): what InterfaceAddresses6 reads from /proc."""

    def lookup(self, ifindex: int) -> Interface:
        return Interface("br0", "fd77::2", "02:77:00:00:00:01") if ifindex == IFINDEX else Interface(None, None, None)

    def all_indexes(self) -> list[int]:
        return [IFINDEX]


class Transport:
    """Records what the protocol sends (PktinfoUdpPort's sendFrom) and says which port it is."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[tuple[bytes, tuple, int, str]] = []

    def getHost(self):
        return self

    def sendFrom(self, payload: bytes, dest: tuple, ifindex: int = 0, source: str = "") -> None:
        self.sent.append((payload, dest, ifindex, source))


@pytest.fixture(scope="module")
def controller(tmp_path_factory) -> Dhcp6Controller:
    root = tmp_path_factory.mktemp("fuzz6")
    machines = root / "machines"
    (machines / "profiles").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / "vmlinuz").write_bytes(b"k")
    (machines / "default.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    for mac in MACHINES:
        (machines / f"{mac.replace(':', '-')}.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    settings = Settings(machines_dir=machines, files_root=root / "files", http=HttpSettings(port=8080))
    return Dhcp6Controller(BootCore(settings, build_catalog(load_machines(settings))))


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("netbootd_dhcp6_dropped_total", {"reason": reason}) or 0.0


def feed(controller: Dhcp6Controller, data: bytes, proxy: bool) -> list[tuple[bytes, tuple, int, str]]:
    port = codec.BOOT_SERVER_PORT if proxy else codec.SERVER_PORT
    proto = Dhcp6Protocol(controller, proxy=proxy, addresses=Addresses())  # type: ignore[arg-type]
    transport = Transport(port)
    proto.makeConnection(transport)  # type: ignore[arg-type]
    source = ("fd77::194", 4011, 0, IFINDEX) if proxy else ("fe80::5054:ff:fe66:1", 546, 0, IFINDEX)
    local = "fd77::2" if proxy else "ff02::1:2"
    before = dropped("internal")
    proto.packetReceived(data, source, PacketInfo(IFINDEX, local, local), False)
    assert dropped("internal") == before, "an exception reached the protocol's safety net"
    for payload, dest, ifindex, _source in transport.sent:
        answer = codec.decode(payload, accept=codec.FROM_SERVER)
        inner = answer.innermost if isinstance(answer, codec.Relay) else answer
        assert inner.msg_type == (codec.REPLY if proxy else codec.ADVERTISE), inner
        assert not inner.has(codec.OPT_IA_NA) and not inner.has(codec.OPT_PREFERENCE), inner
        assert not inner.has(codec.OPT_STATUS_CODE), inner
        assert dest == source and ifindex == IFINDEX
    return transport.sent


@fuzz(400)
@given(data=mutated(SEEDS, 8), proxy=st.booleans())
def test_mutated_datagrams(controller, data, proxy):
    feed(controller, data, proxy)


@fuzz(200)
@given(data=st.binary(max_size=600), proxy=st.booleans())
def test_random_bytes(controller, data, proxy):
    feed(controller, data, proxy)


@pytest.mark.parametrize(("capture", "frame", "proxy"), [
    ("lab6-uefi-pxe", 4, False), ("lab6-uefi-pxe", 9, True), ("lab6-uefi-http-boot", 0, False),
])
def test_seeds_are_answered(controller, capture, frame, proxy):
    """Sanity: the unmutated firmware messages are answered, so the properties are not vacuous."""
    (f,) = [f for f in fixtures(LAB_FIXTURES) if f.capture == capture and f.frame == frame]
    assert len(feed(controller, f.payload, proxy)) == 1
