"""HTTP and TFTP answer on IPv6 beside IPv4 (separate sockets, so an IPv4 client is never a
v4-mapped IPv6 one), with real clients (curl) on ::1 and 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.helpers import ipv6_loopback


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_http_and_tftp_on_both_families(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is missing")
    (tmp_path / "machines").mkdir()
    (tmp_path / "tftp").mkdir()
    (tmp_path / "tftp" / "hello.bin").write_bytes(b"x" * 5000)
    (tmp_path / "machines" / "52-54-00-00-00-61.toml").write_text('[boot]\nchain = "http://x.example/"\n')
    http, tftp, ui = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    (tmp_path / "netbootd.toml").write_text(textwrap.dedent(f"""
        machines_dir = "machines"
        state_dir = "state"
        cache_dir = "cache"
        [http]
        port = {http}
        [tftp]
        port = {tftp}
        root = "tftp"
        [dhcp]
        enabled = false
        [ui]
        listen = "127.0.0.1:{ui}"
        """))
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "netbootd", "serve", "--config", str(tmp_path / "netbootd.toml")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                return httpx.get(f"http://[::1]:{http}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=20)
        for host in ("127.0.0.1", "[::1]"):
            out = subprocess.run(["curl", "-sfg", f"http://{host}:{http}/ipxe?mac=52-54-00-00-00-61&arch=efi64"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and "chain --replace --autofree http://x.example/" in out.stdout, out
            got = subprocess.run(["curl", "-sfg", "--tftp-blksize", "1400", f"tftp://{host}:{tftp}/hello.bin"],
                                 capture_output=True, timeout=30)
            assert got.returncode == 0 and got.stdout == b"x" * 5000, got
        # the stub's chain URL names the address family the client used
        stub = httpx.get(f"http://[::1]:{http}/ipxe", timeout=5).text
        assert f"chain --replace --autofree http://[::1]:{http}/ipxe?mac=" in stub
        # each family's client is itself: the script event of the IPv6 request carries ::1
        events = httpx.get(f"http://127.0.0.1:{ui}/machines/52-54-00-00-00-61", timeout=5).json()["events"]
        assert {e["ip"] for e in events if e["stage"] == "script"} == {"127.0.0.1", "::1"}, events
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        time.sleep(0.1)
