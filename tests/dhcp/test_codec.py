"""netbootd.dhcp.codec: strict parsing (only MalformedPacket escapes) and reply encoding."""

from __future__ import annotations

import re
import struct

import pytest

from netbootd.dhcp import codec
from tests.dhcp.conftest import client_requests, requires_captures

MAC = bytes.fromhex("525400770010")


def request_bytes(
    options: bytes = b"\x35\x01\x01\xff",
    *,
    op: int = 1,
    htype: int = 1,
    hlen: int = 6,
    cookie: bytes = codec.MAGIC,
    file: bytes = b"",
    sname: bytes = b"",
    giaddr: bytes = b"\0\0\0\0",
    flags: int = 0,
) -> bytes:
    head = struct.pack("!BBBBIHH", op, htype, hlen, 0, 0x12345678, 0, flags)
    head += b"\0" * 12 + giaddr + MAC + b"\0" * 10 + sname.ljust(64, b"\0") + file.ljust(128, b"\0")
    assert len(head) == codec.HEADER_LEN
    return head + cookie + options


@requires_captures
@pytest.mark.parametrize("dgram", client_requests(), ids=lambda d: f"{d.capture}#{d.index}")
def test_every_captured_request_decodes(dgram):
    packet = codec.decode(dgram.payload)
    assert packet.op == codec.BOOTREQUEST
    assert re.match(r"^52:54:00:(77:00:10|99:00:[0-9a-f]{2})$", packet.mac)  # the two capture sets
    assert packet.msgtype in (codec.DISCOVER, codec.REQUEST)
    assert packet.options[60].startswith((b"PXEClient:Arch:", b"HTTPClient:Arch:"))
    assert len(packet.options[97]) == 17
    assert packet.yiaddr == "0.0.0.0"
    if dgram.dport == 4011:
        assert packet.ciaddr == dgram.src  # EDK2 asks from its leased address


def test_decode_minimal_request():
    packet = codec.decode(request_bytes(flags=0x8000, giaddr=bytes([10, 9, 8, 7])))
    assert packet.msgtype == codec.DISCOVER
    assert packet.msgtype_name == "discover"
    assert packet.xid == 0x12345678
    assert packet.broadcast
    assert packet.giaddr == "10.9.8.7"
    assert packet.chaddr == MAC
    assert dict(packet.options) == {53: b"\x01"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01" * 100, "truncated"),
        (request_bytes()[:239], "truncated"),
        (request_bytes() + b"\0" * 1400, "oversized"),
        (request_bytes(cookie=b"\x63\x82\x53\x64"), "bad-cookie"),
        (request_bytes(op=2), "wrong-op"),
        (request_bytes(htype=6), "bad-hardware"),
        (request_bytes(hlen=16), "bad-hardware"),
        (request_bytes(b"\x35\x01\x01\x3c\x09PXE"), "bad-option"),  # length runs past the end
        (request_bytes(b"\x35\x01\x01\x3c"), "bad-option"),  # code without a length byte
        (request_bytes(b"\x35\x01\x01\x35\x01\x03\xff"), "duplicate-msgtype"),
        (request_bytes(b"\x3c\x01x\xff"), "no-msgtype"),
        (request_bytes(b"\x35\x00\xff"), "no-msgtype"),
        (request_bytes(b"\x35\x01\x01" + b"\x0c\x00" * 200 + b"\xff"), "option-bomb"),
        (request_bytes(b"\x35\x01\x01\x34\x01\x01\xff", file=b"\0" * 124 + b"\x0c\x05ab"), "bad-option"),
    ],
)
def test_malformed(data, reason):
    with pytest.raises(codec.MalformedPacket) as info:
        codec.decode(data)
    assert info.value.reason == reason
    assert info.value.reason in codec.REASONS


def test_dpkt_failures_become_malformed(monkeypatch):
    def boom(buf):
        raise struct.error("unpack requires a buffer")

    monkeypatch.setattr(codec, "_HEADER", type("Broken", (), {"unpack_from": boom}))
    with pytest.raises(codec.MalformedPacket):
        codec.decode(request_bytes())


def test_no_end_option_and_trailing_padding_tolerated():
    assert codec.decode(request_bytes(b"\x35\x01\x03")).msgtype == codec.REQUEST
    assert (
        codec.decode(request_bytes(b"\x00\x00\x35\x01\x03\xff\x35\x01\x01garbage")).msgtype == codec.REQUEST
    )


def test_split_options_are_concatenated_rfc3396():
    packet = codec.decode(request_bytes(b"\x35\x01\x01\x2b\x02ab\x0c\x01h\x2b\x03cde\xff"))
    assert packet.options[43] == b"abcde"
    assert packet.options[12] == b"h"


def test_overloaded_file_and_sname_carry_options():
    packet = codec.decode(
        request_bytes(b"\x35\x01\x01\x34\x01\x03\xff", file=b"\x3c\x03PXE\xff", sname=b"\x3c\x06Client\xff")
    )
    assert packet.options[60] == b"PXEClient"  # options field, then file, then sname (RFC 2131 4.1)
    assert packet.file == b""
    assert packet.sname == b""


def test_file_and_sname_fields():
    packet = codec.decode(request_bytes(file=b"boot.efi", sname=b"server"))
    assert packet.file == b"boot.efi"
    assert packet.sname == b"server"


def reply(**kw):
    base = {"msgtype": codec.OFFER, "xid": 7, "chaddr": MAC, "siaddr": "10.0.0.2"}
    base.update(kw)
    return codec.Reply(**base)


def test_encode_pads_to_bootp_minimum_and_decodes_back():
    data = codec.encode(reply(options=((54, bytes([10, 0, 0, 2])),), flags=0x8000, file="undionly.kpxe"))
    assert len(data) == 300
    assert data[:4] == bytes([2, 1, 6, 0])
    assert data[236:240] == codec.MAGIC
    assert data[240:243] == b"\x35\x01\x02"
    back = codec.decode(data, op=codec.BOOTREPLY)
    assert back.siaddr == "10.0.0.2"
    assert back.yiaddr == "0.0.0.0"
    assert back.file == b"undionly.kpxe"
    assert back.broadcast
    assert back.options[54] == bytes([10, 0, 0, 2])


def test_encode_splits_long_options():
    value = bytes(range(256)) * 2  # 512 bytes → 255 + 255 + 2
    data = codec.encode(reply(options=((67, value),)))
    assert len(data) > 300
    body = data[243:]
    assert body[:2] == b"\x43\xff"
    assert body[257:259] == b"\x43\xff"
    assert body[514:516] == b"\x43\x02"
    assert codec.decode(data, op=codec.BOOTREPLY).options[67] == value


def test_encode_empty_option():
    data = codec.encode(reply(options=((97, b""),)))
    assert data[243:246] == b"\x61\x00\xff"
    assert codec.decode(data, op=codec.BOOTREPLY).options[97] == b""


@pytest.mark.parametrize(("field", "limit"), [("file", 128), ("sname", 64)])
def test_encode_refuses_to_truncate(field, limit):
    codec.encode(reply(**{field: "x" * (limit - 1)}))  # fits with its NUL
    with pytest.raises(codec.FieldTooLong):
        codec.encode(reply(**{field: "x" * limit}))
    with pytest.raises(codec.FieldTooLong):
        codec.encode(reply(**{field: "a\0b"}))


def test_pxe_options():
    assert codec.pxe_options([(6, b"\x08")]) == b"\x06\x01\x08\xff"
    assert codec.parse_pxe_options(b"\x06\x01\x08\x0a\x06\x00nbpoc\xff") == {6: b"\x08", 10: b"\x00nbpoc"}
    assert codec.parse_pxe_options(b"\x06\x05\x08") == {}  # runs past the end: ignored, no exception
    with pytest.raises(ValueError):
        codec.pxe_options([(6, b"x" * 256)])
