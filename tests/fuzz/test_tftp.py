"""Fuzz the TFTP edge: the codec, and the live server (bound on loopback, with its real transfer
sessions on their own ports) fed mutated captured packets (tests/fuzz/corpus/tftp), requests with
hostile names, modes and options, and random bytes, on the request port and on transfer ports.

Properties: `codec.parse` raises nothing but MalformedPacket; nothing reaches the server's or a
session's internal-error safety net; every answer the client gets parses; afterwards no session,
no open transfer port and no open file is left (the process's fd count is back where it was).
"""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from netbootd.tftp import codec
from tests.fuzz.conftest import EXAMPLES, corpus, fuzz, mutated
from tests.tftp.conftest import (
    RawClient,
    Running,
    check_codec,
    make_settings,
    metric,
    open_fds,
    sleep,
    wait_for,
    write_random,
)

SEEDS = corpus("tftp")
NAMES = ["undionly.kpxe", "snponly.efi", "/one.bin", "sub/two.bin", "../etc/passwd", "sub\\two.bin", "", "/",
         "sub", "a" * 300, "nosuch", "one.bin\x00x", "%2e%2e/x", "dev/null"]
OPTIONS = ["blksize", "tsize", "timeout", "windowsize", "BlkSize", "multicast", "x", ""]
OPTION_VALUES = ["0", "1", "7", "8", "512", "1468", "65464", "65465", "99999999999999999999", "-1", "", "abc", "1e3",
                 " 8", "0x10", "255", "256", "65535", "65536"]


def request() -> st.SearchStrategy[bytes]:
    def build(opcode, name, mode, options, tail):
        out = opcode.to_bytes(2, "big") + name.encode("utf-8", "surrogateescape") + b"\0" + mode.encode() + b"\0"
        for k, v in options:
            out += k.encode() + b"\0" + v.encode() + b"\0"
        return out + tail

    return st.builds(
        build,
        st.sampled_from([1, 1, 1, 2]),
        st.sampled_from(NAMES) | st.text(max_size=30),
        st.sampled_from(["octet", "OCTET", "netascii", "NetAscii", "mail", "", "octet\x01"]),
        st.lists(st.tuples(st.sampled_from(OPTIONS), st.sampled_from(OPTION_VALUES)), max_size=6),
        st.sampled_from([b"", b"\0", b"x", b"\0\0"]),
    )


def transfer_packet() -> st.SearchStrategy[bytes]:
    """What a client may send on a transfer port: ACKs for any block, ERRORs, junk."""
    return st.one_of(
        st.integers(0, 0xFFFF).map(codec.encode_ack),
        st.integers(0, 3).map(codec.encode_ack),
        st.tuples(st.integers(0, 9), st.text(max_size=20)).map(lambda e: codec.encode_error(*e)),
        st.binary(max_size=8),
        mutated(SEEDS, max_ops=2),
    )


PACKETS = st.one_of(mutated(SEEDS), request(), st.binary(max_size=600))


@fuzz(400)
@given(PACKETS)
def test_codec(data):
    check_codec(data)


@pytest.fixture
def tftp_files(tmp_path):
    root = tmp_path / "root"
    write_random(root / "one.bin", 700)
    write_random(root / "sub" / "two.bin", 3000)
    write_random(root / "big.bin", 300_000)
    ipxe = tmp_path / "ipxe"
    write_random(ipxe / "undionly.kpxe", 5000)
    write_random(ipxe / "snponly.efi", 9000)
    os.symlink("/etc/passwd", root / "escape")
    return root, ipxe


@pytest_twisted.ensureDeferred
async def test_live_server(tftp_files):
    root, ipxe = tftp_files
    running = Running(make_settings(root, ipxe, timeout=0.05, retries=1, rate_limit=0))
    server = running.server
    client = RawClient()
    client_addr = ("127.0.0.1", client.port_obj.getHost().port)
    internal_before = metric("netbootd_tftp_dropped_packets_total", reason="internal")
    failed_before = metric("netbootd_tftp_transfers_failed_total", reason="internal")
    started_before = metric("netbootd_tftp_transfers_started_total")
    fds_before = open_fds()

    @fuzz(300)
    @given(st.lists(PACKETS, min_size=1, max_size=4), st.lists(transfer_packet(), max_size=6), st.booleans())
    def feed(requests, later, finish):
        for data in requests:
            server.datagramReceived(data, client_addr)  # never raises, whatever the bytes
        for session in list(server.sessions.values()):
            for data in later:
                session.datagramReceived(data, client_addr)
        if finish:  # a server shutdown mid-fuzz; otherwise the sessions run on and time out
            server.abort_all()
            assert not server.sessions

    try:
        feed()
        # real datagrams too: the same kinds through the socket, answers must parse
        for data in [*SEEDS, codec.encode_request("one.bin", "octet", {"blksize": "8", "windowsize": "3"})]:
            client.send(data, ("127.0.0.1", running.port))
        answers = 0
        while (got := await client.recv(timeout=0.5)) is not None:
            answers += 1
            assert got[0] is not None
        assert answers
        assert await wait_for(lambda: not server.sessions, timeout=20)
        await sleep(0.1)  # transfer ports finish closing
    finally:
        await client.close()
        await defer.maybeDeferred(running.port_obj.stopListening)
        await sleep(0.05)
    assert metric("netbootd_tftp_dropped_packets_total", reason="internal") == internal_before
    assert metric("netbootd_tftp_transfers_failed_total", reason="internal") == failed_before
    assert metric("netbootd_tftp_transfers_started_total") > started_before  # sessions were exercised
    assert await wait_for(lambda: open_fds() <= fds_before, timeout=10), (open_fds(), fds_before)


def test_live_daemon_survives_garbage(daemon_factory):
    """The daemon's TFTP port: random and mutated datagrams; it still serves a file afterwards."""
    from hypothesis import HealthCheck, settings

    d = daemon_factory(tftp=True, extra_settings='root = "tftp"\nrate_limit = 0\ntimeout = 0.1\nretries = 1\n')
    write_random(d.root / "tftp" / "one.bin", 700)
    d.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    @settings(max_examples=EXAMPLES or 200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(PACKETS)
    def feed(data):
        sock.sendto(data[:1400], ("127.0.0.1", d.tftp_port))

    try:
        feed()
    finally:
        sock.close()
    from tests.limits.test_tftp_limits import _download

    assert _download("127.0.0.1", d.tftp_port, "one.bin") == (d.root / "tftp" / "one.bin").read_bytes()
    assert d.proc.poll() is None
    assert "Traceback" not in d.log()
