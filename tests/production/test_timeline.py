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
import httpx
import pytest
import tftpy

from netbootd.tftp import codec
from tests.conftest import wait_for
from tests.helpers import captured_udp, need_capture, request_4011
from tests.limits.conftest import metric

MAC = "52:54:00:77:00:10"


def _edk2_size_probe() -> tuple[bytes, bytes]:
    """OVMF's first TFTP request (tsize 0, blksize 1468, windowsize 4) and the ERROR it answers
    the OACK with (code 8 "User aborted the transfer"), byte for byte from the capture."""
    udp = list(captured_udp())
    rrq = next(u for u in udp if u.dport == 69)
    error = next(u for u in udp if u.sport == rrq.sport and u.dport != 69)
    assert codec.parse(bytes(error.data)) == codec.Error(codec.ERR_OPTIONS, "User aborted the transfer")
    return bytes(rrq.data), bytes(error.data)


def _dhcp_4011(daemon, mac: str = MAC, source: str = "127.0.0.1") -> None:
    """EDK2's 4011 REQUEST from `source`: the daemon learns that `mac` is at `source`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((source, 0))
        s.sendto(request_4011(mac), ("127.0.0.1", daemon.proxy_port))
        reply = dpkt.dhcp.DHCP(s.recvfrom(2048)[0])
    assert reply.chaddr == bytes.fromhex(mac.replace(":", ""))


def _get_from(daemon, source: str, path: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        return client.get(daemon.url + path)


def _machine_with(daemon, mac: str, events: int) -> dict:
    """/machines/<mac> once it has `events` events (TFTP transfers are reported as they end)."""

    def doc():
        r = daemon.ui_get(f"/machines/{mac}")
        return r.json() if r.status_code == 200 and len(r.json()["events"]) >= events else None

    return wait_for(doc, timeout=10)


def _tftp_get(daemon, name: str, out: Path, source: str = "127.0.0.1") -> None:
    tftpy.TftpClient("127.0.0.1", daemon.tftp_port, localip=source).download(name, str(out), timeout=5)


def _daemon(daemon_factory, extra_settings: str = ""):
    need_capture()
    if not Path("/usr/lib/ipxe/snponly.efi").exists():
        pytest.skip("Debian's ipxe package is not installed (/usr/lib/ipxe/snponly.efi)")
    d = daemon_factory(dhcp=True, tftp=True, top_settings='advertise = "127.0.0.1"\n', extra_settings=extra_settings)
    (d.files / "vmlinuz").write_bytes(b"k" * 300_000)
    (d.machines / "52-54-00-77-00-10.toml").write_text(
        '[vars]\nhostname = "t1"\n[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 host={{ hostname }}"\n'
    )
    return d


@pytest.fixture
def daemon(daemon_factory):
    return _daemon(daemon_factory).start("--log-format", "json")


def test_timeline_of_a_scripted_boot(daemon, tmp_path):
    # 1. DHCP: EDK2's 4011 REQUEST, answered unicast to us
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(request_4011(MAC), ("127.0.0.1", daemon.proxy_port))
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
        doc = daemon.ui_get(f"/machines/{MAC}").json()
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

    doc = daemon.ui_get("/machines").json()
    assert [m["mac"] for m in doc["machines"]] == [MAC]
    assert doc["unattributed"] == []  # every request here came from the machine's own address
    assert daemon.ui_get("/machines/52-54-00-99-99-99").status_code == 404
    # none of it on the boot network's port: a 404 that names where it is
    for path in ("/machines", f"/machines/{MAC}"):
        r = daemon.get(path)
        assert r.status_code == 404 and f"ui.listen (127.0.0.1:{daemon.ui_port})" in r.text, r.text
        assert MAC not in r.text
    metrics = daemon.get("/metrics").text
    assert "netbootd_boot_duration_seconds_count 1.0" in metrics

    # the terminal view: `status` reads ui.listen from the configuration
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", "--config", str(daemon.config)],
                         capture_output=True, text=True, check=True).stdout
    assert MAC in out and "beacon:loaded" in out and out.endswith("\nunattributed: none\n"), out
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", MAC, "--url", daemon.ui_url],
                         capture_output=True, text=True, check=True).stdout
    for stage in ("dhcp", "tftp", "script", "http", "beacon"):
        assert f" {stage} " in out, out

    # every JSON log line about this machine carries its MAC
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    about = [r for r in records if r.get("msg") in ("answered", "script sent", "boot progress")]
    assert len(about) >= 3 and all(r.get("mac") == MAC for r in about), about
    tftp_lines = [r for r in records if r.get("component") == "tftp" and "file" in r]
    assert tftp_lines and all(r.get("mac") == MAC for r in tftp_lines), tftp_lines


def test_edk2_size_probe_is_a_normal_step(daemon_factory, tmp_path):
    """OVMF asks for its NBP with tsize, reads the size from the OACK and aborts (ERROR 8), then
    asks again: replayed byte for byte from the capture, then the real download (tftpy), then a
    client that really fails mid-transfer (after ACK 0), which stays an error."""
    daemon = _daemon(daemon_factory, '[log]\nlevel = "debug"\n').start("--log-format", "json")
    _dhcp_4011(daemon)
    size = Path("/usr/lib/ipxe/snponly.efi").stat().st_size
    probe, abort = _edk2_size_probe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(probe, ("127.0.0.1", daemon.tftp_port))
        data, addr = s.recvfrom(2048)
        assert codec.parse(data) == codec.OptionAck({"tsize": str(size), "blksize": "1468", "windowsize": "4"})
        s.sendto(abort, addr)
    _tftp_get(daemon, "snponly.efi", tmp_path / "snp.efi")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(codec.encode_request("snponly.efi", "octet", {"tsize": 0, "blksize": 1468}), ("127.0.0.1", daemon.tftp_port))
        data, addr = s.recvfrom(2048)
        assert isinstance(codec.parse(data), codec.OptionAck)
        s.sendto(codec.encode_ack(0), addr)
        assert codec.parse(s.recvfrom(2048)[0]) == codec.Data(1, 1468)
        s.sendto(codec.encode_error(codec.ERR_DISK_FULL, "no room for it"), addr)

    doc = _machine_with(daemon, MAC, events=4)
    _dhcp, probed, whole, failed = doc["events"]
    assert [e["stage"] for e in doc["events"]] == ["dhcp", "tftp", "tftp", "tftp"]
    assert probed["probe"] is True and probed["file"] == "snponly.efi" and "error" not in probed, probed
    assert whole["bytes"] == size and "error" not in whole and "probe" not in whole
    assert failed["error"] == "client_error: 3 no room for it", failed
    assert doc["stage"] == "tftp"

    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    ends = ("tftp size probe answered", "tftp transfer completed", "tftp transfer ended", "tftp transfer failed")
    tftp = [r for r in records if r.get("msg") in ends]
    assert [(r["level"], r["msg"]) for r in tftp] == [
        ("debug", "tftp size probe answered"), ("info", "tftp transfer completed"), ("warn", "tftp transfer failed")
    ], tftp
    assert tftp[0]["outcome"] == "size_probe" and tftp[0]["mac"] == MAC and tftp[0]["sent"] == 0
    assert tftp[2]["reason"] == "client_error"
    assert metric(daemon, "netbootd_tftp_size_probes_total") == 1
    assert metric(daemon, "netbootd_tftp_transfers_failed_total", reason="aborted_after_oack") == 0
    assert metric(daemon, "netbootd_tftp_transfers_failed_total", reason="client_error") == 1
    assert metric(daemon, "netbootd_tftp_transfers_completed_total") == 1
    assert metric(daemon, "netbootd_tftp_transfers_started_total") == 3  # = completed + size probes + failed


def test_attribution_and_unattributed_events(daemon_factory, tmp_path):
    """Each request from its own loopback address (127.0.0.0/8 is all local): filed by the MAC it
    carries, by the address a machine claimed, or listed as unattributed with the reason."""
    d = _daemon(daemon_factory, 'root = "tftp"\n')
    (d.machines / "default.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    per_mac = d.root / "tftp" / "52-54-00-77-00-32"
    per_mac.mkdir(parents=True)
    (per_mac / "ipxe.efi").write_bytes(b"i" * 5000)
    (d.root / "tftp" / "grub" / "machines").mkdir(parents=True)
    (d.root / "tftp" / "grub" / "machines" / "52:54:00:77:00:33.cfg").write_text("linux /vmlinuz\n")
    daemon = d.start("--log-format", "json")

    # the MAC in the script URL, no DHCP seen
    assert _get_from(daemon, "127.0.0.31", "/ipxe?mac=52-54-00-77-00-31&arch=efi64").status_code == 200
    # the MAC in a per-machine TFTP path (dash form, GRUB's colon form), from an address nobody claimed
    _tftp_get(daemon, "52-54-00-77-00-32/ipxe.efi", tmp_path / "a", source="127.0.0.32")
    _tftp_get(daemon, "/grub/machines/52:54:00:77:00:33.cfg", tmp_path / "b", source="127.0.0.32")
    # by the address DHCP revealed
    _dhcp_4011(daemon, "52:54:00:77:00:34", "127.0.0.34")
    _tftp_get(daemon, "snponly.efi", tmp_path / "c", source="127.0.0.34")
    # an address nobody claimed: unattributed
    assert _get_from(daemon, "127.0.0.35", "/files/vmlinuz").status_code == 200
    # an address two machines claimed: unattributed
    _dhcp_4011(daemon, "52:54:00:77:00:36", "127.0.0.36")
    _dhcp_4011(daemon, "52:54:00:77:00:37", "127.0.0.36")
    _tftp_get(daemon, "snponly.efi", tmp_path / "d", source="127.0.0.36")
    # a TFTP transfer of .34 that began before its beacon and ends after it (its report comes late)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind(("127.0.0.34", 0))
        s.sendto(codec.encode_request("snponly.efi", "octet", {}), ("127.0.0.1", daemon.tftp_port))
        data, addr = s.recvfrom(2048)
        assert codec.parse(data) == codec.Data(1, 512)
        assert _get_from(daemon, "127.0.0.34", "/beacon?mac=52-54-00-77-00-34&stage=loaded").status_code == 200
        while len(data) == 4 + 512:
            s.sendto(codec.encode_ack(codec.parse(data).block), addr)
            data = s.recvfrom(2048)[0]
        s.sendto(codec.encode_ack(codec.parse(data).block), addr)

    m31 = _machine_with(daemon, "52:54:00:77:00:31", 1)
    assert m31["stage"] == "script" and m31["ip"] == "127.0.0.31"
    m32 = _machine_with(daemon, "52:54:00:77:00:32", 1)
    assert [e["file"] for e in m32["events"]] == ["52-54-00-77-00-32/ipxe.efi"] and m32["stage"] == "tftp"
    m33 = _machine_with(daemon, "52:54:00:77:00:33", 1)
    assert [e["file"] for e in m33["events"]] == ["/grub/machines/52:54:00:77:00:33.cfg"]
    m34 = _machine_with(daemon, "52:54:00:77:00:34", 4)
    assert [e["stage"] for e in m34["events"]] == ["dhcp", "tftp", "beacon", "tftp"]
    assert m34["stage"] == "beacon:loaded", m34  # the late TFTP report did not move it back
    assert m34["events"][-1]["bytes"] == Path("/usr/lib/ipxe/snponly.efi").stat().st_size
    for mac in ("52:54:00:77:00:36", "52:54:00:77:00:37"):
        assert [e["stage"] for e in _machine_with(daemon, mac, 1)["events"]] == ["dhcp"]

    unattributed = wait_for(lambda: len(u := daemon.ui_get("/machines").json()["unattributed"]) >= 2 and u, timeout=10)
    assert [(e["stage"], e["ip"]) for e in unattributed] == [("http", "127.0.0.35"), ("tftp", "127.0.0.36")]
    http, tftp = unattributed
    assert http["path"] == "/files/vmlinuz" and http["bytes"] == 300_000 and "no machine claimed" in http["why"]
    assert tftp["file"] == "snponly.efi" and tftp["why"] == (
        "ambiguous: claimed by both 52:54:00:77:00:36 and 52:54:00:77:00:37"
    )

    out = subprocess.run([sys.executable, "-m", "netbootd", "status", "--url", daemon.ui_url],
                         capture_output=True, text=True, check=True).stdout
    table, section = out.split("\nunattributed: ")
    assert "52:54:00:77:00:34" in table and "beacon:loaded" in table
    assert section.startswith("2 event(s)"), out
    lines = section.splitlines()[1:]
    assert "127.0.0.35" in lines[0] and "path=/files/vmlinuz" in lines[0] and "no machine claimed" in lines[0]
    assert "127.0.0.36" in lines[1] and "file=snponly.efi" in lines[1] and "ambiguous" in lines[1]


def test_status_without_a_daemon():
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "cannot reach http://127.0.0.1:9" in out.stderr and "is netbootd running" in out.stderr
