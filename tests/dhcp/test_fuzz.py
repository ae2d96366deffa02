"""Property tests: mutated captures and random bytes never raise, and every answer sent parses."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from netbootd.dhcp import codec
from netbootd.dhcp.answer import DhcpController
from netbootd.dhcp.protocol import DhcpProtocol, PacketInfo
from tests.dhcp.conftest import FakeCore, client_requests
from tests.dhcp.test_codec import request_bytes
from tests.dhcp.test_protocol import PktinfoTransport, StubAddresses
from tests.fuzz.conftest import mutated as mutate

# Seeds: every captured firmware request, plus a synthetic one so the test runs without captures.
SEEDS = [d.payload for d in client_requests()] or [
    request_bytes(b"\x35\x01\x01\x3c\x20PXEClient:Arch:00000:UNDI:002001\x5d\x02\x00\x00\xff")
]
INFO = PacketInfo(ifindex=3, local="255.255.255.255", spec_dst="192.0.2.1")


def mutated():
    """The captures with 1..8 byte edits (the fuzz suite's mutation strategy, its basic edits)."""
    return mutate(SEEDS, 8, ops=("flip", "set", "insert", "delete", "truncate", "extend"))


def structured_options():
    """Valid framing, hostile contents: random codes and values, often after a PXE vendor class
    (so they reach classification and the reply builder, not just the parser)."""
    option = st.tuples(
        st.sampled_from([43, 60, 77, 93, 94, 97, 175, 52, 53, 255, 0]) | st.integers(1, 254),
        st.binary(max_size=40),
    )
    vendor = st.sampled_from([b"", b"\x3c\x09PXEClient", b"\x3c\x0aHTTPClient", b"\x4d\x04iPXE"])
    return st.tuples(vendor, st.lists(option, max_size=40)).map(
        lambda v: request_bytes(
            b"\x35\x01\x01" + v[0] + b"".join(bytes((c, len(x))) + x for c, x in v[1]) + b"\xff"
        )
    )


def internal_errors():
    return REGISTRY.get_sample_value("netbootd_dhcp_dropped_total", {"reason": "internal"}) or 0.0


def check(data: bytes, proxy: bool) -> None:
    try:
        codec.decode(data)
    except codec.MalformedPacket as exc:
        assert exc.reason in codec.REASONS
    proto = DhcpProtocol(
        DhcpController(FakeCore()), proxy=proxy, addresses=StubAddresses({3: ("eth0", "192.0.2.1")})
    )
    proto.makeConnection(PktinfoTransport())
    before = internal_errors()
    proto.packetReceived(data, ("0.0.0.0", 68), INFO, False)
    assert internal_errors() == before, "an exception reached the protocol's safety net"
    for payload, _dest, _ifindex, _source in proto.transport.sent:
        reply = codec.decode(payload, op=codec.BOOTREPLY)
        assert reply.yiaddr == "0.0.0.0"
        assert len(payload) >= codec.MIN_BOOTP
        assert proxy or reply.msgtype == codec.OFFER  # never an ACK on 67 (answer.py)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=mutated(), proxy=st.booleans())
def test_mutated_captures(data, proxy):
    check(data, proxy)


@FUZZ
@given(data=st.binary(max_size=1600), proxy=st.booleans())
def test_random_bytes(data, proxy):
    check(data, proxy)


@FUZZ
@given(data=structured_options(), proxy=st.booleans())
def test_random_options(data, proxy):
    check(data, proxy)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_seeds_are_answered(seed):
    """Sanity: the unmutated seeds produce answers, so the properties above are not vacuous (on 67:
    an OFFER to a DISCOVER, nothing to a REQUEST, which is the site server's)."""
    proto = DhcpProtocol(
        DhcpController(FakeCore()), proxy=False, addresses=StubAddresses({3: ("eth0", "192.0.2.1")})
    )
    proto.makeConnection(PktinfoTransport())
    proto.packetReceived(seed, ("0.0.0.0", 68), INFO, False)
    assert len(proto.transport.sent) == (0 if codec.decode(seed).msgtype == codec.REQUEST else 1)
