"""The boot timeline after a scripted DHCP → TFTP → HTTP sequence against a real daemon.

The DHCP packet is EDK2's real 4011 REQUEST from ../shared/captures, sent from loopback; the
TFTP download is done by tftpy's client; HTTP by httpx. Then /machines and `netbootd status`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
import tftpy

from tests.conftest import SHARED, wait_for

CAPTURE = SHARED / "captures" / "proxy-uefi-edk2-pxe.pcap"
MAC = "52:54:00:77:00:10"


def _edk2_4011_request() -> bytes:
    with open(CAPTURE, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(frame).data.data
            if isinstance(udp, dpkt.udp.UDP) and udp.dport == 4011:
                return bytes(udp.data)
    raise AssertionError("no 4011 request in the capture")


@pytest.fixture
def daemon(daemon_factory):
    if not CAPTURE.exists():
        pytest.skip(f"captures not found at {CAPTURE} (the repo expects ../shared beside it)")
    if not Path("/usr/lib/ipxe/snponly.efi").exists():
        pytest.skip("Debian's ipxe package is not installed (/usr/lib/ipxe/snponly.efi)")
    d = daemon_factory(dhcp=True, tftp=True, top_settings='advertise = "127.0.0.1"\n')
    (d.files / "vmlinuz").write_bytes(b"k" * 300_000)
    (d.machines / "52-54-00-77-00-10.toml").write_text(
        '[vars]\nhostname = "t1"\n[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 host={{ hostname }}"\n'
    )
    return d.start("--log-format", "json")


def test_timeline_of_a_scripted_boot(daemon, tmp_path):
    # 1. DHCP: EDK2's 4011 REQUEST, answered unicast to us
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(_edk2_4011_request(), ("127.0.0.1", daemon.proxy_port))
        reply = dpkt.dhcp.DHCP(s.recvfrom(2048)[0])
    assert reply.file.rstrip(b"\0") == b"snponly.efi"
    # 2. TFTP: the file it was told to fetch
    tftpy.TftpClient("127.0.0.1", daemon.tftp_port).download("snponly.efi", str(tmp_path / "snp.efi"), timeout=5)
    # 3. HTTP: its script, its kernel, then the beacon its script calls
    script = daemon.get("/ipxe?mac=52-54-00-77-00-10&arch=efi64").text
    assert "host=t1" in script
    assert daemon.get("/files/vmlinuz").status_code == 200
    assert daemon.get("/beacon?mac=52-54-00-77-00-10&stage=loaded").status_code == 200

    def timeline():
        doc = daemon.get(f"/machines/{MAC}").json()
        return doc if len(doc["events"]) >= 5 else None

    doc = wait_for(timeline)
    stages = [e["stage"] for e in doc["events"]]
    assert stages == ["dhcp", "tftp", "script", "http", "beacon"], doc
    dhcp, tftp, script_ev, http, beacon = doc["events"]
    assert dhcp["port"] == daemon.proxy_port and dhcp["offered"] == "tftp snponly.efi" and dhcp["firmware"] == "efi-pxe"
    assert tftp["file"] == "snponly.efi" and tftp["bytes"] == (tmp_path / "snp.efi").stat().st_size and "error" not in tftp
    assert script_ev["arch"] == "efi64"
    assert http["path"] == "/files/vmlinuz" and http["bytes"] == 300_000
    assert beacon["beacon"] == "loaded" and beacon["since_dhcp"] >= 0
    times = [e["time"] for e in doc["events"]]
    assert times == sorted(times)
    assert doc["ip"] == "127.0.0.1" and doc["stage"] == "beacon:loaded"

    listing = daemon.get("/machines").json()["machines"]
    assert [m["mac"] for m in listing] == [MAC]
    assert daemon.get("/machines/52-54-00-99-99-99").status_code == 404
    metrics = daemon.get("/metrics").text
    assert "netbootd_boot_duration_seconds_count 1.0" in metrics

    # the terminal view
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", "--url", daemon.url],
                         capture_output=True, text=True, check=True).stdout
    assert MAC in out and "beacon:loaded" in out
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", MAC, "--url", daemon.url],
                         capture_output=True, text=True, check=True).stdout
    for stage in ("dhcp", "tftp", "script", "http", "beacon"):
        assert f" {stage} " in out, out

    # every JSON log line about this machine carries its MAC
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    about = [r for r in records if r.get("msg") in ("answered", "script sent", "boot progress")]
    assert len(about) >= 3 and all(r.get("mac") == MAC for r in about), about
    tftp_lines = [r for r in records if r.get("component") == "tftp" and "file" in r]
    assert tftp_lines and all(r.get("mac") == MAC for r in tftp_lines), tftp_lines


def test_status_without_a_daemon():
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "cannot reach http://127.0.0.1:9" in out.stderr and "is netbootd running" in out.stderr
