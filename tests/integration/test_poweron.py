"""Power-ons told apart on recorded runs (netbootd.testing.poweron), and the QEMU command lines of a
machine with a disk. No QEMU here: the recordings are real runs' console and timeline
(recordings/record.py made them), so this runs without the `integration` marker too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from netbootd.testing import poweron
from netbootd.testing.firmware import AAVMF_START, OVMF_START, SEABIOS_START, Disk, Vm, firmware, parse_memory
from netbootd.testing.results import PowerOn, stages_from

RECORDINGS = Path(__file__).resolve().parent / "recordings"
NEVER = re.compile(r"(?!)")  # a console that shows no firmware start


def recording(name: str) -> tuple[str, list[dict], dict]:
    d = RECORDINGS / name
    raw = (d / "console.log").read_bytes().decode(errors="replace")
    return raw, json.loads((d / "timeline.json").read_text()), json.loads((d / "meta.json").read_text())


def split(name: str, **kw) -> list[PowerOn]:
    raw, events, meta = recording(name)
    options = {"start": firmware(meta["firmware"]).start, "started": meta["started"], "seen": meta["seen"], **kw}
    return poweron.split(raw, events, **options)


def paths(power_ons: list[PowerOn]) -> list[str]:
    return [p.describe() for p in power_ons]


def test_bios_reboot_then_the_network_again():
    """`try --disk`: the initramfs wrote its disk and rebooted; the second power-on found the mark."""
    power_ons = split("bios-reboot")
    assert paths(power_ons) == [
        "power-on 1: network → dhcp → script → kernel → initrd → beacon → reboot",
        "power-on 2: network → dhcp → script → kernel → initrd → beacon → power off",
    ]
    first, second = power_ons
    assert second.how == "console: SeaBIOS (version 1.16.2-debian-1.16.2-1)"
    assert [e["stage"] for e in first.events] == [e["stage"] for e in second.events] == [
        "dhcp", "dhcp", "script", "http", "http", "beacon"]
    wrote = re.search(r"NETBOOT-DISK wrote=(\S+),", first.console)
    found = re.search(r"NETBOOT-DISK found=(\S+)", second.console)
    assert wrote and found and wrote.group(1) == found.group(1)
    assert "found=" not in first.console and "wrote=" not in second.console  # each console is its own


def test_bios_reboot_into_local_boot_and_the_disk():
    """Provision, then the machine file says `local`: iPXE exits and SeaBIOS boots the disk."""
    power_ons = split("bios-local")
    assert paths(power_ons) == [
        "power-on 1: network → dhcp → script → kernel → initrd → beacon → reboot",
        "power-on 2: network → dhcp → script → local boot → disk",  # the lab adds "power off": QEMU exited
    ]
    assert [e.get("beacon") for e in power_ons[1].events if e["stage"] == "beacon"] == ["local"]
    assert "NETBOOT-DISK-BOOT NBD-MARK" in power_ons[1].console


def test_disk_without_the_network():
    """A machine that boots its disk first (`-boot order=c`): netbootd never sees it."""
    (only,) = split("bios-disk-only")
    assert only.describe() == "power-on 1: disk (no network boot)"
    assert only.events == ()


def test_ovmf_reboot():
    """OVMF prints no banner: its terminal reset starts each power-on, one start per run of them.
    iPXE's DHCP after the firmware's TFTP is the same power-on."""
    raw, _, _ = recording("uefi-reboot")
    assert len(poweron.console_starts(raw, OVMF_START)) == 2 and raw.count("\x1b[=3h") > 2
    power_ons = split("uefi-reboot")
    assert paths(power_ons) == [
        "power-on 1: network → dhcp → tftp → dhcp → script → kernel → initrd → beacon → reboot",
        "power-on 2: network → dhcp → tftp → dhcp → script → kernel → initrd → beacon → power off",
    ]
    assert power_ons[1].how == "console: the firmware reset its terminal"


@pytest.mark.parametrize("name", ["bios-reboot", "bios-local", "uefi-reboot"])
def test_the_timeline_alone_finds_the_same_power_ons(name):
    """A console that shows no firmware start: a firmware's new DHCP exchange after the machine got
    past its network boot starts the next power-on."""
    by_console = split(name)
    by_timeline = split(name, start=NEVER)
    assert len(by_timeline) == len(by_console) == 2
    second = by_timeline[1]
    assert second.how.startswith("timeline: a new DHCP exchange") and "after beacon" in second.how
    assert second.events == by_console[1].events  # the same events, filed the same way
    assert second.started == by_console[1].events[0]["time"]
    assert second.console == ""  # where it began on the console is not known from a recording
    assert by_timeline[0].events == by_console[0].events


def test_timeline_console_offset_from_the_lab():
    """The lab keeps how long the console was when the timeline showed a power-on: it begins there."""
    raw, events, meta = recording("bios-reboot")
    second_dhcp = [e for e in events if e["stage"] == "dhcp"][2]
    at = raw.index("NETBOOT-DISK wrote=")
    power_ons = poweron.split(raw, events, start=NEVER, started=meta["started"],
                              console_at={second_dhcp["time"]: at})
    assert power_ons[1].offset == at and power_ons[1].console.startswith("NETBOOT-DISK wrote=")


def test_uefi_http_boot_then_ipxe_is_one_power_on():
    """HTTP boot loads iPXE, whose own DHCP follows the download: not a new power-on; the firmware's
    DHCP after the kernel is."""
    t = 1000.0
    events = [
        {"stage": "dhcp", "time": t + 5, "firmware": "http-boot", "port": 67, "offered": "http-boot /boot/snponly.efi"},
        {"stage": "http", "time": t + 7, "path": "/boot/snponly.efi", "seconds": 0.5},
        {"stage": "dhcp", "time": t + 9, "firmware": "ipxe", "port": 67, "offered": "ipxe-script ..."},
        {"stage": "script", "time": t + 9.2},
        {"stage": "http", "time": t + 10, "path": "/files/vmlinuz", "seconds": 0.4},
        {"stage": "http", "time": t + 10.1, "path": "/files/initrd.img", "seconds": 0.01},
        {"stage": "beacon", "time": t + 10.2, "beacon": "loaded"},
        {"stage": "beacon", "time": t + 30, "beacon": "installed"},
        {"stage": "dhcp", "time": t + 45, "firmware": "http-boot", "port": 67, "answered": False, "reason": "local"},
    ]
    power_ons = poweron.split("", events, start=NEVER, started=t)
    assert paths(power_ons) == [
        "power-on 1: network → dhcp → loader → dhcp → script → kernel → initrd → beacon → installed → reboot",
        "power-on 2: network → dhcp (not answered)",
    ]
    # each power-on's downloads are named on their own
    assert list(stages_from(events, t, power_ons)) == ["dhcp", "loader", "script", "kernel", "initrd", "beacon",
                                                       "beacon:installed"]


def test_unstamped_console_start_takes_no_events():
    """A start the lab has not stamped yet (it stamps each as it first sees it) comes after every event."""
    raw, events, meta = recording("bios-reboot")
    power_ons = poweron.split(raw, events, start=SEABIOS_START, started=meta["started"], seen=[])
    assert len(power_ons) == 2 and len(power_ons[0].events) == len(events) and power_ons[1].events == ()


def test_aavmf_banner():
    raw = ("UEFI firmware (version  built at 13:10:49 on Nov  5 2024)\r\n\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H"
           ">>Start PXE over IPv4.\r\n")
    assert [m.group(0).strip() for m in poweron.console_starts(raw, AAVMF_START)] == [
        "UEFI firmware (version  built at 13:10:49 on Nov  5 2024)"]
    assert firmware("arm64-uefi").start is AAVMF_START and firmware("uefi").start is OVMF_START


def test_a_panic_and_a_device_that_does_not_boot():
    assert poweron.path("Booting from Hard Disk...\nBoot failed: not a bootable disk\n\nNo bootable device.\n", [],
                        last=False) == ("disk (no network boot): not bootable", "reboot")
    assert poweron.path("[1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
                        [{"stage": "dhcp", "offered": "x"}], last=True) == ("network", "dhcp", "kernel panic")
    assert poweron.path("", [], last=True) == ("no boot seen",)


def test_grub_chainloading_the_disk():
    """netbootd's GRUB (a provisioned machine's grub.cfg) says when it hands over to the disk's loader."""
    grub = [{"stage": "dhcp", "offered": "x"}, {"stage": "tftp", "file": "grub/machines/m.cfg"}]
    ok = "netbootd: booting from local disk\nnetbootd: chainloading (hd0,msdos1)/EFI/BOOT/BOOTX64.EFI\n"
    assert poweron.path(ok, grub, last=False) == ("network", "dhcp", "grub.cfg", "disk", "reboot")
    refused = ok + "error: bad shim signature.\nnetbootd: no /EFI/BOOT/BOOTX64.EFI booted from any disk; back to\n"
    assert poweron.path(refused, grub, last=True) == ("network", "dhcp", "grub.cfg", "disk: not bootable")


def test_ended_goes_before_the_end():
    _, second = split("bios-reboot")
    assert poweron.ended(second, "expect matched").path[-3:] == ("beacon", "expect matched", "power off")
    running = PowerOn(1, 0.0, "QEMU started", "", (), ("network", "dhcp"))
    assert poweron.ended(running, "timed out").path == ("network", "dhcp", "timed out")


def test_number_of():
    power_ons = split("bios-reboot")
    _, events, _ = recording("bios-reboot")
    assert [poweron.number_of(power_ons, e) for e in events] == [1] * 6 + [2] * 6
    assert poweron.number_of([], events[0]) == 1


# ---------------------------------------------------------------------------------- command lines


def _argv(kind: str, tmp_path: Path, **vm) -> list[str]:
    return firmware(kind).argv(Vm(mac="52:54:00:99:00:01", tap="tap0", workdir=tmp_path, name="vm0", **vm))


def test_bios_with_a_disk_boots_the_network_first(tmp_path):
    disk = Disk(tmp_path / "d.qcow2")
    argv = _argv("bios", tmp_path, disk=disk, reboot=True, memory_mb=1024)
    assert "-no-reboot" not in argv and argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-boot") + 1] == "order=nc,reboot-timeout=1000"
    assert argv[argv.index("-drive") + 1] == f"file={disk.path},format=qcow2,if=virtio"
    plain = _argv("bios", tmp_path)
    assert "-no-reboot" in plain and plain[plain.index("-boot") + 1] == "order=n,reboot-timeout=1000"
    assert "-drive" not in plain


@pytest.mark.parametrize("kind", ["uefi", "uefi-http", "uefi-secure", "arm64-uefi"])
def test_uefi_with_a_disk_after_the_nic(tmp_path, kind):
    disk = Disk(tmp_path / "d.img", "raw")
    argv = _argv(kind, tmp_path, disk=disk, reboot=True, extra=("-smp", "2"))
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0].startswith("virtio-net-pci,") and devices[0].endswith(",bootindex=1")
    assert devices[1] == "virtio-blk-pci,drive=disk0,bootindex=2"
    assert f"file={disk.path},format=raw,if=none,id=disk0" in argv
    assert "-no-reboot" not in argv and argv[-2:] == ["-smp", "2"]


def test_memory():
    assert [parse_memory(m) for m in (1024, "512", "1G", "2048M", "1GiB")] == [1024, 512, 1024, 2048, 1024]
    with pytest.raises(ValueError, match="expected MiB"):
        parse_memory("lots")
