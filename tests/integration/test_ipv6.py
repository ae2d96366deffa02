"""IPv6-only network boots: real OVMF on a segment without IPv4 (Lab(ipv6=True), see conftest.lab6).

The site's server (dnsmasq at fd77::1) gives stateful DHCPv6 addresses and router advertisements;
netbootd (fd77::2) answers as a proxy: an ADVERTISE without IA_NA carrying the boot URL (option 59)
and, on [fd77::2]:4011, EDK2's boot-server REQUEST. iPXE runs its own DHCPv6 afterwards and boots
option 59 of the site server's REPLY, which names netbootd's script URL (lab.IPXE_SCRIPT_PATH): so
both firmware paths end in iPXE → per-machine script → kernel + initrd → the guest's marker, whose
address is its SLAAC address on fd77::/64.

Every test reads the capture of the bridge: each DHCPv6 answer netbootd sent (Server ID: a DUID-LL
of the bridge's MAC) has no IA_NA, no status and no Preference (EDK2 and iPXE would otherwise take
netbootd for an address server, and Preference 255 would make them stop waiting for the real one).
"""

from __future__ import annotations

import json
import re

import pytest

from netbootd.dhcp6 import codec
from netbootd.dhcp6.duid import duid_ll
from netbootd.testing.lab import BOOT_IP6, BRIDGE_MAC6, HTTP_PORT, IPXE_SCRIPT_PATH

from .conftest import _lab, need

pytestmark = pytest.mark.integration

PXE = "52:54:00:66:00:01"
HTTP = "52:54:00:66:00:02"
IGNORED = "52:54:00:66:00:03"
STUB = "52:54:00:66:00:04"
BASE = f"http://[{BOOT_IP6}]:{HTTP_PORT}"
NETBOOTD_DUID = duid_ll(BRIDGE_MAC6)  # netbootd's Server ID (lab host "second-address": br0's MAC)


def slaac(mac: str, prefix: str = "fd77::") -> str:
    """The address the guest's kernel makes from the router advertisement's prefix (EUI-64)."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    groups = [f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2)]
    return f"{prefix}{':'.join(groups)}"


def assert_booted6(marker, mac: str, hostname: str, secret: str) -> None:
    assert marker.mac == mac
    assert marker.ip == f"{slaac(mac)}/64", marker  # IPv6 only: the guest has no IPv4 to report
    words = marker.cmdline.split()
    assert f"nbd_host={hostname}" in words, marker.cmdline
    signed = re.compile(re.escape(f"nbd_ign={BASE}/ignition?mac={mac.replace(':', '-')}&exp=") + r"\d+&sig=[0-9a-f]{32}$")
    assert any(signed.match(w) for w in words), marker.cmdline
    assert json.loads(marker.ignition) == {"ignition": {"version": "3.4.0"}, "netbootd_marker": secret}


def check_download_in_timeline(lab, mac: str, stage: str, name: str) -> None:
    """EDK2 downloads its loader from the address it asked the site server for on 547, which the
    DHCPv6 edge learned from that REQUEST's IA_NA: the download is filed under the machine."""
    doc = lab.get_json(f"/machines/{mac}")
    assert any(e["stage"] == stage and name in str(e.get("file", e.get("path", ""))) for e in doc["events"]), doc
    assert lab.get_json("/machines")["unattributed"] == []


def answers(lab) -> tuple[list[codec.Message], list[codec.Message], list[codec.Message]]:
    """(netbootd's answers, the site server's answers, the clients' messages) on the bridge."""
    ours, site, clients = [], [], []
    for d in lab.dhcp6_datagrams():
        if d.payload[0] in codec.CLIENT_MESSAGES:
            clients.append(codec.decode(d.payload, accept=codec.TO_BOOT_SERVER if d.dport == 4011 else codec.TO_SERVER))
            continue
        message = codec.decode(d.payload, accept=codec.FROM_SERVER)
        assert isinstance(message, codec.Message), d
        (ours if message.server_id == NETBOOTD_DUID else site).append(message)
    return ours, site, clients


def check_answers(lab) -> list[codec.Message]:
    """Every DHCPv6 answer netbootd sent is a proxy's (no IA_NA, status or Preference); returns them."""
    ours, site, _ = answers(lab)
    assert site, "the capture holds no answer of the site's DHCPv6 server: the check would prove nothing"
    assert all(m.server_id != NETBOOTD_DUID and m.server_id[:2] == b"\x00\x01" for m in site)  # dnsmasq: DUID-LLT
    for m in ours:
        codes = [code for code, _ in m.options]
        assert m.msg_type in (codec.ADVERTISE, codec.REPLY), m
        assert codec.OPT_IA_NA not in codes and codec.OPT_PREFERENCE not in codes, m
        assert codec.OPT_STATUS_CODE not in codes, m
        assert m.bootfile_url and m.bootfile_url.startswith((f"tftp://[{BOOT_IP6}]/", f"{BASE}/")), m
    return ours


def check_ipxe_got_its_script_from_the_site(lab, ours: list[codec.Message]) -> None:
    """The iPXE design: iPXE's own DHCPv6 (user class iPXE) REQUESTed the site server's lease and
    booted that REPLY's option 59, netbootd's script URL."""
    _, site, clients = answers(lab)
    ipxe = [m for m in clients if b"iPXE" in m.user_classes]
    assert ipxe and {m.msg_type for m in ipxe} >= {codec.SOLICIT, codec.REQUEST}, clients
    ipxe_ids = {m.client_id for m in ipxe}
    assert all(m.server_id != NETBOOTD_DUID for m in ipxe if m.msg_type == codec.REQUEST)
    # netbootd knows iPXE here only by its DUID-UUID (QEMU's SMBIOS UUID), which names no machine
    # file: it does not answer it; an ADVERTISE would be ignored anyway (no address)
    assert not [m for m in ours if m.client_id in ipxe_ids]
    replies = [m for m in site if m.client_id in ipxe_ids and m.msg_type == codec.REPLY]
    assert any(m.bootfile_url == BASE + IPXE_SCRIPT_PATH and m.has(codec.OPT_IA_NA) for m in replies), replies


# OVMF 2022.11's PXEv6 sometimes does not take netbootd's 4011 REPLY and gives up ("PXE-E16: No valid
# offer received"; 2 of 18 PXE boots here). It sends its 4011 REQUEST from another of its addresses
# than its PXE lease (in every capture here) and the REPLY to that address was on the wire 0.6-7 ms
# later in both failures; the cause inside the firmware is not pinned down. Only the proxy path has
# this exchange (a site server that gives option 59 itself has none): the PXE boots power the machine
# on once more when it happens, and say so.
EDK2_4011_FLAKE = r"PXE-E16: No valid offer received"


def stages(lab, mac: str) -> list[str]:
    return [e["stage"] for e in lab.get_json(f"/machines/{mac}")["events"]]


def test_uefi_pxe_over_ipv6(lab6):
    """OVMF PXEv6 → netbootd's ADVERTISE (tftp://[fd77::2]/snponly.efi) → REQUEST/REPLY on
    [fd77::2]:4011 → TFTP over IPv6 → iPXE's own DHCPv6 → the site's option 59 → script → kernel +
    initrd → marker."""
    need("uefi6")
    lab = lab6
    lab.kernel_machine(PXE, "pxe6", "pxe6-secret")
    lab.start_netbootd()
    marker = lab.booted(PXE, "uefi6", retry_on=EDK2_4011_FLAKE)
    assert_booted6(marker, PXE, "pxe6", "pxe6-secret")
    ours = check_answers(lab)
    edk2 = [m for m in ours if m.vendor_class() == (codec.PXE_CLIENT,)]
    assert {m.msg_type for m in edk2} == {codec.ADVERTISE, codec.REPLY}, edk2  # 547, then 4011
    assert {m.bootfile_url for m in edk2} == {f"tftp://[{BOOT_IP6}]/snponly.efi"}
    check_ipxe_got_its_script_from_the_site(lab, ours)
    check_download_in_timeline(lab, PXE, "tftp", "snponly.efi")
    log = lab.netbootd_log()
    assert re.search(r"tftp transfer completed .*client=fd77::[0-9a-f:]+ .*file=snponly.efi", log), log
    events = lab.get_json(f"/machines/{PXE}")["events"]
    assert {e["port"] for e in events if e["stage"] == "dhcp"} == {547, 4011}, events
    seen = stages(lab, PXE)
    # (no "tftp" stage: EDK2 asks 4011 from one address and fetches over TFTP from its PXE lease,
    # which the DHCPv6 edge never learns: tests/dhcp6/test_lab_fixtures.py, the xfail test)
    assert seen.index("dhcp") < seen.index("script") < seen.index("beacon") < seen.index("ignition"), seen


def test_uefi_http_boot_over_ipv6(lab6):
    """OVMF HTTPv6 boot → netbootd's ADVERTISE (HTTPClient, http://[fd77::2]:8080/boot/snponly.efi)
    → iPXE over HTTP → its own DHCPv6 → the site's option 59 → script → kernel + initrd → marker.

    A kernel machine, not a UKI: the per-machine command line and signed Ignition URL come from the
    script, so HTTP boot proves the same iPXE design as PXE (a UKI's command line is baked in)."""
    need("uefi-http6")
    lab = lab6
    lab.kernel_machine(HTTP, "http6", "http6-secret")
    lab.start_netbootd()
    marker = lab.booted(HTTP, "uefi-http6")
    assert_booted6(marker, HTTP, "http6", "http6-secret")
    ours = check_answers(lab)
    firmware = [m for m in ours if m.vendor_class() == (codec.HTTP_CLIENT,)]
    assert firmware and {m.bootfile_url for m in firmware} == {f"{BASE}/boot/snponly.efi"}, firmware
    check_download_in_timeline(lab, HTTP, "http", "/boot/snponly.efi")
    assert all(m.msg_type == codec.ADVERTISE for m in firmware)  # HTTP boot asks nothing on 4011
    check_ipxe_got_its_script_from_the_site(lab, ours)
    seen = stages(lab, HTTP)
    # (the download of /boot/snponly.efi is not in it: it comes from the HTTP-boot lease, which the
    # DHCPv6 edge never learns, as for PXE's TFTP)
    assert "tftp" not in seen and seen.index("dhcp") < seen.index("script") < seen.index("ignition"), seen


def test_ignored_machine_gets_no_answer_over_ipv6(lab6):
    """`ignore = true`: netbootd sends nothing to the machine (the site server still leases it an
    address); OVMF's PXEv6 gives up on its own, with no boot file."""
    need("uefi6")
    lab = lab6
    lab.machine(IGNORED, "[boot]\nignore = true\n")
    lab.start_netbootd()
    result = lab.not_booted(IGNORED, "uefi6")
    assert "the firmware gave up on this boot path" in result.reason and "UEFI PXEv6" in result.reason, result.reason
    ours, site, clients = answers(lab)
    assert [m for m in clients if (m.vendor_class() or [b""])[0].startswith(codec.PXE_CLIENT)], clients
    assert site and not ours, ours
    assert "not answered: 52-54-00-66-00-03: boot.ignore = true" in lab.netbootd_log()
    print(f"OVMF gave up after {result.seconds:.1f} s")


@pytest.fixture
def lab6_bare_stub(tmp_path, assets, request):
    """The site server gives iPXE the bare `/ipxe` chain stub as option 59."""
    yield from _lab(tmp_path, assets, request, ipv6=True, site_ipxe_script="/ipxe")


def test_ipxe_through_the_bare_chain_stub(lab6_bare_stub):
    """The `GET /ipxe` chain stub (docs/http-routes.md), fetched by real iPXE (Debian 12's): it must lead to the
    machine's own script. (The stub once asked `${mac:uristring}`, which formats the MAC's 6 raw bytes
    as text — 52:54:00:... → "RT", cut at the 00 byte: netbootd answered 400 and iPXE gave up.)"""
    need("uefi6")
    lab = lab6_bare_stub
    lab.kernel_machine(STUB, "stub6", "stub6-secret")
    lab.start_netbootd()
    assert_booted6(lab.booted(STUB, "uefi6", retry_on=EDK2_4011_FLAKE), STUB, "stub6", "stub6-secret")
