"""Hypothesis: any bytes through the codec and the server; nothing escapes, nothing is
swallowed as an internal error."""

from __future__ import annotations

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netbootd.tftp import codec
from tests.tftp.conftest import check_codec, metric, sleep

names = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=0, max_size=40)
option_names = st.sampled_from(["blksize", "BLKSIZE", "tsize", "timeout", "windowsize", "WindowSize", "x", ""])
option_values = st.one_of(
    st.integers(-5, 70000).map(str),
    st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=12),
)


def request_bytes() -> st.SearchStrategy[bytes]:
    def build(opcode, name, mode, options, padding):
        out = opcode.to_bytes(2, "big") + name.encode() + b"\x00" + mode.encode() + b"\x00"
        for k, v in options:
            out += k.encode() + b"\x00" + v.encode() + b"\x00"
        return out + b"\x00" * padding

    return st.builds(
        build,
        st.sampled_from([1, 2]),
        st.one_of(names, st.sampled_from(["odd.bin", "/one512.bin", "../x", "sub\\x", "empty.bin"])),
        st.sampled_from(["octet", "OCTET", "netascii", "mail", "", "bogus"]),
        st.lists(st.tuples(option_names, option_values), max_size=6),
        st.integers(0, 3),
    )


any_packet = st.one_of(
    st.binary(max_size=600),
    request_bytes(),
    request_bytes().map(lambda b: b[: len(b) // 2]),
    st.builds(lambda op, rest: op.to_bytes(2, "big") + rest, st.integers(0, 8), st.binary(max_size=64)),
)


@settings(max_examples=1500, deadline=None)
@given(any_packet)
def test_codec_raises_only_malformed(data):
    check_codec(data)


@settings(max_examples=500, deadline=None)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=50),
    st.sampled_from(["octet", "netascii"]),
    st.dictionaries(st.sampled_from(["blksize", "tsize", "windowsize", "timeout", "foo"]), st.integers(0, 99999)),
)
def test_request_round_trip(name, mode, options):
    packet = codec.parse(codec.encode_request(name, mode, options))
    assert packet == codec.ReadRequest(name, mode, {k: str(v) for k, v in options.items()})


@given(st.integers(0, 0xFFFF), st.text(max_size=100))
def test_error_encoding_round_trip(code, message):
    packet = codec.parse(codec.encode_error(code, message))
    assert isinstance(packet, codec.Error) and packet.code == code
    assert packet.message == message.encode("ascii", "replace").replace(b"\x00", b"?").decode()


@given(st.integers(0, 200000), st.binary(max_size=1500))
def test_data_encoding(block, payload):
    raw = codec.encode_data(block, payload)
    assert codec.parse(raw) == codec.Data(block & 0xFFFF, len(payload))
    assert raw[4:] == payload


@pytest_twisted.ensureDeferred
async def test_server_survives_anything(server, raw_client):
    """Fuzz the real server (bound on loopback) with datagrams from a real client address."""
    client = raw_client()
    addr = ("127.0.0.1", client.port_obj.getHost().port)
    srv = server.server
    internal = metric("netbootd_tftp_dropped_packets_total", reason="internal")
    started = metric("netbootd_tftp_transfers_started_total")

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(any_packet, min_size=1, max_size=4))
    def feed(datagrams):
        for data in datagrams:
            srv.datagramReceived(data, addr)  # must never raise
        for session in list(srv.sessions.values()):
            session.datagramReceived(data, addr)
            session.abort()
        assert not srv.sessions

    feed()
    await sleep(0.1)  # let the transfer ports close
    assert metric("netbootd_tftp_dropped_packets_total", reason="internal") == internal
    assert metric("netbootd_tftp_transfers_failed_total", reason="internal") == 0
    assert metric("netbootd_tftp_transfers_started_total") > started  # sessions were exercised too
