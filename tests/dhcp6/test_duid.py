"""netbootd.dhcp6.duid: MACs out of DUIDs and option 79, canonical DUID names, our Server ID."""

from __future__ import annotations

import uuid

import pytest

from netbootd.dhcp6 import duid
from tests.dhcp6.conftest import CLIENT_DUID, MAC, fixture_id, fixtures


@pytest.mark.parametrize("f", fixtures(), ids=fixture_id)
def test_captured_client_ids_give_the_machines_mac(f):
    client_id = f.decode().client_id
    assert client_id == CLIENT_DUID[f.capture]
    assert client_id[:4] == b"\x00\x01\x00\x01"  # EDK2: DUID-LLT, Ethernet
    assert duid.mac_from_duid(client_id) == MAC


@pytest.mark.parametrize(
    ("server_id", "mac"),
    [
        ("00030001a6f1748b92f8", "a6:f1:74:8b:92:f8"),  # the PXE proxy's DUID-LL
        ("00030001365612006fe5", "36:56:12:00:6f:e5"),  # the HTTP proxy's
        ("0001000132a10a1bcaeff692fece", "ca:ef:f6:92:fe:ce"),  # dnsmasq's DUID-LLT
    ],
)
def test_captured_server_ids(server_id, mac):
    assert duid.mac_from_duid(bytes.fromhex(server_id)) == mac


def test_server_id_builders_make_the_captured_duids():
    assert duid.duid_ll("A6-F1-74-8B-92-F8") == bytes.fromhex("00030001a6f1748b92f8")
    # dnsmasq's DUID-LLT in the captures: time 849414683 s after 2000-01-01 UTC
    made = duid.duid_llt("ca:ef:f6:92:fe:ce", duid.DUID_EPOCH + 849414683)
    assert made == bytes.fromhex("0001000132a10a1bcaeff692fece")
    with pytest.raises(ValueError):
        duid.duid_ll("not a mac")


@pytest.mark.parametrize(
    "raw",
    [
        "000100060000000152540099004100",  # DUID-LLT, hardware type 6 (IEEE 802), 7-byte address
        "0001000631e729d3525400990041",  # DUID-LLT, hardware type 6
        "00030006525400990041",  # DUID-LL, hardware type 6
        "0003001b0011223344556677",  # DUID-LL with an 8-byte EUI-64 (hardware type 27)
        "000300015254009900",  # DUID-LL, Ethernet but 5 bytes
        "00020000015700112233",  # DUID-EN
        "000400000000000000000000000000000000",  # DUID-UUID
        "",
        "00",
    ],
)
def test_no_mac_where_the_duid_has_none(raw):
    assert duid.mac_from_duid(bytes.fromhex(raw)) is None


def test_duid_text_is_the_canonical_name():
    assert duid.duid_text(bytes.fromhex("00020000015700AABB")) == "00:02:00:00:01:57:00:aa:bb"
    assert duid.duid_text(CLIENT_DUID["proxy6-uefi-pxe-4011"]) == "00:01:00:01:31:e7:29:d3:52:54:00:99:00:41"


def test_duid_uuid_as_ipxe_prints_it():
    # iPXE's dhcpv6.c: DUID-UUID (type 4) from its ${uuid} setting, RFC 4122 byte order, no mangling.
    shown = "4c4c4544-0051-3510-8052-b4c04f4e3232"
    raw = b"\x00\x04" + uuid.UUID(shown).bytes
    assert duid.duid_uuid(raw) == shown
    assert duid.duid_uuid(raw[:-1]) is None
    assert duid.duid_uuid(b"\x00\x03" + raw[2:]) is None


def test_link_layer_option_79():
    value = duid.link_layer_option_value("52:54:00:99:00:99")
    assert value == bytes.fromhex("0001525400990099")
    assert duid.mac_from_link_layer(value) == "52:54:00:99:00:99"
    assert duid.mac_from_link_layer(bytes.fromhex("0006525400990099")) is None  # not Ethernet
    assert duid.mac_from_link_layer(bytes.fromhex("00015254009900")) is None  # 5-byte address
