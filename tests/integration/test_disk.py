"""Provision once, then boot from the disk: the lab (as the pytest plugin's `netboot_lab` gives it)
with a disk, following the machine through its reboots.

The test initramfs's `nbd_reboot_once` (assets.sh) writes a first sector to the machine's disk that
is both a marker and a BIOS boot sector (booted, it prints `NETBOOT-DISK-BOOT NBD-MARK <id>` and
powers off), then reboots: the "installer". The test then switches the machine file to
`local = true`, as an operator (or the installer's callback) would.
"""

from __future__ import annotations

import re

import pytest

from .conftest import need

pytestmark = pytest.mark.integration

MAC = "52:54:00:88:00:31"
OTHER = "52:54:00:88:00:32"
BOOTED_FROM_DISK = r"NETBOOT-DISK-BOOT NBD-MARK (\S+)"


def test_provision_then_local_boot_from_the_disk(lab):
    need("bios")
    lab.machine(MAC, """
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1 nbd_reboot_once"
        """)
    switched: list[str] = []

    def installed(text: str) -> None:
        if not switched and (m := re.search(r"NETBOOT-DISK wrote=(\S+),", text)):
            lab.machine(MAC, "[boot]\nlocal = true\n")
            switched.append(m.group(1))

    power_ons = []
    result = lab.boot(MAC, "bios", BOOTED_FROM_DISK, 150, disk="64M", reboots=1, on_console=installed,
                      on_power_on=power_ons.append)
    assert result.booted, result.reason
    assert result.paths() == [
        "power-on 1: network → dhcp → script → kernel → initrd → beacon → reboot",
        "power-on 2: network → dhcp → script → local boot → disk → expect matched → power off",
    ]
    assert [p.number for p in power_ons] == [2] and power_ons[0].how.startswith("console: SeaBIOS")
    # the second power-on booted what the first wrote: the disk persisted across the reboot
    assert switched and re.search(BOOTED_FROM_DISK, result.match).group(1) == switched[0]
    assert result.disk is not None and result.disk.parent == lab.root and result.disk.suffix == ".qcow2"
    assert "-m 1024" in " ".join(lab.boots[0].proc.argv) and "-no-reboot" not in lab.boots[0].proc.argv

    # the same image, as an existing disk of another machine that boots it first: no network at all
    again = lab.boot(OTHER, "bios", BOOTED_FROM_DISK, 60, disk=result.disk, memory="256M",
                     qemu_args=["-boot", "order=c"])
    assert again.booted, again.reason
    assert again.paths() == ["power-on 1: disk (no network boot) → expect matched → power off"]
    assert again.timeline == [] and re.search(BOOTED_FROM_DISK, again.match).group(1) == switched[0]
    assert "-m 256" in " ".join(lab.boots[1].proc.argv)


def test_expect_before_the_reboots_does_not_count(lab):
    """`reboots=1`: the default test (the initramfs' init started) matches on the first power-on's
    console, but counts only from the second; a machine that powers off first did not boot."""
    need("bios")
    lab.machine(MAC, """
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1"
        """)
    result = lab.boot(MAC, "bios", timeout=90, reboots=1)
    assert not result.booted, result.paths()
    assert "Run /init as init process" in result.console
    assert "without a match of" in result.reason and "after 1 reboot" in result.reason, result.reason
    assert result.paths() == ["power-on 1: network → dhcp → script → kernel → initrd → beacon → power off"]
