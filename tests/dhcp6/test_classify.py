"""netbootd.dhcp6.classify: a decoded DHCPv6 packet → Client and the identity used."""

from __future__ import annotations

import struct
import uuid

import pytest

from netbootd.dhcp import classify as classify4
from netbootd.dhcp6 import codec
from netbootd.dhcp6.classify import DUID, MAC, NO_IDENTITY, NOT_PXE, UNKNOWN_ARCH, Identity, classify, classify_reason
from netbootd.dhcp6.codec import Message
from netbootd.dhcp6.duid import duid_ll, link_layer_option_value
from netbootd.model import Arch, Firmware
from tests.dhcp6.conftest import MAC as CAPTURED_MAC
from tests.dhcp6.conftest import client_messages, fixture_id
from tests.dhcp6.test_codec import relay_bytes, tlv

DUID_LLT = bytes.fromhex("0001000131e729d3525400990041")


def message(*options: tuple[int, bytes], msg_type: int = codec.SOLICIT, client_id: bytes | None = DUID_LLT) -> Message:
    head = ((codec.OPT_CLIENTID, client_id),) if client_id is not None else ()
    return Message(msg_type, 0x123456, head + options)


def vendor(text: bytes, enterprise: int = 343) -> tuple[int, bytes]:
    return codec.vendor_class_option(text, enterprise=enterprise)


def arch(*codes: int) -> tuple[int, bytes]:
    return codec.OPT_CLIENT_ARCH_TYPE, b"".join(struct.pack("!H", c) for c in codes)


def user_class(*items: bytes) -> tuple[int, bytes]:
    return codec.OPT_USER_CLASS, b"".join(struct.pack("!H", len(i)) + i for i in items)


def pxe(code: int, text: bytes = b"PXEClient") -> list[tuple[int, bytes]]:
    return [arch(code), vendor(b"%s:Arch:%05d:UNDI:003000" % (text, code))]


# What iPXE's src/net/udp/dhcpv6.c sends (EFI x86-64 build): DUID-UUID client id, IA_NA, ORO
# (23 24 59 60), vendor class 343 PXEClient:Arch:00007:UNDI:003010, 61, 62 (UNDI 3.10), user class
# "iPXE" as one length-prefixed item, elapsed time.
IPXE_UUID = "4c4c4544-0051-3510-8052-b4c04f4e3232"
IPXE_SOLICIT = codec.encode(
    Message(
        codec.SOLICIT,
        0xABCDEF,
        (
            (1, b"\x00\x04" + uuid.UUID(IPXE_UUID).bytes),
            (3, bytes.fromhex("5a2b3c4d0000000000000000")),
            (6, bytes.fromhex("00170018003b003c")),
            vendor(b"PXEClient:Arch:00007:UNDI:003010"),
            arch(7),
            (62, b"\x01\x03\x0a"),
            user_class(b"iPXE"),
            (8, b"\x00\x00"),
        ),
    )
)


@pytest.mark.parametrize(
    ("options", "arch_", "firmware"),
    [
        (pxe(7), Arch.EFI64, Firmware.EFI_PXE),
        (pxe(9), Arch.EFI64, Firmware.EFI_PXE),
        (pxe(6), Arch.EFI32, Firmware.EFI_PXE),
        (pxe(10), Arch.ARM32, Firmware.EFI_PXE),
        (pxe(11), Arch.ARM64, Firmware.EFI_PXE),
        (pxe(16, b"HTTPClient"), Arch.EFI64, Firmware.HTTP_BOOT),
        (pxe(19, b"HTTPClient"), Arch.ARM64, Firmware.HTTP_BOOT),
        ([*pxe(7), user_class(b"iPXE")], Arch.EFI64, Firmware.IPXE),
        ([*pxe(0), user_class(b"iPXE")], Arch.BIOS, Firmware.IPXE),  # undionly.kpxe over IPv6
        ([*pxe(11), user_class(b"other", b"iPXE")], Arch.ARM64, Firmware.IPXE),  # second item
        ([user_class(b"iPXE"), arch(7)], Arch.EFI64, Firmware.IPXE),  # iPXE with no vendor class
        ([*pxe(7), user_class(b"ipxe")], Arch.EFI64, Firmware.EFI_PXE),  # case matters, as on DHCPv4
        ([*pxe(7), user_class()], Arch.EFI64, Firmware.EFI_PXE),
        ([vendor(b"PXEClient:Arch:00011:UNDI:003000")], Arch.ARM64, Firmware.EFI_PXE),  # arch from 16
        ([vendor(b"HTTPClient:Arch:00019")], Arch.ARM64, Firmware.HTTP_BOOT),
        ([arch(7, 11), vendor(b"PXEClient:Arch:00000")], Arch.EFI64, Firmware.EFI_PXE),  # 61 wins, its first
        ([vendor(b"other", enterprise=9), *pxe(7)], Arch.EFI64, Firmware.EFI_PXE),  # the 343 one counts
    ],
)
def test_firmware_and_arch(options, arch_, firmware):
    client, identity, reason = classify_reason(message(*options))
    assert reason == ""
    assert (client.arch, client.firmware) == (arch_, firmware)
    assert identity == Identity(MAC, CAPTURED_MAC, "duid-llt")
    assert client.mac == CAPTURED_MAC
    assert client.uuid is None


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ([], NOT_PXE),
        ([(6, b"\x00\x17")], NOT_PXE),  # EDK2's own address configuration: asks for DNS only
        ([vendor(b"PXEClient:Arch:00007", enterprise=311), arch(7)], NOT_PXE),  # not enterprise 343
        ([vendor(b"MSFT 5.0"), arch(7)], NOT_PXE),
        ([user_class(b"other"), arch(7)], NOT_PXE),
        (pxe(2), UNKNOWN_ARCH),  # EFI Itanium
        (pxe(20), UNKNOWN_ARCH),
        ([vendor(b"PXEClient")], UNKNOWN_ARCH),  # no arch: not guessed to be BIOS over IPv6
        ([vendor(b"HTTPClient")], UNKNOWN_ARCH),
        (pxe(0), UNKNOWN_ARCH),  # PXE over IPv6 is UEFI's
        (pxe(0, b"HTTPClient"), UNKNOWN_ARCH),
        ([*pxe(0, b"HTTPClient"), user_class(b"iPXE")], UNKNOWN_ARCH),  # as on DHCPv4
        ([user_class(b"iPXE")], UNKNOWN_ARCH),
    ],
)
def test_not_answered(options, reason):
    client, _identity, why = classify_reason(message(*options))
    assert (client, why) == (None, reason)
    assert classify(message(*options)) is None


# (capture, frame) → what the firmware was; the others are EDK2's plain address configuration and
# RELEASEs, which carry no vendor class.
EXPECTED = {
    ("proxy6-uefi-pxe-4011", 4): (Arch.EFI64, Firmware.EFI_PXE),
    ("proxy6-uefi-pxe-4011", 7): (Arch.EFI64, Firmware.EFI_PXE),
    ("proxy6-uefi-pxe-4011", 9): (Arch.EFI64, Firmware.EFI_PXE),  # the 4011 REQUEST
    ("proxy6-uefi-http-boot", 0): (Arch.EFI64, Firmware.HTTP_BOOT),
    ("proxy6-uefi-http-boot", 7): (Arch.EFI64, Firmware.HTTP_BOOT),
    ("full6-uefi-pxe-shim-grub", 4): (Arch.EFI64, Firmware.EFI_PXE),
    ("full6-uefi-pxe-shim-grub", 6): (Arch.EFI64, Firmware.EFI_PXE),
}


@pytest.mark.parametrize("f", client_messages(), ids=fixture_id)
def test_captured_clients(f):
    client, identity, reason = classify_reason(f.decode())
    assert identity == Identity(MAC, CAPTURED_MAC, "duid-llt")
    expected = EXPECTED.get((f.capture, f.frame))
    if expected is None:
        assert (client, reason) == (None, NOT_PXE)
    else:
        assert reason == ""
        assert (client.mac, client.arch, client.firmware, client.uuid) == (CAPTURED_MAC, *expected, None)


def test_every_captured_boot_message_is_covered():
    assert len([f for f in client_messages() if (f.capture, f.frame) in EXPECTED]) == len(EXPECTED)


def test_ipxe_is_named_by_its_duid_and_gets_its_uuid():
    client, identity, reason = classify_reason(codec.decode(IPXE_SOLICIT))
    assert reason == ""
    assert (client.arch, client.firmware) == (Arch.EFI64, Firmware.IPXE)
    assert identity.kind == DUID and identity.source == "duid"
    assert identity.value == "00:04:" + uuid.UUID(IPXE_UUID).bytes.hex(":")
    assert client.mac == identity.value  # not a MAC: see Identity.kind
    assert client.uuid == IPXE_UUID


def test_relay_option_79_gives_the_mac_of_a_client_with_a_duid_only():
    relayed = codec.decode(relay_bytes(IPXE_SOLICIT, tlv(79, link_layer_option_value("52:54:00:99:00:07"))))
    client, identity, _ = classify_reason(relayed)
    assert identity == Identity(MAC, "52:54:00:99:00:07", "option-79")
    assert (client.mac, client.firmware, client.uuid) == ("52:54:00:99:00:07", Firmware.IPXE, IPXE_UUID)


def test_relay_79_of_another_link_type_falls_back_to_the_duid():
    relayed = codec.decode(relay_bytes(IPXE_SOLICIT, tlv(79, b"\x00\x20" + bytes(20))))  # InfiniBand
    assert classify_reason(relayed)[1].kind == DUID


def test_relay_without_79_uses_the_duid_mac():
    relayed = codec.decode(relay_bytes(codec.encode(message(*pxe(7)))))
    assert classify_reason(relayed)[1] == Identity(MAC, CAPTURED_MAC, "duid-llt")


def test_duid_ll_source_and_other_duids():
    assert classify_reason(message(*pxe(7), client_id=duid_ll("52:54:00:00:00:01")))[1] == Identity(
        MAC, "52:54:00:00:00:01", "duid-ll"
    )
    client, identity, _ = classify_reason(message(*pxe(7), client_id=bytes.fromhex("0002000001570011")))
    assert identity == Identity(DUID, "00:02:00:00:01:57:00:11", "duid")
    assert client.mac == "00:02:00:00:01:57:00:11"


def test_no_client_id_no_identity():
    anonymous = message(*pxe(7), msg_type=codec.INFORMATION_REQUEST, client_id=None)
    assert classify_reason(anonymous) == (None, None, NO_IDENTITY)


# The DHCPv4 edge's rules on the same (vendor class, iPXE, arch): DHCPv6 must agree, except where
# DHCPv4 assumes a BIOS ROM: a PXE or iPXE client that names no architecture at all (DHCPv4
# guesses a pre-RFC 4578 BIOS ROM; iPXE's DHCPv6 always sends 61) and PXE firmware with the BIOS
# code 0. No BIOS ROM speaks DHCPv6.
SAME_AS_V4 = [
    (text, ipxe, code)
    for text in (b"PXEClient", b"HTTPClient", b"MSFT 5.0", b"")
    for ipxe in (False, True)
    for code in (None, 0, 6, 7, 9, 10, 11, 15, 16, 18, 19, 2, 20)
]


@pytest.mark.parametrize(("text", "ipxe", "code"), SAME_AS_V4)
def test_same_answer_as_the_dhcpv4_edge(text, ipxe, code):
    vendor_text = text + (b":Arch:%05d:UNDI:003000" % code if code is not None and text else b"")
    v6 = [vendor(vendor_text)] if vendor_text else []
    v4 = {60: vendor_text} if vendor_text else {}
    if code is not None:
        v6.append(arch(code))
        v4[93] = struct.pack("!H", code)
    if ipxe:
        v6.append(user_class(b"iPXE"))
        v4[77] = b"iPXE"
    client6, _identity, reason6 = classify_reason(message(*v6))
    client4, reason4 = classify4.classify_reason(v4, CAPTURED_MAC)
    guessed_bios = code is None and text != b"HTTPClient" and (ipxe or text == b"PXEClient")
    bios_pxe = code == 0 and not ipxe and text == b"PXEClient"
    if guessed_bios or bios_pxe:
        assert client4.arch is Arch.BIOS
        assert (client6, reason6) == (None, UNKNOWN_ARCH)
    else:
        assert reason6 == reason4
        assert client6 == client4
