"""`netbootd try`'s first line, before any lab: what the configuration offers the machine, with the
URLs the lab's netbootd will serve (its HTTP port, not the configuration's); and its download lines."""

from __future__ import annotations

import pytest

from netbootd.testing import progress
from netbootd.testing.lab import BOOT_IP, HTTP_PORT
from netbootd.testing.tryboot import Refused, preflight

MAC = "52:54:00:88:00:01"


@pytest.fixture
def config(tmp_path):
    (tmp_path / "machines").mkdir()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\n[http]\nport = 80\n')
    (tmp_path / "machines" / "52-54-00-88-00-01.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    (tmp_path / "machines" / "52-54-00-88-00-04.toml").write_text("[boot]\nignore = true\n")
    return str(tmp_path)


def test_the_header_names_the_lab_port(config):
    line = preflight(config, MAC, "uefi-http", BOOT_IP, HTTP_PORT)
    assert f"http-efi http://{BOOT_IP}:{HTTP_PORT}/boot/snponly.efi" in line, line
    assert f"http://{BOOT_IP}/" not in line, line
    # without the lab's port: the configuration's (80, left out of a URL)
    assert f"http-efi http://{BOOT_IP}/boot/snponly.efi" in preflight(config, MAC, "uefi-http", BOOT_IP)


def test_an_ignored_machine_is_refused(config):
    with pytest.raises(Refused, match=r"boot\.ignore = true"):
        preflight(config, "52:54:00:88:00:04", "uefi", BOOT_IP, HTTP_PORT)


def test_the_site_servers_lease_is_a_normal_step():
    from netbootd.dhcp.answer import SITE_REQUEST
    from netbootd.testing.tryboot import step

    request = {"stage": "dhcp", "port": 67, "firmware": "bios-pxe", "arch": "bios", "answered": False,
               "reason": f"{SITE_REQUEST} (server id 10.77.0.1)", "mac": MAC, "time": 0.0}
    line = step(request)
    assert line.startswith("the firmware takes its address from the site's DHCP server (10.77.0.1): normal"), line
    assert "answered=False" not in line and "firmware=bios-pxe" in line
    # a real refusal still reads as one
    refused = {**request, "reason": "held: machines/x.toml:1: broken"}
    assert "answered=False" in step(refused) and "held: " in step(refused)


def test_progress_lines_say_size_share_and_rate():
    """try's download lines (tests/integration/test_debian_installer.py shows them on a real download)."""
    running = {"path": "/host/usr/lib/x/initrd.gz", "sent": 12_000_000, "total": 32_100_000, "seconds": 2.0}
    assert progress.running_line(running) == "initrd.gz  12.0/32.1 MB  (37%)  6.0 MB/s"
    assert progress.running_line({**running, "total": None}) == "initrd.gz  12.0 MB  6.0 MB/s"
    layer = {"path": "/image?imageName=ghcr.io/org/os&layerName=application/vnd.ironcore.image.squashfs",
             "bytes": 45_000_000, "seconds": 1.5, "mbps": 30.0}
    assert progress.done_line(layer) == "squashfs  45.0 MB in 1.50 s (30.0 MB/s)"
    assert progress.done_line({"path": "/files/d-i/preseed.cfg", "bytes": 2036, "seconds": 0.001, "mbps": 2.0}) == \
        "preseed.cfg  2.0 kB in 0.00 s (2.0 MB/s)"
    said: list[str] = []
    now = [0.0]
    lines = progress.ProgressLines(said.append, clock=lambda: now[0])
    for t in (0.0, 0.5, 1.0, 1.5, 3.0, 3.5):
        now[0] = t
        lines.update([{**running, "seconds": t}])
    assert len(said) == 2  # not before a second has passed, then every two seconds
