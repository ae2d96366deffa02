"""The DHCP edge with the real netbootd.core.BootCore and a machines directory loaded from TOML."""

from __future__ import annotations

import re
import socket

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import HttpSettings, IpxeBinaries, Settings
from netbootd.core.decide import BootCore
from netbootd.dhcp import codec
from netbootd.dhcp.answer import Arrival, DhcpController
from tests.dhcp.conftest import BOOT_SERVER, client_requests, port67_requests, requires_captures


@pytest.fixture
def core(tmp_path):
    machines = tmp_path / "machines"
    (machines / "profiles").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    (machines / "default.toml").write_text('[boot]\nchain = "http://boot.example/menu.ipxe"\n')
    (machines / "52-54-00-99-99-99.toml").write_text("[boot]\nignore = true\n")
    settings = Settings(machines_dir=machines, files_root=tmp_path / "files", http=HttpSettings(port=8080),
                        ipxe=IpxeBinaries(arm64="arm64/snponly.efi"))
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result))


def answer(core, payload, port, mac=None):
    request = codec.decode(payload)
    if mac is not None:
        request = request._replace(chaddr=bytes.fromhex(mac.replace(":", "")))
    arrival = Arrival(port=port, proxy=port == 4011, source=("10.77.0.145", port), server_ip=BOOT_SERVER)
    result = DhcpController(core).answer(request, arrival)
    return None if result is None else codec.decode(result.payload, op=codec.BOOTREPLY)


@requires_captures
def test_captured_firmware_against_real_core(core):
    seen = {}
    for d in client_requests():
        request = codec.decode(d.payload)
        reply = answer(core, d.payload, d.dport)
        if d.dport == 67 and request.msgtype == codec.REQUEST:
            assert reply is None, d  # the site server's lease: never ours to ACK (answer.py)
            continue
        assert reply is not None, d
        # (client kind, arch code of option 60, iPXE user class, port)
        arch = re.search(rb"Arch:(\d{5})", request.options[60]).group(1)
        key = (request.options[60][:10], arch, request.options.get(77), d.dport)
        seen[key] = (reply.file.decode(), reply.options[60])
    # iPXE (BIOS or EFI): the script URL on the advertised address, with mac and arch
    for arch in (b"00000", b"00007"):
        assert seen[(b"PXEClient:", arch, b"iPXE", 67)][0].startswith(
            f"http://{BOOT_SERVER}:8080/ipxe?mac=52-54-00-77-00-10"
        )
    # EDK2 PXE: nothing on 67, the arch's binary on 4011
    assert seen[(b"PXEClient:", b"00007", None, 67)] == ("", b"PXEClient")
    assert seen[(b"PXEClient:", b"00007", None, 4011)] == ("snponly.efi", b"PXEClient")
    assert seen[(b"PXEClient:", b"00011", None, 67)] == ("", b"PXEClient")
    # HTTP boot: an IP-literal URL of the arch's EFI binary
    assert seen[(b"HTTPClient", b"00016", None, 67)] == (f"http://{BOOT_SERVER}:8080/boot/snponly.efi", b"HTTPClient")
    assert seen[(b"HTTPClient", b"00019", None, 67)] == (
        f"http://{BOOT_SERVER}:8080/boot/arm64/snponly.efi", b"HTTPClient")


@requires_captures
def test_ignored_machine_gets_no_answer_and_the_reason_is_logged(core, capture_log):
    d = next(d for d in client_requests() if d.dport == 67)
    assert answer(core, d.payload, 67, mac="52:54:00:99:99:99") is None
    (event,) = [e for e in capture_log if str(e.get("log_format", "")).startswith("not answered")]
    assert "boot.ignore" in event["why"]


def test_bios_pxe_rom_gets_undionly(core):
    opts = b"\x35\x01\x01\x3c\x20PXEClient:Arch:00000:UNDI:002001\x5d\x02\x00\x00\xff"
    head = bytes([1, 1, 6, 0]) + b"\0" * 24 + bytes.fromhex("525400123456") + b"\0" * 202
    reply = answer(core, head + codec.MAGIC + opts, 67)
    assert reply.file == b"undionly.kpxe"
    assert codec.parse_pxe_options(reply.options[43])[6] == b"\x08"


@requires_captures
def test_port67_request_is_not_answered_but_the_timeline_learns_its_address(core):
    """EDK2's REQUEST for the site's lease: no answer, but the address it asks for (option 50) is
    filed under its MAC, so the TFTP and HTTP requests that follow from it find the machine."""
    d = next(d for d in port67_requests() if d.capture == "proxy-uefi-edk2-pxe.pcap")
    request = codec.decode(d.payload)
    assert core.mac_for_ip("10.77.0.145") is None
    assert answer(core, d.payload, 67) is None
    assert socket.inet_ntoa(request.options[50]) == "10.77.0.145"
    assert core.mac_for_ip("10.77.0.145") == "52:54:00:77:00:10"


def test_an_edited_machine_is_answered_from_its_new_file_at_once(tmp_path):
    """Answers are encoded from templates (DhcpController.encode_reply) kept across reloads: what
    a reload changes (the EFI URL, long enough for option 67; the TFTP binary, in the file
    field) must be in the next answer, never the previous version's bytes."""
    machines = tmp_path / "machines"
    machines.mkdir()
    settings = Settings(machines_dir=machines, files_root=tmp_path, http=HttpSettings(port=8080))
    own = machines / "52-54-00-12-34-56.toml"

    def load(text):
        own.write_text(text)
        result = load_machines(settings)
        assert result.errors == []
        return build_catalog(result)

    url = "http://mirror.example/" + "a" * 120 + "/{}.efi"
    core = BootCore(settings, load(f'ipxe_binary = "first.efi"\n[boot]\nefi = "{url.format("one")}"\n'))
    controller = DhcpController(core)
    mac = bytes.fromhex("525400123456")
    http = discover_packet({60: b"HTTPClient:Arch:00016", 93: b"\x00\x10"}, mac)
    pxe = discover_packet({60: b"PXEClient:Arch:00007:UNDI:003000", 93: b"\x00\x07"}, mac, msgtype=codec.REQUEST)
    on_67 = Arrival(port=67, proxy=False, source=("0.0.0.0", 68), server_ip=BOOT_SERVER)
    on_4011 = Arrival(port=4011, proxy=True, source=("10.77.0.145", 4011), server_ip=BOOT_SERVER)

    def answers():
        a = codec.decode(controller.answer(http, on_67).payload, op=codec.BOOTREPLY)
        b = codec.decode(controller.answer(pxe, on_4011).payload, op=codec.BOOTREPLY)
        return a.options.get(67), b.file

    assert answers() == (url.format("one").encode(), b"first.efi")
    core.replace_catalog(load(f'ipxe_binary = "second.efi"\n[boot]\nefi = "{url.format("two")}"\n'))
    assert answers() == (url.format("two").encode(), b"second.efi")


def discover_packet(options, mac, msgtype=codec.DISCOVER):
    opts = bytes([53, 1, msgtype]) + b"".join(bytes([k, len(v)]) + v for k, v in options.items()) + b"\xff"
    head = bytes([1, 1, 6, 0]) + b"\0\0\0\x07" + b"\0" * 20 + mac + b"\0" * 202
    return codec.decode(head + codec.MAGIC + opts)
