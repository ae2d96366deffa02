"""Provision once, then boot the disk, on real firmware: one VM with an empty disk and a
`[lifecycle] once = true` machine. Its installer (the test initramfs: nbd_install=) fetches a
bootable disk image from netbootd's files, writes it, calls its signed done URL and reboots; on
the next power-on netbootd answers with a local boot and the VM boots its disk, whose own system
prints NETBOOTD-DISK-OK (nothing netbootd serves prints it). Then `netbootd reprovision` makes the
same VM install again; an installer that reports failure does not loop.

SeaBIOS + iPXE, OVMF PXE and OVMF HTTP boot; each prints the seconds from the second power-on to
the disk's own system. A GRUB-loader machine is not here yet: Debian 12's GRUB exits to the firmware
with success (OVMF then shows its menu), and its chainloading of the disk's loader failed on OVMF."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import ASSETS, need

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


def disk_image(lab) -> None:
    """The bootable disk image the installer writes, in the lab's files."""
    image = ASSETS / "disk.img.gz"
    if not image.is_file():
        pytest.fail("no disk image: tests/integration/assets.sh builds disk.img.gz (fdisk, dosfstools, mtools, syslinux)")
    shutil.copy(image, lab.files / "disk.img.gz")


def netbootd_cli(lab, *args: str) -> subprocess.CompletedProcess:
    """The netbootd CLI in netbootd's namespace, on the lab's configuration (ui.listen's default)."""
    return subprocess.run(["ip", "netns", "exec", lab.boot_ns, *lab.netbootd_argv, *args, "--config",
                           str(lab.settings_path)], capture_output=True, text=True, timeout=60)


def disk_seconds(lab, result) -> float:
    """Seconds from the last power-on to the disk system's marker."""
    started = lab.boots[-1].proc.started_wall
    return round(started + result.seconds - result.power_ons[-1].started, 1)


@pytest.mark.parametrize(("firmware", "extra"), [
    ("bios", ""),
    ("uefi", ""),
    ("uefi-http", ""),
], ids=["bios-ipxe", "ovmf-pxe", "ovmf-http"])
def test_install_once_then_boot_the_disk_then_reprovision(lab, firmware, extra):
    need(firmware)
    disk_image(lab)
    mac = {"bios": "52:54:00:43:00:01", "uefi-http": "52:54:00:43:00:03"}.get(firmware, "52:54:00:43:00:02")
    if extra:
        mac = "52:54:00:43:00:04"
    lab.machine(mac, INSTALLER.format(extra=extra, fail=""))
    result = lab.boot(mac, firmware, DISK_OK, 300, disk="96M", reboots=1)
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    paths = result.paths()
    print(f"\n{firmware}{' ' + extra if extra else ''}:\n  " + "\n  ".join(paths))
    assert "NETBOOTD-INSTALL-DONE" in result.console
    first, last = result.power_ons[0], result.power_ons[-1]
    assert "kernel" in first.path and first.path[-1] == "reboot"
    assert "local boot" in last.path and "disk" in last.path, paths
    events = [e for e in result.timeline if e["stage"] == "lifecycle"]
    assert [(e["state"], e["by"]) for e in events] == [("provisioned", "done_url")]
    # UEFI tries each network entry (PXE, then HTTP boot) before the disk: each is answered with a
    # local boot; the installer itself is never fetched again
    after = result.timeline[result.timeline.index(events[0]) + 1:]
    assert not [e for e in after if "vmlinuz" in str(e.get("path", e.get("file", "")))], "the installer ran again"
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
