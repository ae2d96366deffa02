"""The DHCPv6 datagrams of netbootd's own IPv6-only lab boots (fixtures/lab6, from the committed
captures in captures/) run through netbootd's controller with a real BootCore: OVMF's PXE and HTTP
boot SOLICITs and its 4011 REQUEST get, byte for byte, what the daemon sent them in the lab (and
what booted them); everything else OVMF and iPXE sent gets nothing."""

from __future__ import annotations

import ipaddress

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import HttpSettings, Settings
from netbootd.core.decide import BootCore
from netbootd.dhcp6 import codec
from netbootd.dhcp6.answer import Arrival, Dhcp6Controller
from netbootd.dhcp6.duid import duid_ll
from tests.dhcp6.conftest import LAB_FIXTURES, Fixture, fixture, fixture_id, fixtures
from tests.dhcp6.extract_fixtures import LAB_CAPTURE_FILES, LAB_CAPTURES, extract

PXE, HTTP = "52:54:00:66:00:01", "52:54:00:66:00:02"  # the machines of lab6-uefi-pxe, lab6-uefi-http-boot
SERVER_IP = "fd77::2"
SERVER_DUID = duid_ll("02:77:00:00:00:01")  # netbootd's in the lab (the bridge's MAC)
IFINDEX = 2
# (capture, frame of the firmware's message) → frame of netbootd's answer in the capture
ANSWERED = {
    ("lab6-uefi-pxe", 4): 6,  # PXEClient SOLICIT → ADVERTISE tftp://[fd77::2]/snponly.efi
    ("lab6-uefi-pxe", 9): 10,  # the 4011 REQUEST → REPLY
    ("lab6-uefi-http-boot", 0): 1,  # HTTPClient SOLICIT → ADVERTISE http://[fd77::2]:8080/boot/snponly.efi
}


def lab_fixtures() -> list[Fixture]:
    return fixtures(LAB_FIXTURES)


def client_messages() -> list[Fixture]:
    return [f for f in lab_fixtures() if f.from_client]


@pytest.fixture
def core(tmp_path):
    machines = tmp_path / "machines"
    (machines / "profiles").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    for name in ("vmlinuz", "initrd.cpio.gz"):
        (tmp_path / "files" / name).write_bytes(b"x")
    for mac in (PXE, HTTP):
        (machines / f"{mac.replace(':', '-')}.toml").write_text(
            '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.cpio.gz"]\ncmdline = "console=ttyS0"\n')
    settings = Settings(machines_dir=machines, files_root=tmp_path / "files", http=HttpSettings(port=8080),
                        advertise6=SERVER_IP)
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result))


def arrival(f: Fixture, source: str) -> Arrival:
    port = f.dport
    return Arrival(port, port == codec.BOOT_SERVER_PORT, (source, f.sport, 0, IFINDEX), SERVER_IP, SERVER_DUID)


def source_of(f: Fixture) -> str:
    """The sender's address (the fixtures README's datagram column)."""
    readme = (LAB_FIXTURES / "README.md").read_text(encoding="utf-8")
    line = next(row for row in readme.splitlines() if f"`{f.name}`" in row)
    return line.split("| [")[1].split("]")[0]


def test_lab_fixtures_are_the_committed_captures():
    found = lab_fixtures()
    assert {f.capture for f in found} == {name.removesuffix(".pcap") for name in LAB_CAPTURE_FILES}
    assert {f.name: f.payload for f in found} == {name: payload for name, payload, _ in
                                                  extract(LAB_CAPTURES, LAB_CAPTURE_FILES)}
    readme = (LAB_FIXTURES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{f.name}`" in readme for f in found)
    # what the tests below need is there: both boot SOLICITs, the 4011 REQUEST, iPXE's SOLICIT
    kinds = {(f.capture, f.kind, f.dport) for f in client_messages()}
    assert {("lab6-uefi-pxe", "solicit", 547), ("lab6-uefi-pxe", "request", 4011),
            ("lab6-uefi-http-boot", "solicit", 547)} <= kinds


@pytest.mark.parametrize("f", client_messages(), ids=fixture_id)
def test_controller_answers_what_the_daemon_sent(core, f):
    message = f.decode()
    answer = Dhcp6Controller(core).answer(message, arrival(f, source_of(f)))
    expected = ANSWERED.get((f.capture, f.frame))
    if expected is None:
        # EDK2's own address configuration (not a boot client), its REQUESTs and RELEASEs for the
        # site's lease, and iPXE (known by its DUID-UUID only, which names no machine here)
        assert answer is None, f
        return
    assert answer is not None, f
    sent = fixture(f.capture, expected)
    assert answer.payload == sent.payload  # what the daemon put on the wire in the lab, byte for byte
    assert answer.dest[:2] == (source_of(f), f.sport)
    reply = codec.decode(answer.payload, accept=codec.FROM_SERVER)
    assert not reply.has(codec.OPT_IA_NA) and not reply.has(codec.OPT_PREFERENCE) and not reply.has(codec.OPT_STATUS_CODE)
    assert reply.transaction_id == message.transaction_id and reply.client_id == message.client_id


def test_the_answers_name_netbootd_as_the_lab_booted(core):
    urls = {}
    for (capture, frame), _ in ANSWERED.items():
        f = fixture(capture, frame)
        answer = Dhcp6Controller(core).answer(f.decode(), arrival(f, source_of(f)))
        urls[(capture, f.kind)] = codec.decode(answer.payload, accept=codec.FROM_SERVER).bootfile_url
    assert urls == {
        ("lab6-uefi-pxe", "solicit"): "tftp://[fd77::2]/snponly.efi",
        ("lab6-uefi-pxe", "request"): "tftp://[fd77::2]/snponly.efi",
        ("lab6-uefi-http-boot", "solicit"): "http://[fd77::2]:8080/boot/snponly.efi",
    }


def ia_na_addresses(message: codec.Message) -> list[str]:
    """The IAADDR addresses in a message's IA_NA options (RFC 8415 §21.4, §21.6)."""
    out = []
    for value in message.get_all(codec.OPT_IA_NA):
        i = 12  # IAID, T1, T2
        while i + 4 <= len(value):
            code, length = int.from_bytes(value[i:i + 2], "big"), int.from_bytes(value[i + 2:i + 4], "big")
            if code == 5 and length >= 24:
                out.append(str(ipaddress.IPv6Address(value[i + 4:i + 20])))
            i += 4 + length
    return out


@pytest.mark.parametrize(("capture", "frame", "mac"), [("lab6-uefi-pxe", 7, PXE), ("lab6-uefi-http-boot", 3, HTTP)],
                         ids=["pxe-tftp", "http-boot-loader"])
def test_the_lease_edk2_requests_on_547_is_learned(core, capture, frame, mac):
    """EDK2 over IPv6 downloads its boot file (PXE: snponly.efi over TFTP; HTTP boot: /boot/snponly.efi)
    from the address of the IA_NA in the REQUEST it sends the site's server on 547; PXE asks 4011
    from another one (before this was learned, the lab logged `tftp transfer completed mac=""` and
    neither download was in the machine's timeline). Like the DHCPv4 edge with option 50."""
    f = fixture(capture, frame)  # the REQUEST for dnsmasq's lease, after the boot SOLICIT
    message = f.decode()
    assert message.vendor_class()  # the boot client's (PXEClient / HTTPClient), not EDK2's address setup
    (lease,) = ia_na_addresses(message)
    assert message.ia_na_addresses == (lease,)  # the codec reads it as this test's own parser does
    assert Dhcp6Controller(core).answer(message, arrival(f, source_of(f))) is None  # the site server's
    assert core.mac_for_ip(lease) == mac


def test_ipxes_request_on_547_leaves_its_address_to_the_script_request(core):
    """iPXE names itself by a DUID-UUID (all zeros under QEMU), not its MAC. Its REQUEST must not
    claim its lease for that DUID: the script request that names the MAC claims it, and two claims
    would make every later download from that address unattributable (seen in the lab: the kernel
    and initrd unattributed)."""
    f = fixture("lab6-uefi-pxe", 17)
    message = f.decode()
    assert b"iPXE" in message.user_classes and message.client_id[:2] == b"\x00\x04", message  # DUID-UUID
    (lease,) = message.ia_na_addresses
    assert Dhcp6Controller(core).answer(message, arrival(f, source_of(f))) is None
    assert core.mac_for_ip(lease) is None
    core.timeline.record("script", mac=PXE, ip=lease)  # iPXE asks for its script from that address
    assert core.timeline.record("http", ip=lease, path="/files/vmlinuz", seconds=0.1) == PXE
