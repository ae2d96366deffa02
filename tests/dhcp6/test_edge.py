"""The proxy-DHCPv6 edge of a real daemon, on ::1: OVMF's captured SOLICITs (PXE and HTTP boot) get
the ADVERTISE EDK2 takes, its captured 4011 REQUEST the REPLY, relayed SOLICITs a RELAY-REPL; a
REQUEST for the address server, an ignored machine and garbage get nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from netbootd.dhcp6 import codec
from netbootd.dhcp6.duid import link_layer_option_value
from tests.conftest import wait_for
from tests.helpers import ipv6_loopback

FIXTURES = Path(__file__).parent / "fixtures"
MAC = "52:54:00:99:00:41"  # the captures' machine


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


pytestmark = pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback")


def ask(port: int, payload: bytes, timeout: float = 2.0, source_port: int = 0):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1", source_port))
        s.settimeout(timeout)
        s.sendto(payload, ("::1", port))
        try:
            data, addr = s.recvfrom(4096)
        except TimeoutError:
            return None
    return codec.decode(data, accept=codec.FROM_SERVER), addr


@pytest.fixture
def daemon(daemon_factory):
    d = daemon_factory(dhcp=True)
    (d.files / "vmlinuz").write_bytes(b"k")
    (d.machines / "default.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    (d.machines / "52-54-00-99-00-42.toml").write_text("[boot]\nignore = true\n")
    return d.start()


def test_pxe_solicit_and_4011_request(daemon):
    solicit = codec.decode(fixture("proxy6-uefi-pxe-4011.04.546-547.solicit.bin"))
    advertise, _ = ask(daemon.dhcp6_port, codec.encode(solicit))
    assert advertise.msg_type == codec.ADVERTISE and advertise.transaction_id == solicit.transaction_id
    assert [code for code, _ in advertise.options] == [1, 2, 16, 59]  # no IA_NA, no status, no preference
    assert advertise.client_id == solicit.client_id
    assert advertise.vendor_class() == (codec.PXE_CLIENT,)
    assert advertise.bootfile_url == "tftp://[::1]/snponly.efi"
    request = fixture("proxy6-uefi-pxe-4011.09.4011-4011.request.bin")
    reply, _ = ask(daemon.proxy_port, request)
    assert reply.msg_type == codec.REPLY and reply.bootfile_url == "tftp://[::1]/snponly.efi"
    # the timeline: a DHCPv6 answer on each port, under the machine's MAC (from its DUID)
    events = daemon.ui_get(f"/machines/{MAC}").json()["events"]
    assert [(e["port"], e["offered"]) for e in events if e["stage"] == "dhcp"] == [
        (daemon.dhcp6_port, "tftp snponly.efi"), (daemon.proxy_port, "tftp snponly.efi")]
    assert 'netbootd_dhcp6_answers_total{firmware="efi-pxe",offer="tftp"} 2.0' in daemon.get("/metrics").text


def test_http_boot_solicit(daemon):
    advertise, _ = ask(daemon.dhcp6_port, fixture("proxy6-uefi-http-boot.00.546-547.solicit.bin"))
    assert advertise.vendor_class() == (codec.HTTP_CLIENT,)
    assert advertise.bootfile_url == f"http://[::1]:{daemon.http_port}/boot/snponly.efi"


def test_what_gets_no_answer(daemon):
    # the REQUEST for the address server's lease, on 547: never a proxy's to answer
    assert ask(daemon.dhcp6_port, fixture("proxy6-uefi-pxe-4011.07.546-547.request.bin"), timeout=0.5) is None
    # an ignored machine (the same SOLICIT, another DUID-LL)
    solicit = codec.decode(fixture("proxy6-uefi-pxe-4011.04.546-547.solicit.bin"))
    other = bytes.fromhex("00030001525400990042")
    options = tuple((c, other if c == codec.OPT_CLIENTID else v) for c, v in solicit.options)
    assert ask(daemon.dhcp6_port, codec.encode(solicit._replace(options=options)), timeout=0.5) is None
    # garbage: dropped and counted
    assert ask(daemon.dhcp6_port, b"\x01\x00\x00", timeout=0.5) is None
    metrics = daemon.get("/metrics").text
    assert 'netbootd_dhcp6_dropped_total{reason="request-for-dhcp-server"} 1.0' in metrics
    assert wait_for(lambda: "not answered: 52-54-00-99-00-42: boot.ignore = true" in daemon.log())
    # and it still answers
    assert ask(daemon.dhcp6_port, fixture("proxy6-uefi-pxe-4011.04.546-547.solicit.bin")) is not None


def test_relayed_solicit_is_answered_through_the_relay(daemon):
    solicit = codec.decode(fixture("proxy6-uefi-pxe-4011.04.546-547.solicit.bin"))
    # a relay on the client's link: it adds the client's MAC (option 79) and an interface id
    forward = codec.Relay(codec.RELAY_FORW, 0, "fd00:77::1", "fe80::5054:ff:fe99:41",
                          ((codec.OPT_INTERFACE_ID, b"eth3"),
                           (codec.OPT_CLIENT_LINKLAYER_ADDR, link_layer_option_value(MAC)),
                           codec.relay_message_option(solicit)), solicit)
    answer, _ = ask(daemon.dhcp6_port, codec.encode(forward))
    assert answer.msg_type == codec.RELAY_REPL and answer.interface_id == b"eth3"
    assert answer.peer_address == "fe80::5054:ff:fe99:41"
    inner = answer.innermost
    assert inner.msg_type == codec.ADVERTISE and inner.bootfile_url == "tftp://[::1]/snponly.efi"
