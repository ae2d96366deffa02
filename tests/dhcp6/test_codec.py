"""netbootd.dhcp6.codec: strict parsing (only MalformedPacket escapes), byte-exact encoding, answers."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest

from netbootd.dhcp6 import codec
from netbootd.dhcp6.codec import Message, Relay
from netbootd.dhcp6.duid import duid_ll, link_layer_option_value
from tests.dhcp6.conftest import CLIENT_DUID, MAC, fixture, fixture_id, fixtures

PXE_SOLICIT = fixture("proxy6-uefi-pxe-4011", 4)
PXE_ADVERTISE = fixture("proxy6-uefi-pxe-4011", 6)  # the proxy's, that OVMF took
PXE_4011_REQUEST = fixture("proxy6-uefi-pxe-4011", 9)
PXE_4011_REPLY = fixture("proxy6-uefi-pxe-4011", 10)
HTTP_SOLICIT = fixture("proxy6-uefi-http-boot", 0)
HTTP_ADVERTISE = fixture("proxy6-uefi-http-boot", 1)
PXE_PROXY_DUID = bytes.fromhex("00030001a6f1748b92f8")  # DUID-LL of the proxy in proxy6-uefi-pxe-4011
HTTP_PROXY_DUID = bytes.fromhex("00030001365612006fe5")
S = PXE_SOLICIT.payload


def tlv(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def relay_bytes(
    inner: bytes,
    *options: bytes,
    msg_type: int = codec.RELAY_FORW,
    hop: int = 0,
    link: str = "2001:db8:99::1",
    peer: str = "fe80::5054:ff:fe99:41",
    relay_msg: bool = True,
) -> bytes:
    """A relay message built by hand (not by the codec under test)."""
    head = bytes((msg_type, hop)) + socket.inet_pton(socket.AF_INET6, link) + socket.inet_pton(socket.AF_INET6, peer)
    return head + b"".join(options) + (tlv(9, inner) if relay_msg else b"")


def nested(depth: int, inner: bytes = S) -> bytes:
    data = inner
    for hop in range(depth):
        data = relay_bytes(data, hop=hop)
    return data


def without(data: bytes, code: int) -> bytes:
    """A captured message with every instance of one option removed."""
    msg = codec.decode(data, accept=codec.TO_SERVER | codec.FROM_SERVER)
    assert isinstance(msg, Message)
    return codec.encode(msg._replace(options=tuple(o for o in msg.options if o[0] != code)))


# ------------------------------------------------------------------ captures


@pytest.mark.parametrize("f", fixtures(), ids=fixture_id)
def test_every_captured_datagram_round_trips_byte_exact(f):
    packet = f.decode()
    assert isinstance(packet, Message)
    assert packet.name == f.kind
    assert codec.encode(packet) == f.payload
    assert packet.client_id == CLIENT_DUID[f.capture]
    if not f.from_client or f.kind in ("release", "request"):
        assert packet.server_id is not None


def test_edk2_pxe_solicit_decoded():
    msg = PXE_SOLICIT.decode()
    assert msg.msg_type == codec.SOLICIT
    assert msg.transaction_id == 0x0C0F6B
    assert [code for code, _ in msg.options] == [1, 8, 3, 6, 62, 61, 16]
    assert msg.elapsed_time == 0
    assert msg.requested_options == (59, 60, 23, 16)
    assert msg.client_arch_types == (7,)
    assert msg.vendor_classes == (codec.VendorClass(343, (b"PXEClient:Arch:00007:UNDI:003000",)),)
    assert msg.vendor_class(343) == (b"PXEClient:Arch:00007:UNDI:003000",)
    assert msg.vendor_class(9) is None
    assert msg.user_classes == ()
    assert msg.get(62) == b"\x01\x03\x00"
    assert msg.has(codec.OPT_IA_NA)
    assert msg.bootfile_url is None and msg.status is None


def test_captured_answers_decoded():
    adv = PXE_ADVERTISE.decode()
    assert adv.bootfile_url == "tftp://[fd99::1]/snponly.efi"
    assert adv.server_id == PXE_PROXY_DUID
    reply = fixture("proxy6-uefi-pxe-4011", 12).decode()  # the address server's REPLY to a RELEASE
    assert reply.status == (0, "release received")


def test_4011_request_carries_the_proxy_server_id():
    # EDK2 swaps the address server's Server ID for the one of the ADVERTISE it took, and drops IA_NA.
    request = PXE_4011_REQUEST.decode()
    assert request.server_id == PXE_PROXY_DUID
    assert not request.has(codec.OPT_IA_NA)
    assert request.elapsed_time == 900


@pytest.mark.parametrize(
    ("f", "accept"),
    [
        (PXE_ADVERTISE, codec.TO_SERVER),  # an ADVERTISE on 547
        (PXE_SOLICIT, codec.TO_BOOT_SERVER),  # a SOLICIT on 4011
        (fixture("proxy6-uefi-pxe-4011", 11), codec.TO_BOOT_SERVER),  # a RELEASE on 4011
        (PXE_SOLICIT, codec.FROM_SERVER),
    ],
    ids=lambda x: x.name if hasattr(x, "name") else "",
)
def test_message_type_must_fit_the_port(f, accept):
    with pytest.raises(codec.MalformedPacket) as info:
        codec.decode(f.payload, accept=accept)
    assert info.value.reason == "wrong-type"


# ------------------------------------------------------------------ malformed input

BAD_VENDOR = tlv(16, b"\x00\x00\x01\x57\x00\x20PXEClient")  # item length 32, 9 bytes follow


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01\x0c\x0f", "truncated"),
        (S + tlv(99, bytes(4000)), "oversized"),
        (S[:-1], "bad-option"),  # the vendor class's length now runs one byte past the end
        (S[:-39], "bad-option"),  # cut inside the vendor class's option header
        (S + b"\x00\x10", "bad-option"),  # an option header cut short
        (S[:4] + struct.pack("!HH", 1, 400) + S[8:], "bad-option"),  # client id length past the end
        (S + tlv(1, CLIENT_DUID["proxy6-uefi-pxe-4011"]), "duplicate-option"),
        (S + tlv(8, b"\x00\x00"), "duplicate-option"),
        (S + tlv(61, b"\x00\x07"), "duplicate-option"),
        (without(S, 8) + tlv(8, b"\x00\x00\x00"), "bad-value"),  # elapsed time is 2 bytes
        (without(S, 1) + tlv(1, b"\x00\x01"), "bad-value"),  # a DUID of 2 bytes
        (without(S, 1) + tlv(1, b"\x00\x02" + bytes(129)), "bad-value"),  # a DUID of 131 bytes
        (without(S, 16) + BAD_VENDOR, "bad-value"),
        (without(S, 16) + tlv(16, b"\x00\x00\x01"), "bad-value"),  # no room for the enterprise number
        (S + tlv(15, b"\x00\x05iPXE"), "bad-value"),  # user class item past the option's end
        (without(S, 6) + tlv(6, b"\x00\x17\x00"), "bad-value"),  # ORO of odd length
        (without(S, 61) + tlv(61, b""), "bad-value"),
        (without(S, 62) + tlv(62, b"\x01\x03"), "bad-value"),
        (S + tlv(7, b""), "bad-value"),
        (S + tlv(14, b"x"), "bad-value"),
        (S + tlv(99, b"") * 130, "option-bomb"),
        (b"\xc8" + S[1:], "wrong-type"),  # message type 200
        (b"\x00" + S[1:], "wrong-type"),
        (PXE_ADVERTISE.payload, "wrong-type"),
        (relay_bytes(S, msg_type=codec.RELAY_REPL), "wrong-type"),  # RELAY-REPL sent to a server
        (relay_bytes(PXE_ADVERTISE.payload), "wrong-type"),  # a server message inside a RELAY-FORW
        (without(S, 1), "no-client-id"),
        (relay_bytes(S, relay_msg=False), "no-relay-message"),
        (relay_bytes(S)[:33], "truncated"),
        (relay_bytes(b""), "truncated"),  # an empty relayed message
        (relay_bytes(S[:-1]), "bad-option"),  # the relayed SOLICIT is cut
        (relay_bytes(S, tlv(79, b"\x00\x01")), "bad-value"),  # option 79 with no address
        (relay_bytes(S, tlv(18, b"a"), tlv(18, b"b")), "duplicate-option"),
        (relay_bytes(S) + tlv(9, S), "duplicate-option"),  # two relayed messages
        (nested(codec.MAX_RELAY_DEPTH + 1), "relay-depth"),
        (relay_bytes(nested(2, without(S, 1))), "no-client-id"),  # deep inside
    ],
)
def test_malformed(data, reason):
    with pytest.raises(codec.MalformedPacket) as info:
        codec.decode(data)
    assert info.value.reason == reason, info.value
    assert info.value.reason in codec.REASONS


def test_limits_are_inclusive():
    codec.decode(S + tlv(99, bytes(codec.MAX_PACKET - len(S) - 4)))  # exactly MAX_PACKET bytes
    codec.decode(S + tlv(99, b"") * (codec.MAX_OPTIONS - 7))  # exactly MAX_OPTIONS options
    deepest = codec.decode(nested(codec.MAX_RELAY_DEPTH))
    assert isinstance(deepest, Relay)
    assert len(deepest.chain) == codec.MAX_RELAY_DEPTH
    assert deepest.innermost == PXE_SOLICIT.decode()


def test_repeatable_and_unknown_options_pass():
    data = S + tlv(16, b"\x00\x00\x00\x09\x00\x03abc") + tlv(3, bytes(12)) + tlv(999, b"x") + tlv(999, b"y")
    msg = codec.decode(data)
    assert msg.vendor_classes[1] == codec.VendorClass(9, (b"abc",))
    assert msg.get_all(999) == [b"x", b"y"]
    assert codec.encode(msg) == data


def test_information_request_needs_no_client_id():
    msg = codec.decode(bytes((codec.INFORMATION_REQUEST, 1, 2, 3)) + tlv(6, b"\x00\x3b"))
    assert msg.client_id is None
    assert msg.requested_options == (59,)


def test_anything_else_escaping_is_an_internal_bug(monkeypatch):
    def boom(*args):
        raise IndexError("index out of range")

    monkeypatch.setattr(codec, "_scan", boom)
    with pytest.raises(codec.MalformedPacket) as info:
        codec.decode(S)
    assert info.value.reason == "internal"
    assert "IndexError" in info.value.detail


def test_non_bytes_input_is_malformed_not_a_crash():
    with pytest.raises(codec.MalformedPacket):
        codec.decode("not bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ answers EDK2 takes


def _suboption(data: bytes, code: int) -> bytes | None:
    i = 0
    while i + 4 <= len(data):
        c, n = struct.unpack_from("!HH", data, i)
        if c == code:
            return data[i + 4 : i + 4 + n]
        i += 4 + n
    return None


def edk2_pxe_offer_type(msg: Message) -> str:
    """PxeBcParseDhcp6Packet (EDK2 NetworkPkg/UefiPxeBcDxe/PxeBcDhcp6.c), transcribed."""
    proxy = True
    ia_na = msg.get(codec.OPT_IA_NA)
    if ia_na is not None:
        status = _suboption(ia_na[12:], codec.OPT_STATUS_CODE)
        if status is None or status[0] == 0:
            proxy = False  # an address offer
    vendor = msg.get_all(codec.OPT_VENDOR_CLASS)[-1:]  # EDK2 keeps the last one
    pxe = bool(vendor) and len(vendor[0]) >= 13 and vendor[0][:4] == b"\x00\x00\x01\x57" and vendor[0][6:15] == b"PXEClient"
    if pxe:
        return "ProxyBinl" if proxy else "DhcpBinl"
    return "DhcpOnly"


def edk2_http_offer_type(msg: Message) -> str:
    """HttpBootParseDhcp6Packet (EDK2 NetworkPkg/HttpBootDxe/HttpBootDhcp6.c), transcribed for an
    IP-literal URL."""
    proxy = msg.get(codec.OPT_IA_NA) is None
    vendor = msg.get_all(codec.OPT_VENDOR_CLASS)[-1:]
    http = bool(vendor) and len(vendor[0]) >= 16 and vendor[0][6:16] == b"HTTPClient"
    if http and msg.bootfile_url is None:
        return "error"
    if http and proxy:
        return "ProxyIpUri"
    return "error" if proxy else "Dhcp"


def test_captured_proxy_answers_are_what_edk2_calls_proxy_offers():
    assert edk2_pxe_offer_type(PXE_ADVERTISE.decode()) == "ProxyBinl"
    assert edk2_pxe_offer_type(PXE_4011_REPLY.decode()) == "ProxyBinl"
    assert edk2_http_offer_type(HTTP_ADVERTISE.decode()) == "ProxyIpUri"
    assert edk2_pxe_offer_type(fixture("proxy6-uefi-pxe-4011", 5).decode()) == "DhcpOnly"  # the address server's


def test_proxy_advertise_is_byte_identical_to_the_one_that_booted_ovmf():
    adv = codec.proxy_advertise(
        PXE_SOLICIT.decode(), duid_ll("a6:f1:74:8b:92:f8"), codec.PXE_CLIENT, "tftp://[fd99::1]/snponly.efi"
    )
    assert codec.encode(adv) == PXE_ADVERTISE.payload
    assert [code for code, _ in adv.options] == [1, 2, 16, 59]  # no IA_NA, no Status Code, no Preference
    assert adv.transaction_id == PXE_SOLICIT.decode().transaction_id
    assert edk2_pxe_offer_type(adv) == "ProxyBinl"


def test_http_proxy_advertise_is_byte_identical_to_the_one_that_booted_ovmf():
    adv = codec.proxy_advertise(HTTP_SOLICIT.decode(), HTTP_PROXY_DUID, codec.HTTP_CLIENT, "http://[fd99::1]:8080/uki-signed.efi")
    assert codec.encode(adv) == HTTP_ADVERTISE.payload
    assert edk2_http_offer_type(adv) == "ProxyIpUri"


def test_4011_reply_is_byte_identical_to_the_one_that_booted_ovmf():
    request = codec.decode(PXE_4011_REQUEST.payload, accept=codec.TO_BOOT_SERVER)
    reply = codec.boot_reply(request, PXE_PROXY_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/snponly.efi")
    assert codec.encode(reply) == PXE_4011_REPLY.payload
    assert reply.msg_type == codec.REPLY
    assert reply.bootfile_url.startswith("tftp://[")  # PxeBcExtractBootFileUrl's prefix


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"vendor": b"MSFT 5.0"}, "vendor class"),
        ({"url": "tftp://[fd99::1]/bööt.efi"}, "ASCII"),
        ({"server_duid": b"\x00\x03"}, "3..130"),
    ],
)
def test_answer_builders_refuse_what_edk2_would_not_take(kw, error):
    args = {"server_duid": PXE_PROXY_DUID, "vendor": codec.PXE_CLIENT, "url": "tftp://[fd99::1]/snponly.efi"} | kw
    with pytest.raises(ValueError, match=error):
        codec.proxy_advertise(PXE_SOLICIT.decode(), **args)


def test_answer_to_a_message_without_client_id_is_refused():
    anonymous = Message(codec.INFORMATION_REQUEST, 1, ())
    with pytest.raises(ValueError, match="Client Identifier"):
        codec.boot_reply(anonymous, PXE_PROXY_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/x")


def test_option_builders():
    assert codec.vendor_class_option(b"PXEClient") == (16, b"\x00\x00\x01\x57\x00\x09PXEClient")
    assert codec.vendor_class_option(b"a", b"bc", enterprise=9) == (16, b"\x00\x00\x00\x09\x00\x01a\x00\x02bc")
    assert codec.status_code_option(2, "NoAddrsAvail") == (13, b"\x00\x02NoAddrsAvail")
    assert codec.bootfile_url_option("http://[fd99::1]/a") == (59, b"http://[fd99::1]/a")
    assert codec.client_id_option(b"\x00\x03\x00\x01abcdef") == (1, b"\x00\x03\x00\x01abcdef")
    assert codec.interface_id_option(b"eth0") == (18, b"eth0")
    assert codec.relay_message_option(PXE_SOLICIT.decode()) == (9, S)
    with pytest.raises(ValueError):
        codec.vendor_class_option()
    with pytest.raises(ValueError):
        codec.encode(Message(codec.SOLICIT, 1 << 24, ()))
    with pytest.raises(ValueError):
        codec.encode(Message(codec.RELAY_FORW, 1, ()))
    with pytest.raises(ValueError):
        codec.encode(Message(codec.SOLICIT, 1, ((70000, b""),)))


# ------------------------------------------------------------------ relays


def test_relay_forw_round_trip_and_mac_from_option_79():
    from netbootd.dhcp6.classify import client_identity

    data = relay_bytes(S, tlv(18, b"ge-0/0/7.0"), tlv(79, link_layer_option_value("52:54:00:99:00:99")), hop=0)
    relay = codec.decode(data)
    assert isinstance(relay, Relay)
    assert (relay.msg_type, relay.hop_count) == (codec.RELAY_FORW, 0)
    assert (relay.link_address, relay.peer_address) == ("2001:db8:99::1", "fe80::5054:ff:fe99:41")
    assert relay.interface_id == b"ge-0/0/7.0"
    assert relay.message == PXE_SOLICIT.decode()
    assert relay.innermost is relay.message
    assert [code for code, _ in relay.options] == [18, 79, 9]
    assert codec.encode(relay) == data
    identity = client_identity(relay)
    assert (identity.value, identity.source) == ("52:54:00:99:00:99", "option-79")  # not the DUID's MAC
    assert MAC != identity.value


def test_relay_repl_around_an_advertise_echoes_the_interface_id():
    forward = codec.decode(relay_bytes(S, tlv(18, b"ge-0/0/7.0"), tlv(79, link_layer_option_value(MAC)), hop=0))
    adv = codec.proxy_advertise(forward.innermost, PXE_PROXY_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/snponly.efi")
    repl = codec.relay_reply(forward, adv)
    data = codec.encode(repl)
    assert data == relay_bytes(PXE_ADVERTISE.payload, tlv(18, b"ge-0/0/7.0"), msg_type=codec.RELAY_REPL)
    back = codec.decode(data, accept=codec.FROM_SERVER)
    assert back == repl
    assert back.message == adv


def test_nested_relays_innermost_79_and_reply_mirrors_every_layer():
    from netbootd.dhcp6.classify import client_identity

    inner = relay_bytes(S, tlv(18, b"inner"), tlv(79, link_layer_option_value("52:54:00:00:00:01")), hop=0)
    outer = relay_bytes(
        inner,
        tlv(18, b"outer"),
        tlv(79, link_layer_option_value("52:54:00:00:00:02")),
        hop=1,
        link="2001:db8:1::1",
        peer="2001:db8:99::1",
    )
    forward = codec.decode(outer)
    assert [r.interface_id for r in forward.chain] == [b"outer", b"inner"]
    assert client_identity(forward).value == "52:54:00:00:00:01"  # the relay on the client's link
    adv = codec.proxy_advertise(forward.innermost, PXE_PROXY_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/snponly.efi")
    repl = codec.relay_reply(forward, adv)
    expected_inner = relay_bytes(PXE_ADVERTISE.payload, tlv(18, b"inner"), msg_type=codec.RELAY_REPL, hop=0)
    expected = relay_bytes(
        expected_inner, tlv(18, b"outer"), msg_type=codec.RELAY_REPL, hop=1, link="2001:db8:1::1", peer="2001:db8:99::1"
    )
    assert codec.encode(repl) == expected


def test_relay_reply_without_interface_id_has_only_the_relay_message():
    forward = codec.decode(relay_bytes(S))
    adv = codec.proxy_advertise(forward.innermost, PXE_PROXY_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/a")
    assert [code for code, _ in codec.relay_reply(forward, adv).options] == [9]


def test_relay_encode_writes_the_message_not_stale_bytes():
    relay = codec.decode(relay_bytes(S, tlv(18, b"x")))
    changed = relay._replace(message=relay.message._replace(transaction_id=0xABCDEF))
    assert codec.decode(codec.encode(changed)).message.transaction_id == 0xABCDEF
    no_9 = relay._replace(options=((18, b"x"),))
    assert codec.encode(no_9) == codec.encode(relay)  # the relay message is appended when missing


def test_the_package_loads_no_twisted_and_no_other_edge():
    """The pure modules stay pure: the edges do not import each other (and netbootd.dhcp loads Twisted)."""
    code = (
        "import sys, netbootd.dhcp6.codec, netbootd.dhcp6.duid, netbootd.dhcp6.classify;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted' or m.startswith('netbootd.dhcp.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
