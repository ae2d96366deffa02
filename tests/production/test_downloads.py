"""What a machine fetched, by name, and what it asked for that was not there: a real daemon, its
downloads with httpx, then /machines, `netbootd status MAC`, the dashboard's row and the log."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from netbootd.config.machines import Catalog
from netbootd.testing.results import stage_names
from netbootd.ui.fleet import machine_row
from tests.conftest import wait_for

MAC = "52:54:00:77:00:24"
DASHED = MAC.replace(":", "-")
SOURCE = "127.0.0.24"  # the machine's own address (its script fetch names it)


def _get(daemon, path: str, source: str = SOURCE) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        return client.get(daemon.url + path)


def _events(daemon, count: int) -> list[dict]:
    def doc():
        r = daemon.ui_get(f"/machines/{MAC}")
        return r.json()["events"] if r.status_code == 200 and len(r.json()["events"]) >= count else None

    return wait_for(doc, timeout=10)


@pytest.fixture
def daemon(daemon_factory):
    d = daemon_factory()
    for rel in ("vmlinuz", "initrd.img", "firmware.img", "rootfs.squashfs", "d-i/preseed.cfg"):
        (d.files / rel).parent.mkdir(parents=True, exist_ok=True)
        (d.files / rel).write_bytes(rel.encode() * 100)
    (d.machines / f"{DASHED}.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img", "firmware.img"]\n'
        "cmdline = 'root=live:{{ file(\"rootfs.squashfs\") }} url={{ file(\"d-i/preseed.cfg\") }} console=ttyS0'\n")
    return d.start("--log-format", "json")


def test_downloads_are_named_by_what_they_are(daemon):
    script = _get(daemon, f"/ipxe?mac={DASHED}&arch=efi64")
    assert script.status_code == 200 and "/files/rootfs.squashfs" in script.text
    for rel in ("vmlinuz", "initrd.img", "firmware.img", "rootfs.squashfs", "d-i/preseed.cfg"):
        assert _get(daemon, f"/files/{rel}").status_code == 200
    events = _events(daemon, 6)
    downloads = [e for e in events if e["stage"] == "http"]
    assert [(e.get("role"), e.get("file")) for e in downloads] == [
        ("kernel", None), ("initrd", None), ("initrd", None), (None, "rootfs.squashfs"), (None, "d-i/preseed.cfg")]
    # the stage and its rank are as before: every download is an `http` event
    assert daemon.ui_get(f"/machines/{MAC}").json()["stage"] == "http"
    assert stage_names(events) == ["script", "kernel", "initrd", "initrd2", "rootfs.squashfs", "preseed.cfg"]
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", MAC, "--url", daemon.ui_url],
                         capture_output=True, text=True, check=True).stdout
    for name in ("kernel  path=/files/vmlinuz", "initrd  path=/files/firmware.img",
                 "rootfs.squashfs  path=/files/rootfs.squashfs", "preseed.cfg  path=/files/d-i/preseed.cfg"):
        assert name in out, out


def test_a_missing_file_is_in_the_timeline_the_row_and_the_log(daemon):
    assert _get(daemon, f"/ipxe?mac={DASHED}&arch=efi64").status_code == 200
    assert _get(daemon, "/files/vmlinuz").status_code == 200
    missing = _get(daemon, "/files/d-i/nosuch.cfg")
    assert missing.status_code == 404
    events = _events(daemon, 3)
    last = events[-1]
    assert last["stage"] == "http" and last["status"] == 404 and last["path"] == "/files/d-i/nosuch.cfg"
    assert last["error"] == "not found" and last["ip"] == SOURCE
    assert stage_names(events)[-1] == "missing:nosuch.cfg"
    # the dashboard's row: an error, and the boot failed there
    doc = daemon.ui_get(f"/machines/{MAC}").json()
    row = machine_row(MAC, doc, Catalog())
    assert row is not None and row["state"] == "failed" and row["error"] == "http: not found: /files/d-i/nosuch.cfg"
    out = subprocess.run([sys.executable, "-m", "netbootd", "status", MAC, "--url", daemon.ui_url],
                         capture_output=True, text=True, check=True).stdout
    assert "MISSING  path=/files/d-i/nosuch.cfg status=404 error=not found" in out, out
    # a missing file under /boot, from an address nobody claimed but naming the machine in its path
    assert _get(daemon, f"/files/{DASHED}/grub.cfg", source="127.0.0.99").status_code == 404
    assert _get(daemon, "/boot/nosuch.efi").status_code == 404
    events = _events(daemon, 5)
    assert [(e["path"], e.get("ip")) for e in events[-2:]] == [
        (f"/files/{DASHED}/grub.cfg", "127.0.0.99"), ("/boot/nosuch.efi", SOURCE)]

    # a client probing many paths: every one in the timeline (bounded), a few lines in the log
    for i in range(30):
        assert _get(daemon, f"/files/probe/{i}").status_code == 404
    assert _get(daemon, "/files/last", source="127.0.0.98").status_code == 404  # logged after all the above

    def lines():
        records = [json.loads(x) for x in daemon.log().splitlines() if x.startswith("{")]
        found = [r for r in records if r.get("msg") == "file not found"]
        return found if any(r.get("path") == "/files/last" for r in found) else None

    found = wait_for(lines, timeout=10)
    first = next(r for r in found if r["path"] == "/files/d-i/nosuch.cfg")
    assert first["mac"] == MAC and first["machine"] == DASHED and first["client"] == SOURCE
    assert first["level"] in ("info", "warn", "warning"), first
    from_source = [r for r in found if r["client"] == SOURCE]
    assert len(from_source) == 5, from_source  # the first few a minute per client, then silence


def test_a_missing_file_from_nobody_is_unattributed(daemon):
    assert _get(daemon, "/files/nosuch", source="127.0.0.77").status_code == 404
    doc = wait_for(lambda: daemon.ui_get("/machines").json()["unattributed"] or None, timeout=10)
    assert doc[-1]["path"] == "/files/nosuch" and doc[-1]["status"] == 404 and doc[-1]["ip"] == "127.0.0.77"
