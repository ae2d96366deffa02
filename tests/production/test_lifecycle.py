"""Running under systemd: sd_notify READY/RELOADING/STATUS/WATCHDOG, SIGTERM lets downloads finish."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import wait_for


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def receive_until(sock, wanted: str, limit: int = 50) -> list[str]:
    seen = []
    for _ in range(limit):
        msg = sock.recv(4096).decode()
        seen.append(msg)
        if wanted in msg.split("\n"):
            return seen
    raise AssertionError(f"{wanted} not received; got {seen}")


def test_ready_status_reloading_and_watchdog(daemon_factory, notify_socket):
    path, sock = notify_socket
    d = daemon_factory()
    (d.machines / "52-54-00-12-34-56.toml").write_text("[boot]\nlocal = true\n")
    d.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    seen = receive_until(sock, "READY=1")
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=serving 1 machine file, no default; http" in ready
    # the watchdog pings at half of WATCHDOG_USEC
    receive_until(sock, "WATCHDOG=1")
    d.signal(signal.SIGHUP)
    seen = receive_until(sock, "RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in seen[-1].split("\n"))
    receive_until(sock, "READY=1")
    d.signal(signal.SIGTERM)
    receive_until(sock, "STOPPING=1")
    assert d.proc.wait(10) == 0


def test_sigterm_lets_a_running_download_finish(daemon_factory):
    d = daemon_factory()
    size = 64 * 1024 * 1024
    with open(d.files / "big.img", "wb") as f:
        f.truncate(size)
    d.start()
    got = {"bytes": 0, "error": None}
    started = threading.Event()

    def slow_client():
        try:
            with httpx.stream("GET", d.url + "/files/big.img", timeout=30) as r:
                for chunk in r.iter_bytes(65536):
                    got["bytes"] += len(chunk)
                    started.set()
                    time.sleep(0.002)  # a slow firmware: ~30 MB/s at most
        except Exception as exc:  # recorded and asserted below
            got["error"] = exc
            started.set()

    t = threading.Thread(target=slow_client)
    t.start()
    assert started.wait(10)
    d.signal(signal.SIGTERM)
    # no new work once SIGTERM arrived
    wait_for(lambda: _refused(d.url), timeout=5)
    t.join(60)
    assert got["error"] is None and got["bytes"] == size
    assert d.proc.wait(10) == 0
    log = d.log()
    assert "waiting for running transfers" in log and "stopped" in log


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
        return False
    except httpx.ConnectError:
        return True


def test_sigterm_grace_is_bounded(daemon_factory):
    d = daemon_factory(top_settings="shutdown_grace = 1.0\n")
    with open(d.files / "big.img", "wb") as f:
        f.truncate(256 * 1024 * 1024)
    d.start()
    s = socket.create_connection(("127.0.0.1", d.http_port))
    s.sendall(b"GET /files/big.img HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(1024)  # headers arrived; now stall: never read again
    os.kill(d.proc.pid, signal.SIGTERM)
    # exits although the client never reads: the grace period, not the client, decides
    assert d.proc.wait(20) == 0
    assert "grace period over, closing transfers" in d.log()
    s.close()
