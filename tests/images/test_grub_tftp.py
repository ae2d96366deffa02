"""GRUB has no HTTP: a GRUB machine's kernel and initrds come over TFTP whatever their source. A real
daemon serves them from an OCI image in a real registry (docker-registry on loopback) and from a
remote URL (an HTTP server on loopback), fetched into netbootd's cache first; tftpy is the client."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest
import tftpy

from tests.images import harness as h
from tests.images.conftest import registry_settings

KERNEL, INITRD = b"K" * 300_000 + b"kernel-end", b"I" * 700_000 + b"initrd-end"
IMAGE_MAC, URL_MAC, BAD_MAC = "52-54-00-99-00-11", "52-54-00-99-00-12", "52-54-00-99-00-13"


class Files(http.server.SimpleHTTPRequestHandler):
    gets: list[str] = []

    def do_GET(self):
        Files.gets.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    (root / "vmlinuz").write_bytes(KERNEL)
    Files.gets = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch(daemon, name: str, dest: Path) -> bytes:
    tftpy.TftpClient("127.0.0.1", daemon.tftp_port, options={"blksize": 1024}).download(name, str(dest), timeout=10)
    return dest.read_bytes()


def test_kernel_and_initrd_over_tftp_from_an_image_and_a_url(fresh_registry, daemon_factory, web, tmp_path):
    push = h.Pusher(fresh_registry.url)
    push.image("boot/os", "v1", [(h.KERNEL, KERNEL), (h.INITRAMFS, INITRD)])
    push.close()
    d = daemon_factory(tftp=True, extra_settings=registry_settings(fresh_registry.host))
    (d.machines / f"{IMAGE_MAC}.toml").write_text(
        f'loader = "grub"\n[boot]\nimage = "{fresh_registry.host}/boot/os:v1"\ncmdline = "console=ttyS0"\n')
    (d.machines / f"{URL_MAC}.toml").write_text(
        f'loader = "grub"\n[boot]\nkernel = "{web}/vmlinuz"\ncmdline = "console=ttyS0"\n')
    (d.machines / f"{BAD_MAC}.toml").write_text(
        f'loader = "grub"\n[boot]\nkernel = "{web}/missing"\ncmdline = "console=ttyS0"\n')
    d.start()

    # the image machine: grub.cfg (which starts the fetches), then kernel and initrd from the layers
    cfg = fetch(d, f"/grub/machines/{IMAGE_MAC.replace('-', ':')}.cfg", tmp_path / "cfg").decode()
    assert f"linux /grub/m/{IMAGE_MAC}/${{grub_cpu}}/kernel 'console=ttyS0'" in cfg
    assert f"initrd /grub/m/{IMAGE_MAC}/${{grub_cpu}}/initrd0" in cfg
    assert fetch(d, f"/grub/m/{IMAGE_MAC}/x86_64/kernel", tmp_path / "k") == KERNEL
    assert fetch(d, f"/grub/m/{IMAGE_MAC}/x86_64/initrd0", tmp_path / "i") == INITRD
    for layer in (KERNEL, INITRD):
        assert len([x for x in fresh_registry.access("GET", f"/blobs/{h.sha256(layer)}") if '" 200 ' in x]) == 1

    # the URL machine: downloaded once, then from the cache
    assert fetch(d, f"/grub/m/{URL_MAC}/x86_64/kernel", tmp_path / "u1") == KERNEL
    assert fetch(d, f"/grub/m/{URL_MAC}/x86_64/kernel", tmp_path / "u2") == KERNEL
    assert Files.gets == ["/vmlinuz"]

    # a URL that is not there: a TFTP error saying so, at once, and a log line for the operator
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # raw: tftpy drops the message of error code 0
        s.settimeout(10)
        s.sendto(b"\x00\x01" + f"/grub/m/{BAD_MAC}/x86_64/kernel".encode() + b"\x00octet\x00", ("127.0.0.1", d.tftp_port))
        reply = s.recvfrom(2048)[0]
    assert reply[:2] == b"\x00\x05" and b"fetch failed: " in reply and b"/missing: 404" in reply, reply
    assert "tftp file could not be fetched" in d.log() and "/missing: 404" in d.log()
    # the timeline files each transfer under its machine (the MAC is in the path)
    events = d.ui_get(f"/machines/{IMAGE_MAC}").json()["events"]
    assert [e["file"] for e in events if e["stage"] == "tftp"][-2:] == [
        f"/grub/m/{IMAGE_MAC}/x86_64/kernel", f"/grub/m/{IMAGE_MAC}/x86_64/initrd0"]
