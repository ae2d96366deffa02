"""netbootd.dhcp.classify: options → Client."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.dhcp import codec
from netbootd.dhcp.classify import classify, classify_reason, client_uuid, is_ipxe_user_class
from netbootd.model import Arch, Firmware
from tests.dhcp.conftest import client_requests, requires_captures

MAC = "52:54:00:77:00:10"


def pxe(arch: int, *, vendor: bytes | None = None, **extra: bytes) -> dict[int, bytes]:
    opts = {93: arch.to_bytes(2, "big"), 60: vendor or b"PXEClient:Arch:%05d:UNDI:003000" % arch}
    opts.update({int(k.removeprefix("o")): v for k, v in extra.items()})
    return opts


@pytest.mark.parametrize(
    ("options", "arch", "firmware"),
    [
        (pxe(0), Arch.BIOS, Firmware.BIOS_PXE),
        (pxe(6), Arch.EFI32, Firmware.EFI_PXE),
        (pxe(7), Arch.EFI64, Firmware.EFI_PXE),
        (pxe(9), Arch.EFI64, Firmware.EFI_PXE),
        (pxe(10), Arch.ARM32, Firmware.EFI_PXE),
        (pxe(11), Arch.ARM64, Firmware.EFI_PXE),
        (pxe(16, vendor=b"HTTPClient:Arch:00016:UNDI:003000"), Arch.EFI64, Firmware.HTTP_BOOT),
        (pxe(19, vendor=b"HTTPClient:Arch:00019:UNDI:003000"), Arch.ARM64, Firmware.HTTP_BOOT),
        (pxe(0, o77=b"iPXE"), Arch.BIOS, Firmware.IPXE),
        (pxe(7, o77=b"iPXE"), Arch.EFI64, Firmware.IPXE),
        (pxe(11, o77=b"\x04iPXE"), Arch.ARM64, Firmware.IPXE),  # RFC 3004 form
        (pxe(7, o77=b"\x03foo\x04iPXE"), Arch.EFI64, Firmware.IPXE),  # RFC 3004, second class
        (pxe(7, o175=b"\x13\x01\x01"), Arch.EFI64, Firmware.IPXE),  # iPXE features only
        (pxe(7, o77=b""), Arch.EFI64, Firmware.EFI_PXE),  # empty 77 seen from UEFI firmware
        (pxe(7, o77=b"\x04iPX"), Arch.EFI64, Firmware.EFI_PXE),  # RFC 3004 length past the end
        (pxe(7, o77=b"\x00"), Arch.EFI64, Firmware.EFI_PXE),
        (pxe(7, o77=b"Other"), Arch.EFI64, Firmware.EFI_PXE),
    ],
)
def test_firmware_and_arch(options, arch, firmware):
    client = classify(options, MAC)
    assert client is not None
    assert (client.arch, client.firmware, client.mac) == (arch, firmware, MAC)


def test_arch_from_vendor_class_when_93_missing():
    client = classify({60: b"PXEClient:Arch:00007:UNDI:003000"}, MAC)
    assert (client.arch, client.firmware) == (Arch.EFI64, Firmware.EFI_PXE)
    client = classify({60: b"HTTPClient:Arch:00019"}, MAC)
    assert (client.arch, client.firmware) == (Arch.ARM64, Firmware.HTTP_BOOT)


@pytest.mark.parametrize("bad93", [b"", b"\x00"])
def test_short_93_falls_back_to_vendor_class(bad93):
    client = classify({93: bad93, 60: b"PXEClient:Arch:00011:UNDI:003000"}, MAC)
    assert client.arch is Arch.ARM64


def test_93_wins_and_first_of_several_codes():
    client = classify({93: b"\x00\x07\x00\x00", 60: b"PXEClient:Arch:00000:UNDI:002001"}, MAC)
    assert client.arch is Arch.EFI64


def test_plain_pxeclient_without_arch_is_bios():
    client = classify({60: b"PXEClient"}, MAC)
    assert (client.arch, client.firmware) == (Arch.BIOS, Firmware.BIOS_PXE)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "not-pxe"),
        ({60: b"MSFT 5.0"}, "not-pxe"),
        ({60: b"android-dhcp-13", 93: b"\x00\x07"}, "not-pxe"),
        ({77: b""}, "not-pxe"),
        (pxe(2), "unsupported-arch"),  # EFI Itanium
        (pxe(20), "unsupported-arch"),
        ({60: b"HTTPClient"}, "unsupported-arch"),  # HTTP boot without any arch
        (pxe(0, vendor=b"HTTPClient:Arch:00000"), "unsupported-arch"),
    ],
)
def test_not_answered(options, reason):
    assert classify_reason(options, MAC) == (None, reason)


def test_uuid_presented_as_ipxe_prints_it():
    # SMBIOS 2.6+ / EFI byte order on the wire: first three fields little-endian.
    ipxe_shows = "4c4c4544-0051-3510-8052-b4c04f4e3232"
    wire = b"\x00" + uuid.UUID(ipxe_shows).bytes_le
    assert wire.hex() == "0044454c4c51001035" + "8052b4c04f4e3232"
    client = classify(pxe(7, o97=wire), MAC)
    assert client.uuid == ipxe_shows


@pytest.mark.parametrize("bad97", [b"", b"\x00", b"\x00" * 10, b"\x01" + b"\x11" * 16, b"\x00" * 18])
def test_bad_uuid_is_none_not_an_error(bad97):
    assert client_uuid({97: bad97}) is None
    assert classify(pxe(0, o97=bad97), MAC).uuid is None


def test_is_ipxe_user_class():
    assert is_ipxe_user_class(b"iPXE")
    assert is_ipxe_user_class(b"\x04iPXE")
    assert not is_ipxe_user_class(None)
    assert not is_ipxe_user_class(b"")
    assert not is_ipxe_user_class(b"ipxe")


EXPECTED = {
    # capture → firmware per vendor class + user class, as docs/firmware describes
    (b"PXEClient:Arch:00000:UNDI:002001", True): (Arch.BIOS, Firmware.IPXE),
    (b"PXEClient:Arch:00007:UNDI:003000", False): (Arch.EFI64, Firmware.EFI_PXE),
    (b"PXEClient:Arch:00007:UNDI:003010", True): (Arch.EFI64, Firmware.IPXE),
    (b"HTTPClient:Arch:00016:UNDI:003000", False): (Arch.EFI64, Firmware.HTTP_BOOT),
    (b"PXEClient:Arch:00011:UNDI:003000", False): (Arch.ARM64, Firmware.EFI_PXE),  # AAVMF
    (b"HTTPClient:Arch:00019:UNDI:003000", False): (Arch.ARM64, Firmware.HTTP_BOOT),
}


@requires_captures
@pytest.mark.parametrize("dgram", client_requests(), ids=lambda d: f"{d.capture}#{d.index}")
def test_captured_clients(dgram):
    packet = codec.decode(dgram.payload)
    client = classify(packet.options, packet.mac)
    key = (packet.options[60], packet.options.get(77) == b"iPXE")
    assert (client.arch, client.firmware) == EXPECTED[key]
    assert client.uuid == "00000000-0000-0000-0000-000000000000"  # QEMU's default


@given(st.binary(min_size=16, max_size=16))
def test_uuid_formatting_matches_the_uuid_module(raw16):
    assert client_uuid({97: b"\x00" + raw16}) == str(uuid.UUID(bytes_le=raw16))
