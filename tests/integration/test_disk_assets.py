"""The provisioning tests' disk and installer (assets.sh) on their own, without netbootd.

- The test disk (`disk.img.gz`) boots by itself, with no network: SeaBIOS → syslinux, OVMF →
  systemd-boot, and on arm64 AAVMF → systemd-boot. Its own system (the Debian kernel and an
  initramfs of the disk's own) prints `NETBOOTD-DISK-OK firmware=<bios|uefi> disk_marker=<its
  boot entry's>` and powers off.
- The installer (the guest's /init with `nbd_install=` on its command line), direct-kernel-booted
  against a small HTTP server of this test's own inside a network namespace (dnsmasq gives the
  address): it writes the image to an empty virtio disk byte for byte, reports to `nbd_done=` (which
  answers 503 first: it tries again) and reboots. Asked to fail (`nbd_fail=1`), or given an image
  that is not there, it reports the reason to `nbd_failed=` instead and reboots.

The URLs carry `&` and `=` in their queries, as netbootd's signed URLs do. When the disk cannot be
built (assets.sh names the packages) these tests skip; under CI=true they fail.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import attrs
import pytest

from netbootd.testing.firmware import AAVMF_CODE, AAVMF_VARS, OVMF_CODE, OVMF_VARS, accelerator
from netbootd.testing.lab import missing_requirements
from netbootd.testing.netns import Proc, Topology, enter_netns

from .conftest import ASSETS, ASSETS_SCRIPT

pytestmark = pytest.mark.integration

DISK_OK = re.compile(r"NETBOOTD-DISK-OK firmware=(?P<firmware>\S+) disk_marker=(?P<marker>\S*)")
INSTALL_DONE = re.compile(r"NETBOOTD-INSTALL-DONE disk=(?P<disk>\S+)")
INSTALL_FAILED = re.compile(r"NETBOOTD-INSTALL-FAILED (?P<reason>.*?)\s*$", re.M)
BOOT_TIMEOUT = 120.0  # seconds, under TCG on a busy host (measured: 11-25 s)


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs what the disk tests need; they must not skip there)")
    pytest.skip(reason)


def disk_image(assets, arch_dir: Path, dest: Path) -> Path:
    """assets.sh's test disk for one architecture, unpacked into `dest` (a private copy to boot)."""
    packed = arch_dir / "disk.img.gz"
    why = arch_dir / "unavailable"
    if why.is_file():
        skip_or_fail(f"{ASSETS_SCRIPT} could not build the arm64 assets: {why.read_text().strip()}")
    if not packed.is_file():
        skip_or_fail(f"{packed} was not built: {ASSETS_SCRIPT} names the packages it needs "
                     "(fdisk, dosfstools, mtools, syslinux, syslinux-common, systemd-boot-efi)")
    with gzip.open(packed) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    size = int((arch_dir / "disk.img.size").read_text())
    assert dest.stat().st_size == size, "disk.img.size is not the unpacked image's size"
    return dest


def run_qemu(argv: list[str], log: Path, timeout: float = BOOT_TIMEOUT) -> str:
    """Run QEMU to its end (the guest powers off or reboots: -no-reboot); its console."""
    with open(log, "wb") as out:
        try:
            subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass  # the assertions show the console
    return log.read_bytes().decode(errors="replace")


def tail(console: str, lines: int = 30) -> str:
    return "\n".join(console.splitlines()[-lines:])


# ---------------------------------------------------------------------------------- the disk, alone


@attrs.frozen
class DiskBoot:
    qemu: str
    files: tuple[Path, ...]  # firmware files it needs
    firmware: str  # what the disk's system reports
    marker: str  # its boot entry's disk_marker=
    arm64: bool = False

    def argv(self, disk: Path, workdir: Path) -> list[str]:
        common = ["-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nic", "none",
                  "-drive", f"file={disk},if=virtio,format=raw"]
        if self.arm64:  # always TCG: an x86 host's KVM cannot run arm64 guests
            vars_copy = workdir / AAVMF_VARS.name
            shutil.copy(AAVMF_VARS, vars_copy)
            return [self.qemu, "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57", "-smp", "1", "-m", "1024",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}", *common]  # fmt: skip
        argv = [self.qemu, "-accel", accelerator(), "-m", "512"]
        if self.firmware == "bios":
            return [*argv, "-machine", "pc", *common]
        vars_copy = workdir / OVMF_VARS.name
        shutil.copy(OVMF_VARS, vars_copy)
        return [*argv, "-machine", "q35",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}", *common]  # fmt: skip


DISK_BOOTS = {
    "bios": DiskBoot("qemu-system-x86_64", (), "bios", "syslinux"),
    "uefi": DiskBoot("qemu-system-x86_64", (OVMF_CODE, OVMF_VARS), "uefi", "systemd-boot"),
    "arm64-uefi": DiskBoot("qemu-system-aarch64", (AAVMF_CODE, AAVMF_VARS), "uefi", "systemd-boot", arm64=True),
}


@pytest.mark.parametrize("name", DISK_BOOTS)
def test_disk_boots_by_itself(name, assets, tmp_path):
    """The test disk alone (no NIC at all) boots its own system on this firmware, whose marker names
    the firmware and the boot loader's entry."""
    kind = DISK_BOOTS[name]
    if shutil.which(kind.qemu) is None:
        skip_or_fail(f"{kind.qemu} is missing")
    absent = [str(p) for p in kind.files if not p.is_file()]
    if absent:
        skip_or_fail(f"{', '.join(absent)} missing (apt-get install {'qemu-efi-aarch64' if kind.arm64 else 'ovmf'})")
    disk = disk_image(assets, ASSETS / "arm64" if kind.arm64 else ASSETS, tmp_path / "disk.img")
    started = time.monotonic()
    console = run_qemu(kind.argv(disk, tmp_path), tmp_path / "console.log")
    found = DISK_OK.search(console)
    assert found, f"no NETBOOTD-DISK-OK within {time.monotonic() - started:.0f} s:\n{tail(console)}"
    assert (found["firmware"], found["marker"]) == (kind.firmware, kind.marker), found[0]
    assert "NETBOOT-OK" not in console, "the network guest ran, not the disk's own system"


# ---------------------------------------------------------------------------------- the installer

SERVER_IP = "10.79.0.1"
PORT = 8080
MAC = "52:54:00:79:00:01"
DISK_MIB = 128  # the machine's empty disk: larger than the image
# A query with `&` and `=` in it, as netbootd's signed URLs have.
QUERY = "?mac=52-54-00-79-00-01&sig=AbC=="


@attrs.define
class Request:
    method: str
    path: str
    body: str


class Server:
    """A small HTTP server inside the namespace: /files/disk.img.gz, /done (503 at first), /failed."""

    def __init__(self, ns_name: str, image: Path, done_503: int) -> None:
        self.image = image
        self.done_503 = done_503
        self.requests: list[Request] = []
        ready: list[BaseException | ThreadingHTTPServer] = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ns_name, ready, started), daemon=True)
        self.thread.start()
        started.wait(10)
        if not ready or isinstance(ready[0], BaseException):
            raise RuntimeError(f"the test's HTTP server did not start: {ready}")
        self.httpd: ThreadingHTTPServer = ready[0]

    def _run(self, ns_name: str, ready: list, started: threading.Event) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _record(self) -> str:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                server.requests.append(Request(self.command, self.path, body))
                return body

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._record()
                if self.path == f"/files/disk.img.gz{QUERY}":
                    self._answer(200, server.image.read_bytes())
                elif self.path == f"/files/truncated.img.gz{QUERY}":  # whole as HTTP goes, a cut gzip stream
                    image = server.image.read_bytes()
                    self._answer(200, image[: len(image) // 2])
                else:
                    self._answer(404, b"not found\n")

            def do_POST(self) -> None:
                self._record()
                if self.path.startswith("/done?") and server.done_503 > 0:
                    server.done_503 -= 1
                    self._answer(503, b"not yet\n")
                elif self.path in (f"/done{QUERY}", f"/failed{QUERY}"):
                    self._answer(200, b"ok\n")
                else:
                    self._answer(404, b"not found\n")

        try:
            enter_netns(ns_name)  # this thread only: the server's socket lives in the namespace
            httpd = ThreadingHTTPServer((SERVER_IP, PORT), Handler)
        except BaseException as exc:
            ready.append(exc)
            started.set()
            return
        ready.append(httpd)
        started.set()
        httpd.serve_forever(poll_interval=0.2)
        httpd.server_close()

    def calls(self, method: str, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.thread.join(10)


@attrs.define
class InstallLab:
    net: Topology
    root: Path
    image: Path  # disk.img.gz
    kernel: Path
    initrd: Path
    server: Server | None = None

    def serve(self, done_503: int = 0) -> Server:
        self.server = Server(self.net.name, self.image, done_503)
        return self.server

    def install(self, extra: str = "", image_path: str = "/files/disk.img.gz") -> tuple[str, Path]:
        """One direct-kernel boot of the installer onto an empty disk; its console and that disk."""
        disk = self.root / "machine-disk.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_MIB << 20)
        base = f"http://{SERVER_IP}:{PORT}"
        cmdline = (f"console=ttyS0 panic=-1 nbd_install={base}{image_path}{QUERY} nbd_done={base}/done{QUERY} "
                   f"nbd_failed={base}/failed{QUERY}{extra}")
        argv = [
            "qemu-system-x86_64", "-accel", accelerator(), "-m", "512", "-machine", "pc",
            "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", cmdline,
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
            "-drive", f"file={disk},if=virtio,format=raw",
        ]  # fmt: skip
        ns = self.net.namespaces[self.net.name]
        proc: Proc = ns.start("qemu", argv, self.root / "console.log")
        try:
            proc.popen.wait(BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.stop()
        return proc.text(), disk


@pytest.fixture
def install_lab(assets, tmp_path) -> Iterator[InstallLab]:
    """A namespace with a bridge (10.79.0.1/24), dnsmasq for the address, a tap for the machine."""
    reason = missing_requirements("bios")
    if reason:
        pytest.skip(reason)
    image = ASSETS / "disk.img.gz"
    if not image.is_file():
        skip_or_fail(f"{image} was not built: {ASSETS_SCRIPT} names the packages it needs")
    with Topology("nbdi") as net:
        ns = net.namespace()
        ns.bridge("br0")
        ns.address("br0", f"{SERVER_IP}/24")
        ns.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
        ns.ip("link", "set", "tap0", "master", "br0")
        ns.up("tap0")
        dnsmasq = ns.start("dnsmasq", [
            "dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--log-facility=-", "--port=0",
            "--bind-interfaces", "--interface=br0", "--except-interface=lo", f"--listen-address={SERVER_IP}",
            "--dhcp-authoritative", "--no-ping", "--dhcp-range=10.79.0.100,10.79.0.199,255.255.255.0,1h",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--user=root", "--group=root",
        ], tmp_path / "dnsmasq.log")  # fmt: skip
        dnsmasq.wait_for(r"\bstarted\b", 10)
        lab = InstallLab(net, tmp_path, image, assets.kernel, assets.initrd)
        try:
            yield lab
        finally:
            if lab.server is not None:
                lab.server.stop()


def test_installer_writes_the_image_reports_done_and_reboots(install_lab):
    """The image reaches the disk byte for byte; nbd_done= is called (its first 503 tried again),
    nbd_failed= never; the installer reboots (-no-reboot: QEMU exits)."""
    server = install_lab.serve(done_503=1)
    console, disk = install_lab.install()
    done = INSTALL_DONE.search(console)
    assert done, f"no NETBOOTD-INSTALL-DONE:\n{tail(console)}"
    assert done["disk"] == "/dev/vda"
    assert [r.path for r in server.calls("GET", "/files/")] == [f"/files/disk.img.gz{QUERY}"], server.requests
    dones = server.calls("POST", "/done")
    assert [r.path for r in dones] == [f"/done{QUERY}"] * 2, "the URL lost its query, or no retry after 503"
    assert parse_qs(dones[-1].body) == {"status": ["done"], "disk": ["/dev/vda"]}
    assert not server.calls("POST", "/failed"), server.requests
    with gzip.open(install_lab.image) as src, open(disk, "rb") as written:
        image = src.read()
        assert written.read(len(image)) == image, "the disk does not hold the image"


FAILURES = {
    # case: (extra command line, image path, what the reason says)
    "nbd_fail=1": (" nbd_fail=1", "/files/disk.img.gz", "asked to fail (nbd_fail=1)"),
    "missing image": ("", "/files/missing.img.gz", "wget: server returned error: HTTP/1.0 404 Not Found"),
    "truncated image": ("", "/files/truncated.img.gz", "gunzip: "),
}


@pytest.mark.parametrize("case", FAILURES)
def test_installer_failure_reports_failed_and_reboots(install_lab, case):
    """Asked to fail, the image not there (404), or cut short (gunzip fails, not wget): nbd_failed=
    gets the reason, nbd_done= is not called, the installer reboots; asked to fail, it writes nothing."""
    server = install_lab.serve()
    extra, image_path, expected = FAILURES[case]
    console, disk = install_lab.install(extra=extra, image_path=image_path)
    failed = INSTALL_FAILED.search(console)
    assert failed, f"no NETBOOTD-INSTALL-FAILED:\n{tail(console)}"
    assert expected in failed["reason"], failed[0]
    reports = server.calls("POST", "/failed")
    assert [r.path for r in reports] == [f"/failed{QUERY}"], server.requests
    reason = parse_qs(reports[0].body)["reason"][0]
    assert expected in reason and reason.strip() == failed["reason"], (reason, failed["reason"])
    assert not server.calls("POST", "/done"), server.requests
    if case == "nbd_fail=1":
        assert not server.calls("GET", "/files/"), "asked to fail, it downloaded the image anyway"
        with open(disk, "rb") as written:
            assert written.read(1 << 20) == bytes(1 << 20), "the disk was written"
