"""Property tests: mutated captures and random bytes give a packet or MalformedPacket, nothing else;
what decodes re-encodes to the same bytes, classifies, and can be answered with packets that parse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from netbootd.dhcp6 import codec
from netbootd.dhcp6.classify import classify_reason
from netbootd.dhcp6.codec import Message, Relay
from netbootd.dhcp6.duid import duid_ll, link_layer_option_value
from tests.dhcp6.conftest import fixture, fixtures
from tests.dhcp6.test_classify import IPXE_SOLICIT
from tests.dhcp6.test_codec import nested, relay_bytes, tlv
from tests.fuzz.conftest import mutated as mutate

PXE_SOLICIT = fixture("proxy6-uefi-pxe-4011", 4).payload
# Seeds: every captured datagram, plus relayed and iPXE messages (no capture has those).
SEEDS = [
    *(f.payload for f in fixtures()),
    IPXE_SOLICIT,
    relay_bytes(PXE_SOLICIT, tlv(18, b"ge-0/0/7.0"), tlv(79, link_layer_option_value("52:54:00:99:00:99"))),
    nested(3, IPXE_SOLICIT),
    relay_bytes(fixture("proxy6-uefi-pxe-4011", 6).payload, tlv(18, b"eth0"), msg_type=codec.RELAY_REPL),
]
PORTS = (codec.TO_SERVER, codec.TO_BOOT_SERVER, codec.FROM_SERVER)
SERVER_DUID = duid_ll("52:54:00:00:00:02")


def check(data: bytes) -> None:
    """The properties, for the datagram arriving on each kind of port."""
    reasons: set[str] = set()
    decoded = False
    for accept in PORTS:
        try:
            check_port(data, accept)
            decoded = True
        except codec.MalformedPacket as exc:
            assert exc.reason in codec.REASONS
            assert exc.reason != "internal", exc  # an exception of ours that the safety net caught
            reasons.add(exc.reason)
    if not decoded:
        event(f"dropped: {' '.join(sorted(reasons - {'wrong-type'}) or ['wrong-type'])}")


def check_port(data: bytes, accept: frozenset[int]) -> None:
    packet = codec.decode(data, accept=accept)
    assert codec.encode(packet) == data  # canonical: what decodes re-encodes byte for byte
    assert codec.decode(codec.encode(packet), accept=accept) == packet
    message = packet.innermost if isinstance(packet, Relay) else packet
    # the helpers read what decode checked: none of them may raise
    _ = (message.name, message.elapsed_time, message.requested_options, message.client_arch_types)
    _ = (message.vendor_classes, message.user_classes, message.bootfile_url, message.status, message.server_id)
    client, identity, reason = classify_reason(packet)
    event(f"decoded {'relay' if isinstance(packet, Relay) else 'message'}: {reason or client.firmware.value}")
    assert (client is None) == bool(reason)
    if client is not None:
        assert client.mac == identity.value
    if message.msg_type in codec.CLIENT_MESSAGES and message.client_id is not None:
        answer = codec.proxy_advertise(message, SERVER_DUID, codec.PXE_CLIENT, "tftp://[fd99::1]/snponly.efi")
        out = codec.relay_reply(packet, answer) if isinstance(packet, Relay) else answer
        back = codec.decode(codec.encode(out), accept=codec.FROM_SERVER)
        assert back == out
        assert (back.innermost if isinstance(back, Relay) else back).client_id == message.client_id


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=mutate(SEEDS, 8, ops=("flip", "set", "insert", "delete", "truncate", "extend", "splice")))
@example(data=SEEDS[-3])
def test_mutated_captures(data):
    check(data)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(data):
    check(data)


OPTION_CODES = st.sampled_from([1, 2, 3, 6, 7, 8, 9, 13, 14, 15, 16, 18, 59, 61, 62, 79]) | st.integers(0, 0xFFFF)


def structured() -> st.SearchStrategy[bytes]:
    """Valid framing, hostile contents: client messages of random options, often with a PXE vendor
    class, an iPXE user class and an arch (so they reach classification and the answer builders),
    wrapped in 0..3 relays with random options of their own."""
    well_formed = st.sampled_from(
        [
            tlv(3, bytes(12)),
            tlv(6, b"\x00\x17\x00\x3b"),
            tlv(7, b"\x00"),
            tlv(8, b"\x01\x00"),
            tlv(13, b"\x00\x00ok"),
            tlv(14, b""),
            tlv(16, b"\x00\x00\x00\x09\x00\x01x"),
            tlv(59, b"tftp://[fd99::1]/x"),
            tlv(62, b"\x01\x03\x0a"),
            tlv(79, b"\x00\x01RT\x00\x99\x00\x99"),
        ]
    )
    option = well_formed | st.tuples(OPTION_CODES, st.binary(max_size=40)).map(lambda o: tlv(*o))
    boot = st.tuples(
        st.sampled_from([b"", tlv(16, b"\x00\x00\x01\x57\x00\x09PXEClient"), tlv(16, b"\x00\x00\x01\x57\x00\x0aHTTPClient")]),
        st.sampled_from([b"", tlv(15, b"\x00\x04iPXE")]),
        st.sampled_from([b"", tlv(61, b"\x00\x07"), tlv(61, b"\x00\x10"), tlv(61, b"\x00\x0b\x00\x07")]),
    ).map(b"".join)
    message = st.tuples(
        st.sampled_from([*sorted(codec.CLIENT_MESSAGES), 0, codec.ADVERTISE, codec.RELAY_REPL, 200]),
        st.sampled_from([tlv(1, duid_ll("52:54:00:00:00:01")), b""]),
        boot,
        st.lists(option, max_size=6),
    ).map(lambda m: struct.pack("!B3s", m[0], b"\x01\x02\x03") + m[1] + m[2] + b"".join(m[3]))
    relay_options = st.lists(option, max_size=4).map(b"".join)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(message)
        for hop in range(draw(st.integers(0, 3))):
            data = relay_bytes(data, draw(relay_options), hop=hop)
        return data

    return build()


@FUZZ
@given(data=structured())
def test_random_options(data):
    check(data)


@pytest.mark.parametrize("seed", SEEDS, ids=range(len(SEEDS)))
def test_seeds_decode(seed):
    """Sanity: every unmutated seed decodes, so the properties above are not vacuous."""
    for accept in PORTS:
        try:
            packet = codec.decode(seed, accept=accept)
        except codec.MalformedPacket as exc:
            assert exc.reason == "wrong-type"
            continue
        assert isinstance(packet, Message | Relay)
        return
    pytest.fail("seed decodes under no port")
