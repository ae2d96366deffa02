"""TFTP rate limit against a real daemon: a client over its rate gets an ERROR packet
("rate limit exceeded, retry later"), counted; machines booting from their own addresses are not."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest
import tftpy

from netbootd.tftp import codec
from tests.conftest import wait_for
from tests.limits.conftest import boot_machines, metric

logging.getLogger("tftpy").setLevel(logging.CRITICAL)


def _tftp_daemon(daemon_factory, settings: str = ""):
    d = daemon_factory(tftp=True, extra_settings=f'root = "tftp"\n{settings}\n')
    root = d.root / "tftp"
    root.mkdir()
    (root / "payload.bin").write_bytes(os.urandom(70_000))
    return d.start(), root


def _rrq(sock: socket.socket, port: int, name: str = "payload.bin", options: dict | None = None):
    sock.sendto(codec.encode_request(name, "octet", options or {}), ("127.0.0.1", port))
    data, addr = sock.recvfrom(65536)
    return codec.parse(data), addr


def test_rate_limit_answers_an_error_packet(daemon_factory):
    d, _ = _tftp_daemon(daemon_factory, "rate_limit = 0.2\nrate_burst = 3")
    answers = []
    for _ in range(4):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new port each time, like a retrying client
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            answers.append(_rrq(s, d.tftp_port, options={"tsize": 0})[0])
    assert all(isinstance(a, codec.OptionAck) for a in answers[:3]), answers  # the burst is served
    error = answers[3]
    assert isinstance(error, codec.Error), answers
    assert error.message == "rate limit exceeded, retry later"
    assert error.code == codec.ERR_UNDEFINED
    assert metric(d, "netbootd_tftp_requests_refused_total", reason="rate_limited") >= 1

    time.sleep(1.5)  # ERRORs to one client go out at most once a second (see the next test)
    # a real client sees the error too (tftpy prints its own text for code 0, not the server's)
    client = tftpy.TftpClient("127.0.0.1", d.tftp_port)
    with pytest.raises(tftpy.TftpException, match="errorcode = 0"):
        client.download("payload.bin", str(d.root / "out.bin"), timeout=2)
    # and is served again once its bucket has refilled
    out = d.root / "again.bin"

    def fetch() -> bool:
        try:
            tftpy.TftpClient("127.0.0.1", d.tftp_port).download("payload.bin", str(out), timeout=2)
        except tftpy.TftpException:
            return False
        return out.stat().st_size == 70_000

    wait_for(fetch, timeout=15, interval=0.5)
    wait_for(lambda: metric(d, "netbootd_tftp_active_transfers") == 0, timeout=10)


def test_refusals_are_not_a_reflection_amplifier(daemon_factory):
    """A flood over the limit gets at most about one ERROR a second back, not one per packet."""
    d, _ = _tftp_daemon(daemon_factory, "rate_limit = 1\nrate_burst = 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for _ in range(200):
            s.sendto(codec.encode_request("nosuch", "octet", {}), ("127.0.0.1", d.tftp_port))
        wait_for(lambda: metric(d, "netbootd_tftp_requests_refused_total", reason="rate_limited") >= 199, timeout=10)
        s.settimeout(0.5)
        replies = 0
        try:
            while True:
                s.recvfrom(65536)
                replies += 1
        except TimeoutError:
            pass
    # one "File not found" for the request in the burst, and a handful of rate-limit ERRORs
    assert 2 <= replies <= 10, replies


def test_machines_booting_from_their_own_addresses_are_not_limited(daemon_factory):
    """60 machines each do what EDK2 and iPXE do: a tsize probe, then the transfer, with the
    default limits; a few also retry. Every transfer completes."""
    d, root = _tftp_daemon(daemon_factory)
    want = (root / "payload.bin").read_bytes()

    def boot(n: int, source: str) -> list[str]:
        failures = []
        for _attempt in range(2 if n % 5 else 4):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(10)
                s.bind((source, 0))
                probe, addr = _rrq(s, d.tftp_port, options={"tsize": 0, "blksize": 1468})
                assert isinstance(probe, codec.OptionAck), probe
                s.sendto(codec.encode_error(codec.ERR_OPTIONS, "tsize probe done"), addr)
            out = d.root / f"out-{n}.bin"
            data = _download(source, d.tftp_port)
            if data != want:
                failures.append(f"{n}: {len(data)} bytes")
            out.write_bytes(data)
        return failures

    failures = boot_machines(60, boot)
    assert not failures, failures[:5]
    assert metric(d, "netbootd_tftp_requests_refused_total", reason="rate_limited") == 0


def _download(source: str, port: int, name: str = "payload.bin") -> bytes:
    """A plain RFC 1350 read from `source` (512-byte blocks, lock-step)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.sendto(codec.encode_request(name, "octet", {}), ("127.0.0.1", port))
        out = bytearray()
        expected = 1
        while True:
            data, addr = s.recvfrom(65536)
            packet = codec.parse(data)
            assert isinstance(packet, codec.Data), packet
            if packet.block == expected:
                out += data[4:]
                expected += 1
            s.sendto(b"\x00\x04" + data[2:4], addr)
            if packet.block == expected - 1 and len(data) - 4 < 512:
                return bytes(out)
