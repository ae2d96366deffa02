"""Record a run for test_poweron.py: `sudo .venv/bin/python tests/integration/recordings/record.py CASE`.

Boots one machine in a lab (the test kernel and initramfs of assets.sh, `nbd_reboot_once`) and
writes recordings/CASE/: console.log (QEMU's console as written, kernel lines left out but those
the power-on parsing reads), timeline.json (netbootd's events for the MAC), meta.json (the
firmware kind, QEMU's start and when the lab saw each later console start: `Boot.seen`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from netbootd.testing.lab import Lab

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / ".assets"
MAC = "52:54:00:99:00:01"
MACHINE = '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.cpio.gz"]\ncmdline = "console=ttyS0 panic=-1 nbd_reboot_once"\n'
KERNEL_LINE = re.compile(rb"^\[ *[0-9]+\.[0-9]+\] (?!.*(?:Linux version|Run /init|reboot:|Kernel panic)).*\n", re.M)
# case: firmware, expect, reboots; "local": the machine boots local after the first power-on
# wrote its disk; "disk-only": a second machine boots that disk with the network left out
CASES = {
    "bios-reboot": ("bios", r"NETBOOT-DISK found=\S+", 1),
    "bios-local": ("bios", r"NETBOOT-DISK-BOOT NBD-MARK \S+", 1),
    "bios-disk-only": ("bios", r"NETBOOT-DISK-BOOT NBD-MARK \S+", 0),
    "uefi-reboot": ("uefi", r"NETBOOT-DISK found=\S+", 1),
}


def main(case: str) -> None:
    firmware_name, expect, reboots = CASES[case]
    with tempfile.TemporaryDirectory(prefix="nbd-record-") as tmp, Lab(Path(tmp)) as lab:
        shutil.copy(ASSETS / "vmlinuz", lab.files / "vmlinuz")
        shutil.copy(ASSETS / "initrd.cpio.gz", lab.files / "initrd.cpio.gz")
        lab.machine(MAC, MACHINE)
        flipped: list[bool] = []

        def local(text: str) -> None:
            if case.startswith("bios-") and case != "bios-reboot" and "NETBOOT-DISK wrote" in text and not flipped:
                lab.machine(MAC, "[boot]\nlocal = true\n")
                flipped.append(True)

        result = lab.boot(MAC, firmware_name, expect, 120, disk="64M", reboots=reboots, on_console=local)
        if case == "bios-disk-only":  # the disk the first machine wrote, booted with the network left out
            assert result.booted and result.disk is not None, result.reason
            result = lab.boot("52:54:00:99:00:02", firmware_name, expect, 60, disk=result.disk,
                              qemu_args=["-boot", "order=c"])
        assert result.booted, result.reason
        boot = lab.boots[-1]
        out = HERE / case
        out.mkdir(exist_ok=True)
        (out / "console.log").write_bytes(KERNEL_LINE.sub(b"", boot.proc.log.read_bytes()))
        (out / "timeline.json").write_text(json.dumps(result.timeline, indent=1) + "\n")
        meta = {"firmware": firmware_name, "started": boot.proc.started_wall, "seen": boot.seen,
                "paths": result.paths()}
        (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        print("\n".join(result.paths()))


if __name__ == "__main__":
    main(sys.argv[1])
