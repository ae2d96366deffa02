"""Extract every DHCPv6 datagram (IPv6 + UDP 546/547/4011) of the firmware captures into fixtures/.

    python -m tests.dhcp6.extract_fixtures [CAPTURES_DIR]
    python -m tests.dhcp6.extract_fixtures --lab

CAPTURES_DIR defaults to what tests/dhcp/conftest.py uses (NETBOOTD_CAPTURES, else ../shared/captures
beside the repository). Writes one raw UDP payload per file, named
`<capture>.<frame>.<sport>-<dport>.<message>.bin` (frame: 0-based index in the pcap), and README.md
listing them. tests/dhcp6/test_fixtures.py checks the committed files against the captures when
those are present, so a fixture cannot drift from what the firmware sent.

`--lab`: the same for this repository's own IPv6-only lab captures (tests/dhcp6/captures/, written
by `python -m tests.dhcp6.capture_lab`) into fixtures/lab6/; those captures are committed, so
tests/dhcp6/test_lab_fixtures.py always checks them.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import dpkt

from tests.dhcp.conftest import CAPTURES

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
CAPTURE_FILES = ("proxy6-uefi-pxe-4011.pcap", "proxy6-uefi-http-boot.pcap", "full6-uefi-pxe-shim-grub.pcap")
LAB_CAPTURES = HERE / "captures"
LAB_FIXTURES = FIXTURES / "lab6"
LAB_CAPTURE_FILES = ("lab6-uefi-pxe.pcap", "lab6-uefi-http-boot.pcap")
PORTS = {546, 547, 4011}
NAMES = {
    1: "solicit",
    2: "advertise",
    3: "request",
    4: "confirm",
    5: "renew",
    6: "rebind",
    7: "reply",
    8: "release",
    9: "decline",
    10: "reconfigure",
    11: "information-request",
    12: "relay-forw",
    13: "relay-repl",
}


def extract(captures: Path, files: tuple[str, ...] = CAPTURE_FILES) -> Iterator[tuple[str, bytes, str]]:
    """(file name, UDP payload, one-line description) of every DHCPv6 datagram in the captures."""
    for capture in files:
        with (captures / capture).open("rb") as fh:
            for frame, (_ts, raw) in enumerate(dpkt.pcap.Reader(fh)):
                ip = dpkt.ethernet.Ethernet(raw).data
                if not isinstance(ip, dpkt.ip6.IP6) or not isinstance(ip.data, dpkt.udp.UDP):
                    continue
                udp = ip.data
                if not {udp.sport, udp.dport} & PORTS:
                    continue
                payload = bytes(udp.data)
                kind = NAMES.get(payload[0], str(payload[0])) if payload else "empty"
                name = f"{capture.removesuffix('.pcap')}.{frame:02d}.{udp.sport}-{udp.dport}.{kind}.bin"
                src = socket.inet_ntop(socket.AF_INET6, ip.src)
                dst = socket.inet_ntop(socket.AF_INET6, ip.dst)
                yield name, payload, f"[{src}]:{udp.sport} → [{dst}]:{udp.dport}, {describe(payload)}"


def _options(payload: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 4
    while i + 4 <= len(payload):
        code, length = int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 4], "big")
        out.append((code, payload[i + 4 : i + 4 + length]))
        i += 4 + length
    return out


def describe(payload: bytes) -> str:
    options = _options(payload)
    codes = [code for code, _ in options]
    text = f"{NAMES.get(payload[0], payload[0])}, options {' '.join(map(str, codes))}"
    vendor = dict(options).get(16)
    if vendor:
        text += f"; 16 = 343 {vendor[6:].decode(errors='replace')!r}"
    url = dict(options).get(59)
    if url:
        text += f"; 59 = {url.decode(errors='replace')}"
    if 15 in codes:
        text += f"; 15 = {dict(options)[15][2:].decode(errors='replace')!r}"
    if payload[0] == 2 and 3 not in codes:
        text += " — the proxy's ADVERTISE that EDK2 took" if 16 in codes else " — a proxy's ADVERTISE"
    return text


HEADER = (
    "# DHCPv6 fixtures\n\n"
    "Raw UDP payloads of every DHCPv6 datagram (IPv6, UDP 546/547/4011) in the firmware captures\n"
    "`proxy6-uefi-pxe-4011`, `proxy6-uefi-http-boot` and `full6-uefi-pxe-shim-grub` of the project's\n"
    "shared captures (QEMU 7.2 + Debian 12's OVMF 2022.11, machine 52:54:00:99:00:41, bridge fd99::1/64;\n"
    "see that directory's README.md). `proxy*`: dnsmasq gives addresses, a second responder answers as a\n"
    "proxy (its ADVERTISE and 4011 REPLY booted OVMF); `full6-*`: one dnsmasq does both.\n\n"
    "Written by `python -m tests.dhcp6.extract_fixtures` (file name: capture, frame index in the pcap,\n"
    "UDP ports, message type); tests/dhcp6/test_fixtures.py checks them against the captures.\n\n"
)
LAB_HEADER = (
    "# DHCPv6 fixtures from netbootd's IPv6-only lab\n\n"
    "Raw UDP payloads of every DHCPv6 datagram (IPv6, UDP 546/547/4011) of two boots to the test guest's\n"
    "marker in `netbootd.testing.Lab(ipv6=True)` (QEMU 7.2 + Debian 12's OVMF 2022.11 and iPXE 1.0.0+git-20190125;\n"
    "bridge fd77::/64, the site's dnsmasq at fd77::1 giving stateful addresses and iPXE's option 59,\n"
    "netbootd at fd77::2 answering as a proxy, Server ID the DUID-LL of 02:77:00:00:00:01):\n"
    "`lab6-uefi-pxe`: machine 52:54:00:66:00:01, OVMF PXE over IPv6 (firmware kind uefi6);\n"
    "`lab6-uefi-http-boot`: machine 52:54:00:66:00:02, OVMF HTTP boot over IPv6 (uefi-http6). Each boot:\n"
    "EDK2's own address configuration (SOLICIT asking for DNS only), its boot SOLICIT (vendor class\n"
    "PXEClient / HTTPClient), dnsmasq's and netbootd's ADVERTISEs, the REQUEST for dnsmasq's lease, the\n"
    "4011 REQUEST and netbootd's REPLY (PXE only), RELEASEs, then iPXE's own exchange (user class iPXE,\n"
    "DUID-UUID) with dnsmasq, whose REPLY carries option 59.\n\n"
    "Captured by `python -m tests.dhcp6.capture_lab` (tests/dhcp6/captures/), written by\n"
    "`python -m tests.dhcp6.extract_fixtures --lab`; tests/dhcp6/test_lab_fixtures.py checks them against\n"
    "the captures and runs the firmware's messages through netbootd's controller.\n\n"
)


def write(captures: Path, files: tuple[str, ...] = CAPTURE_FILES, dest: Path = FIXTURES,
          header: str = HEADER) -> list[str]:
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.bin"):
        old.unlink()
    lines = []
    for name, payload, text in extract(captures, files):
        (dest / name).write_bytes(payload)
        lines.append(f"| `{name}` | {len(payload)} | {text} |")
    (dest / "README.md").write_text(
        header + "| file | bytes | datagram |\n|---|---|---|\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["--lab"]:
        print(f"{len(write(LAB_CAPTURES, LAB_CAPTURE_FILES, LAB_FIXTURES, LAB_HEADER))} fixtures written to {LAB_FIXTURES}")
    else:
        source = Path(sys.argv[1]) if len(sys.argv) > 1 else CAPTURES
        print(f"{len(write(source))} fixtures written to {FIXTURES}")
