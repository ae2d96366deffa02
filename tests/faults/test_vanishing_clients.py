"""Clients that vanish mid-transfer, against a real daemon: every transfer's resources come back
(the daemon's open file descriptors return to their baseline, the active-transfer gauges to 0)."""

from __future__ import annotations

import os
import socket
import struct

from netbootd.tftp import codec
from tests.conftest import wait_for
from tests.limits.conftest import http_settings, metric, open_fds

BIG = 64 * 1024 * 1024  # far more than the socket buffers hold: the transfer is still running when the client goes


def _settled_fds(d) -> int:
    """The daemon's fd count once nothing is in flight (two equal readings in a row)."""
    last = [-1]

    def stable() -> bool:
        now = open_fds(d.proc.pid)
        same, last[0] = now == last[0], now
        return same

    wait_for(stable, timeout=10, interval=0.3)
    return last[0]


def _tftp_daemon(daemon_factory):
    d = daemon_factory(tftp=True, extra_settings='root = "tftp"\ntimeout = 0.3\nretries = 2\n')
    (d.root / "tftp").mkdir()
    (d.root / "tftp" / "big.bin").write_bytes(os.urandom(2_000_000))
    d.start()
    return d


def _start_transfer(port: int, options: dict | None = None) -> tuple[socket.socket, tuple[str, int]]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("127.0.0.1", 0))
    s.sendto(codec.encode_request("big.bin", "octet", options or {}), ("127.0.0.1", port))
    _data, addr = s.recvfrom(65536)
    return s, addr


def test_tftp_client_closing_its_socket_mid_transfer(daemon_factory):
    d = _tftp_daemon(daemon_factory)
    s, _ = _start_transfer(d.tftp_port)  # warm-up: the first transfer's lazily opened files
    s.close()
    wait_for(lambda: metric(d, "netbootd_tftp_active_transfers") == 0, timeout=10)
    baseline = _settled_fds(d)
    unreachable = metric(d, "netbootd_tftp_transfers_failed_total", reason="client_unreachable")
    for _ in range(5):
        s, addr = _start_transfer(d.tftp_port, {"blksize": 1468, "windowsize": 4})
        s.sendto(codec.encode_ack(0), addr)  # OACK acknowledged: DATA flows
        s.recvfrom(65536)
        s.close()  # gone: the next packet to it draws an ICMP port unreachable
    wait_for(lambda: metric(d, "netbootd_tftp_active_transfers") == 0, timeout=10)
    wait_for(lambda: open_fds(d.proc.pid) <= baseline, timeout=10)
    # counted as the client's doing, not as a server shutdown
    assert metric(d, "netbootd_tftp_transfers_failed_total", reason="client_unreachable") == unreachable + 5
    assert metric(d, "netbootd_tftp_transfers_failed_total", reason="shutdown") == 0


def test_tftp_client_closing_after_the_last_block_is_not_a_failure_warning(daemon_factory):
    """RFC 1350: a client may close once it has sent its final ACK, which can be lost."""
    d = _tftp_daemon(daemon_factory)
    (d.root / "tftp" / "small.bin").write_bytes(b"s" * 100)  # one block: the first DATA is the last
    lost = metric(d, "netbootd_tftp_transfers_failed_total", reason="final_ack_lost")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("127.0.0.1", 0))
    s.sendto(codec.encode_request("small.bin", "octet", {}), ("127.0.0.1", d.tftp_port))
    data, _addr = s.recvfrom(65536)
    assert data[4:] == b"s" * 100
    s.close()  # its final ACK "lost": the retransmitted last block draws an ICMP port unreachable
    wait_for(lambda: metric(d, "netbootd_tftp_transfers_failed_total", reason="final_ack_lost") == lost + 1, timeout=10)
    assert "every block sent, final ACK lost" in d.log()
    assert "tftp transfer failed" not in d.log()


def test_tftp_client_going_silent_mid_transfer(daemon_factory):
    """A machine powered off mid-transfer: no ICMP, just silence; the session times out."""
    d = _tftp_daemon(daemon_factory)
    baseline = _settled_fds(d)
    timeouts = metric(d, "netbootd_tftp_transfers_failed_total", reason="timeout")
    silent = []
    for _ in range(5):
        s, addr = _start_transfer(d.tftp_port)
        s.sendto(codec.encode_ack(1), addr)  # a few blocks, then nothing
        s.recvfrom(65536)
        silent.append(s)  # kept open: the daemon's retransmissions are received and ignored
    wait_for(lambda: metric(d, "netbootd_tftp_active_transfers") == 0, timeout=20)
    for s in silent:
        s.close()
    wait_for(lambda: open_fds(d.proc.pid) <= baseline, timeout=10)
    assert metric(d, "netbootd_tftp_transfers_failed_total", reason="timeout") == timeouts + 5


def _http_daemon(daemon_factory, settings: str = ""):
    d = daemon_factory()
    with open(d.files / "big.img", "wb") as f:
        f.truncate(BIG)  # sparse: 64 MiB without writing them
    if settings:
        http_settings(d, settings)
    return d.start()


def _get_some(port: int, path: str = "/files/big.img") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    while got < 512 * 1024:
        got += len(s.recv(65536))
    return s


def test_http_client_vanishing_mid_download(daemon_factory):
    d = _http_daemon(daemon_factory)
    _get_some(d.http_port).close()  # warm-up
    wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 0, timeout=10)
    baseline = _settled_fds(d)
    for n in range(6):
        s = _get_some(d.http_port)
        if n % 2:  # half of them reset the connection (SO_LINGER 0), half close it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 0, timeout=10)
    wait_for(lambda: open_fds(d.proc.pid) <= baseline, timeout=10)
    assert d.get("/files/big.img", headers={"range": "bytes=0-9"}).status_code == 206
    assert "Traceback" not in d.log()


def test_http_client_that_stops_reading_is_cut(daemon_factory):
    """A client that keeps its connection but reads no more (or a machine powered off, whose TCP
    stack never acknowledges again) holds its download slot until http.stall_timeout."""
    d = _http_daemon(daemon_factory, "stall_timeout = 2")
    baseline = _settled_fds(d)
    stalled = [_get_some(d.http_port) for _ in range(3)]
    wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 3, timeout=10)
    wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 0, timeout=30)
    assert metric(d, "netbootd_http_refused_total", reason="stalled") == 3
    for s in stalled:
        s.close()
    wait_for(lambda: open_fds(d.proc.pid) <= baseline, timeout=10)
    assert "Traceback" not in d.log()
