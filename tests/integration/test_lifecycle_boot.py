"""Provision once, then boot the disk, on real firmware: one VM with an empty disk and a
`[lifecycle] once = true` machine. Its installer (the test initramfs: nbd_install=) fetches a
bootable disk image from netbootd's files, writes it, calls its signed done URL and reboots; on
the next power-on netbootd answers with a local boot and the VM boots its disk, whose own system
prints NETBOOTD-DISK-OK (nothing netbootd serves prints it). Then `netbootd reprovision` makes the
same VM install again; an installer that reports failure does not loop.

SeaBIOS + iPXE, OVMF PXE and OVMF HTTP boot, and OVMF PXE with netbootd's GRUB loader, without and
with Secure Boot; each prints the seconds from the second power-on to the disk's own system. A GRUB
machine's local boot is GRUB chainloading the disk's EFI/BOOT/BOOTX64.EFI: under Secure Boot shim
verifies it, so the Secure Boot disk carries Debian's signed chain (shim as BOOTX64.EFI, GRUB,
kernel), and a disk whose loader is unsigned is refused (test_secure_boot_refuses_...).

GRUB machines need the lab where the site's DHCP server names netbootd as next-server: Debian's
signed GRUB asks that server for its grub.cfg (docs/firmware/secure-boot.md)."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ASSETS, ProjectLab, need

pytestmark = pytest.mark.integration

DISK_OK = r"NETBOOTD-DISK-OK firmware=\S+"
INSTALLER = """
{extra}
[lifecycle]
once = true
[boot]
kernel = "vmlinuz"
initrds = ["initrd.cpio.gz"]
cmdline = 'console=ttyS0 panic=-1 nbd_install={{{{ file("disk.img.gz") }}}} nbd_done={{{{ done_url }}}} nbd_failed={{{{ failed_url }}}}{fail}'
"""  # noqa: E501  (one TOML line: a literal string, so the template's quotes stay inside it)


# The Secure Boot disk's GRUB configuration (EFI/debian/grub.cfg: the prefix Debian's signed
# grubx64.efi has built in): the disk's own kernel and initramfs, as the disk's systemd-boot entry has them.
SIGNED_DISK_CFG = """set timeout=0
linux /vmlinuz console=ttyS0 panic=-1 disk_marker=shim-grub
initrd /initrd.gz
boot
"""


@pytest.fixture
def grub_lab(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """netbootd on its own host; the site's DHCP server names it as next-server (for Debian's GRUB)."""
    from .conftest import _lab

    yield from _lab(tmp_path, assets, request, host="own-host", site_next_server=True)


def disk_image(lab) -> None:
    """The bootable disk image the installer writes, in the lab's files."""
    image = ASSETS / "disk.img.gz"
    if not image.is_file():
        pytest.fail("no disk image: tests/integration/assets.sh builds disk.img.gz (fdisk, dosfstools, mtools, syslinux)")
    shutil.copy(image, lab.files / "disk.img.gz")


def unpacked_disk(lab) -> Path:
    """The test disk image, unpacked (raw) in the lab's directory."""
    disk_image(lab)
    raw = lab.root / "disk.img"
    with gzip.open(lab.files / "disk.img.gz") as packed, raw.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return raw


def signed_disk_image(lab) -> None:
    """The test disk as an installed Debian boots under Secure Boot, in the lab's files as
    disk.img.gz: its removable-media loader EFI/BOOT/BOOTX64.EFI is shim (Microsoft-signed), beside
    it Debian's signed GRUB (grubx64.efi, the disk one: grubnetx64 has no disk prefix), which boots
    the disk's kernel (Debian-signed). Its partition starts at 1 MiB (assets.sh): mtools' @@1M."""
    shim = lab.settings.grub.efi64_shim
    grub = lab.settings.grub.efi64_grub.with_name("grubx64.efi.signed")
    if shutil.which("mcopy") is None or not grub.is_file() or not shim.is_file():
        pytest.skip(f"the signed disk needs mtools, {shim} (shim-signed) and {grub} (grub-efi-amd64-signed)")
    raw = unpacked_disk(lab)
    cfg = lab.root / "grub.cfg"
    cfg.write_text(SIGNED_DISK_CFG)
    part = f"{raw}@@1M"
    for argv in (["mcopy", "-o", "-i", part, str(shim), "::/EFI/BOOT/BOOTX64.EFI"],
                 ["mcopy", "-o", "-i", part, str(grub), "::/EFI/BOOT/grubx64.efi"],
                 ["mmd", "-i", part, "::/EFI/debian"],
                 ["mcopy", "-o", "-i", part, str(cfg), "::/EFI/debian/grub.cfg"]):
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    with raw.open("rb") as image, gzip.open(lab.files / "disk.img.gz", "wb", compresslevel=1) as packed:
        shutil.copyfileobj(image, packed)


def netbootd_cli(lab, *args: str) -> subprocess.CompletedProcess:
    """The netbootd CLI in netbootd's namespace, on the lab's configuration (ui.listen's default)."""
    return subprocess.run(["ip", "netns", "exec", lab.boot_ns, *lab.netbootd_argv, *args, "--config",
                           str(lab.settings_path)], capture_output=True, text=True, timeout=60)


def disk_seconds(lab, result) -> float:
    """Seconds from the last power-on to the disk system's marker."""
    started = lab.boots[-1].proc.started_wall
    return round(started + result.seconds - result.power_ons[-1].started, 1)


@pytest.mark.parametrize(("firmware", "mac"), [
    ("bios", "52:54:00:43:00:01"),
    ("uefi", "52:54:00:43:00:02"),
    ("uefi-http", "52:54:00:43:00:03"),
], ids=["bios-ipxe", "ovmf-pxe", "ovmf-http"])
def test_install_once_then_boot_the_disk_then_reprovision(lab, firmware, mac):
    need(firmware)
    disk_image(lab)
    install_boot_the_disk_reprovision(lab, firmware, mac, "")


@pytest.mark.parametrize(("firmware", "mac", "extra", "loader"), [
    ("uefi", "52:54:00:43:00:04", 'loader = "grub"', "systemd-boot"),
    ("uefi-secure", "52:54:00:43:00:05", "secure_boot = true", "shim-grub"),
], ids=["ovmf-pxe-grub", "ovmf-pxe-secure-boot-shim-grub"])
def test_grub_machine_installs_once_then_boots_the_disk_then_reprovisions(grub_lab, firmware, mac, extra, loader):
    """GRUB (netbootd's, from the network) chainloads the disk's own loader: systemd-boot without
    Secure Boot; under Secure Boot the disk's shim, which boots the disk's signed GRUB and kernel."""
    need(firmware)
    signed_disk_image(grub_lab) if firmware == "uefi-secure" else disk_image(grub_lab)
    result = install_boot_the_disk_reprovision(grub_lab, firmware, mac, extra, grub=True)
    last = result.power_ons[-1].console
    assert f"{result.match} disk_marker={loader}" in last, last
    assert "netbootd: chainloading (hd0,msdos1)/EFI/BOOT/BOOTX64.EFI" in last, last
    if firmware == "uefi-secure":
        assert "secureboot: Secure boot enabled" in last  # the disk's kernel, under Secure Boot


def test_secure_boot_refuses_an_unsigned_disk_loader(grub_lab):
    """Under Secure Boot shim verifies what GRUB chainloads: the test disk's own loader (systemd-boot,
    unsigned) is refused, GRUB says so and returns to the firmware (which would refuse that loader too)."""
    need("uefi-secure")
    mac = "52:54:00:43:00:06"
    grub_lab.machine(mac, "secure_boot = true\n[boot]\nlocal = true\n")
    result = grub_lab.boot(mac, "uefi-secure", r"netbootd: no \S+ booted from any disk", 180,
                           disk=unpacked_disk(grub_lab))
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    # the power-on that said it (not the last: OVMF's boot menu, shown once GRUB exits, clears the
    # screen as a firmware start does, and may be read as one more power-on before the run ends)
    said = [p for p in result.power_ons if re.search(r"netbootd: no \S+ booted from any disk", p.console)]
    assert said, result.paths()
    on = said[0]
    assert "netbootd: chainloading (hd0,msdos1)/EFI/BOOT/BOOTX64.EFI" in on.console, on.console
    assert "error: bad shim signature" in on.console, on.console
    assert "disk: not bootable" in on.path, result.paths()


def install_boot_the_disk_reprovision(lab, firmware: str, mac: str, extra: str, grub: bool = False):
    """Install once, boot the disk, reprovision: the machine installs again. The first boot's result.
    `grub`: netbootd's GRUB boots it (the kernel and grub.cfg over TFTP; no beacons, GRUB has no HTTP)."""
    lab.machine(mac, INSTALLER.format(extra=extra, fail=""))
    result = lab.boot(mac, firmware, DISK_OK, 300, disk="96M", reboots=1)
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    paths = result.paths()
    print(f"\n{firmware}{' ' + extra if extra else ''}:\n  " + "\n  ".join(paths))
    assert "NETBOOTD-INSTALL-DONE" in result.console
    first, last = result.power_ons[0], result.power_ons[-1]
    assert "kernel" in first.path and first.path[-1] == "reboot"
    local = ("grub.cfg", "disk") if grub else ("local boot", "disk")
    assert all(step in last.path for step in local), paths
    events = [e for e in result.timeline if e["stage"] == "lifecycle"]
    assert [(e["state"], e["by"]) for e in events] == [("provisioned", "done_url")]
    # UEFI tries each network entry (PXE, then HTTP boot) before the disk: each is answered with a
    # local boot; the installer itself is never fetched again
    after = result.timeline[result.timeline.index(events[0]) + 1:]
    installer = [e for e in after if str(e.get("path", e.get("file", ""))).endswith(("vmlinuz", "/kernel"))]
    assert not installer, "the installer ran again"
    if grub:
        assert [e for e in after if e["stage"] == "tftp" and str(e.get("file", "")).endswith(f"{mac}.cfg")]
        assert "netbootd: booting from local disk" in last.console
    else:
        assert [e for e in after if e["stage"] == "beacon" and e.get("beacon") == "local"]
    seconds = disk_seconds(lab, result)
    print(f"  power-on {last.number} to the disk's own system: {seconds} s")

    # the operator reprovisions: the same VM (its disk kept) installs again on its next power-on
    out = netbootd_cli(lab, "reprovision", mac)
    assert out.returncode == 0 and f"{mac}: provisioning" in out.stdout, out.stdout + out.stderr
    again = lab.boot(mac, firmware, r"NETBOOTD-INSTALL-DONE", 240, disk=result.disk, reboots=0)
    assert again.booted, again.reason
    assert "kernel" in again.power_ons[0].path
    state = netbootd_cli(lab, "state", mac)
    assert "provisioned" in state.stdout and "done_url" in state.stdout, state.stdout + state.stderr
    return result


def test_a_failed_install_does_not_loop(lab):
    need("bios")
    disk_image(lab)
    mac = "52:54:00:43:00:09"
    lab.machine(mac, INSTALLER.format(extra="", fail=" nbd_fail=1"))
    # after the failure report the machine reboots; netbootd answers nothing more (on_failure = "hold"),
    # so SeaBIOS falls through to the empty disk
    result = lab.boot(mac, "bios", r"No bootable device", 240, disk="16M", reboots=1)
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    assert "NETBOOTD-INSTALL-FAILED" in result.console
    kernels = [e for e in result.timeline if e["stage"] == "http" and "vmlinuz" in e.get("path", "")]
    assert len(kernels) == 1, "the installer was booted again after it reported failure"
    events = [e for e in result.timeline if e["stage"] == "lifecycle"]
    assert [(e["state"], e["by"]) for e in events] == [("failed", "failed_url")]
    # the next power-on asked again (SeaBIOS's NIC ROM is iPXE: it is sent its script URL) and got no script
    refused = [line for line in lab.netbootd_lines(mac) if "no script" in line and "install failed" in line]
    assert refused, "\n".join(lab.netbootd_lines(mac))
