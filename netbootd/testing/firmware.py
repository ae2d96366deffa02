"""The firmware a lab machine boots with: how to start QEMU for it, what it needs, when it gave up.

Each kind is one entry in `FIRMWARES`, so a new boot path (Secure Boot vars, arm64, IPv6) is a new
entry, not a new harness. Paths and package names are Debian's (qemu-lab.md in the project notes
lists what was measured on these machines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs

IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_NIC_ROM = IPXE_DIR / "qemu" / "efi-virtio.rom"  # QEMU's default ROM for virtio-net-pci
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot builds (SMM): Microsoft's keys enrolled (what real machines trust: shim, not ours), or
# the snakeoil test key (/usr/share/ovmf/PkKek-1-snakeoil.pem), with which a test can sign its own UKI.
OVMF_CODE_MS = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
OVMF_CODE_SNAKEOIL = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
OVMF_VARS_SNAKEOIL = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
# arm64: Debian's qemu-efi-aarch64 has one firmware build (AAVMF_CODE.ms.fd is a symlink to it, and
# there is no SMM on arm64 `virt`); Secure Boot is enforced when the variable store has keys enrolled:
# Microsoft's in AAVMF_VARS.ms.fd (they accept Debian's shimaa64, which trusts Debian's GRUB and kernel).
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
AAVMF_VARS_MS = Path("/usr/share/AAVMF/AAVMF_VARS.ms.fd")

# OVMF tries PXEv4, PXEv6, HTTPv4, HTTPv6 in turn (AAVMF too, with the same console text): when the
# path under test gives up, stop there instead of waiting a minute for a fallback (which could even
# boot, on the wrong path). BdsDxe
# prints `failed to load Boot0001 "UEFI HTTPv4 (MAC:...)" from <device path>: <status>` (or `failed
# to start` when the image ran and returned an error); the match takes the whole line, so a report
# says why: `Access Denied` is Secure Boot refusing the image. A console line is read while it is
# being written, so a status counts only once complete: EDK2's %r names (the table in OVMF 2022.11's
# binary, and two that newer EDK2 adds) or, for a status it has no name for, its hex value.
_EFI_STATUS = (
    "Load Error|Invalid Parameter|Unsupported|Bad Buffer Size|Buffer Too Small|Not Ready|Device Error|"
    "Write Protected|Out of Resources|Volume Corrupt|Volume Full|No Media|Media changed|Not Found|Access Denied|"
    "No Response|No mapping|Time out|Not started|Already started|Aborted|ICMP Error|TFTP Error|Protocol Error|"
    "Incompatible Version|Security Violation|CRC Error|End of Media|End of File|Invalid Language|Compromised Data|"
    "IP Address Conflict|HTTP Error|[0-9A-F]{8}(?:[0-9A-F]{8})?"
)


def _gave_up(description: str) -> re.Pattern[str]:
    return re.compile(rf'failed to (?:load|start) Boot[0-9A-Fa-f]+ "{description}[^"]*" from \S+: (?:{_EFI_STATUS})\s*$')


_GAVE_UP_PXE4 = _gave_up("UEFI PXEv4")
# A GRUB that found no configuration stops at its prompt: waiting on would only reach the timeout.
_GAVE_UP_PXE4_OR_GRUB = re.compile(f"{_GAVE_UP_PXE4.pattern}|^grub> *$")
_GAVE_UP_HTTP4 = _gave_up("UEFI HTTPv4")
_GAVE_UP_PXE6 = _gave_up("UEFI PXEv6")
_GAVE_UP_HTTP6 = _gave_up("UEFI HTTPv6")


# A power-on, on the console (the firmware starts; netbootd.testing.poweron): SeaBIOS and AAVMF print
# a banner. Debian's OVMF (a release build) prints none, but its terminal driver starts each
# power-on by clearing the screen and setting the mode (`ESC[=3h`, nothing else prints it), a run of
# them that one match takes whole.
SEABIOS_START = re.compile(r"SeaBIOS \(version[^\n]*")
AAVMF_START = re.compile(r"UEFI firmware \(version[^\n]*")
OVMF_START = re.compile(r"(?:\x1b\[2J\x1b\[01;01H)?\x1b\[=3h(?:\x1b\[2J\x1b\[01;01H|\x1b\[=3h)*")


@attrs.frozen
class Disk:
    """A machine's disk image: `path`, in `format` (qcow2 or raw, as `qemu-img info` says)."""

    path: Path
    format: str = "qcow2"

    def drive(self, interface: str) -> str:
        """QEMU's -drive value: `if=virtio` (a virtio-blk disk SeaBIOS boots in `-boot` order), or
        `if=none` (a drive for a -device line that sets its own bootindex)."""
        return f"file={self.path},format={self.format},if={interface}" + (",id=disk0" if interface == "none" else "")


SIZE = re.compile(r"^[1-9][0-9]*(?:\.[0-9]+)?[KMGT]?$", re.I)  # qemu-img's sizes: 64M, 2G, 1.5G, bytes


def parse_memory(memory: int | str) -> int:
    """A machine's memory in MiB: 1024, "1024", "1024M", "1G"."""
    m = re.fullmatch(r"([1-9][0-9]*)([MG]?)(?:i?B)?", str(memory).strip(), re.I)
    if m is None:
        raise ValueError(f"memory {memory!r}: expected MiB (1024) or a size with M or G (1024M, 1G)")
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


class DiskError(ValueError):
    """A disk could not be made or used; the message says why."""


def new_disk(path: Path, size: str) -> Disk:
    """An empty qcow2 of `size` (64M, 2G: qemu-img's syntax) at `path`, made with qemu-img."""
    if not SIZE.match(size):
        raise DiskError(f"disk size {size!r}: expected a number with K, M, G or T (64M, 2G)")
    if shutil.which("qemu-img") is None:
        raise DiskError("qemu-img is missing (apt-get install qemu-utils)")
    out = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size.upper()],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise DiskError(f"qemu-img create {path} {size}: {out.stderr.strip()}")
    return Disk(path.absolute(), "qcow2")


def existing_disk(path: Path) -> Disk:
    """An image that exists (qcow2, raw, ...: its format as qemu-img sees it); the machine writes to it."""
    if not path.is_file():
        raise DiskError(f"{path}: no such disk image (a size such as 2G makes a new one)")
    if shutil.which("qemu-img") is None:
        raise DiskError("qemu-img is missing (apt-get install qemu-utils)")
    # -U: no lock needed to read the header; the format named, so QEMU does not guess (a raw image
    # guessed raw may not write its first sector)
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise DiskError(f"qemu-img info {path}: {out.stderr.strip()}")
    return Disk(path.absolute(), json.loads(out.stdout).get("format", "raw"))


@attrs.frozen
class Vm:
    """What a firmware kind needs to build one machine's QEMU command line."""

    mac: str
    tap: str
    workdir: Path  # private files of this machine (a copy of the UEFI variable store)
    name: str
    accel: str = "tcg"
    memory_mb: int = 512
    # A disk (a qcow2 or raw image), booted after the network, as a bare-metal fleet is set up: BIOS
    # `-boot order=nc`, UEFI the NIC at bootindex 1 and the disk at 2. None: no disk.
    disk: Disk | None = None
    reboot: bool = False  # a guest reboot resets the machine (False: `-no-reboot`, QEMU exits)
    extra: tuple[str, ...] = ()  # more QEMU arguments, appended


# The disk after the NIC (bootindex=1), for OVMF and AAVMF
def _uefi_disk(vm: Vm) -> list[str]:
    if vm.disk is None:
        return []
    return ["-drive", vm.disk.drive("none"), "-device", "virtio-blk-pci,drive=disk0,bootindex=2"]


@attrs.frozen
class FirmwareKind:
    name: str
    description: str
    qemu: str  # the QEMU binary
    packages: tuple[str, ...]  # Debian packages that provide what it needs
    files: tuple[Path, ...]  # firmware files that must exist
    argv: Callable[[Vm], list[str]]
    give_up: re.Pattern[str] | None = None  # the firmware gave up on the path under test
    timeout: float = 150.0  # seconds, under TCG
    ipv6: bool = False  # boots over IPv6 only: needs an IPv6-only lab (Lab(ipv6=True))
    start: re.Pattern[str] = OVMF_START  # what its console shows when it powers on (each reset too)

    def missing(self) -> str | None:
        """Why this kind cannot run here (naming the packages to install), or None."""
        if shutil.which(self.qemu) is None:
            return f"{self.qemu} is missing (apt-get install {' '.join(self.packages)})"
        absent = [str(p) for p in self.files if not p.is_file()]
        if absent:
            return f"{', '.join(absent)} missing (apt-get install {' '.join(self.packages)})"
        return None


def _common(vm: Vm, qemu: str) -> list[str]:
    return [
        qemu, "-accel", vm.accel, "-m", str(vm.memory_mb), "-nographic", "-serial", "stdio", "-monitor", "none",
        *([] if vm.reboot else ["-no-reboot"]), "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
    ]  # fmt: skip


def _bios(vm: Vm) -> list[str]:
    # SeaBIOS + the NIC's iPXE ROM. reboot-timeout: when nothing boots, SeaBIOS reboots after 1 s
    # instead of waiting 60 s, and -no-reboot turns that into QEMU exiting. A disk: network first,
    # then the disk (`order=nc`; a virtio disk is SeaBIOS's first hard disk).
    nic = f"virtio-net-pci,netdev=n0,mac={vm.mac}"
    disk = [] if vm.disk is None else ["-drive", vm.disk.drive("virtio")]
    return [*_common(vm, "qemu-system-x86_64"), "-machine", "pc", "-boot",
            f"order={'n' if vm.disk is None else 'nc'},reboot-timeout=1000", "-device", nic, *disk, *vm.extra]


def _ovmf(vm: Vm, *extra: str, code: Path = OVMF_CODE, vars_template: Path = OVMF_VARS,
          machine: str = "q35") -> list[str]:
    vars_copy = vm.workdir / f"{vm.name}-{vars_template.name}"
    shutil.copy(vars_template, vars_copy)  # each machine writes its own boot variables
    # romfile= (empty): OVMF's own PXE/HTTP boot, not the NIC's iPXE ROM; bootindex=1: the NIC first
    return [
        *_common(vm, "qemu-system-x86_64"), "-machine", machine,
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac},romfile=,bootindex=1",
        *_uefi_disk(vm), *extra, *vm.extra,
    ]  # fmt: skip


# PXE off, else OVMF spends ~60 s on each PXE attempt before it tries HTTP
_NO_PXE = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
           "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no")
# Debian's Secure Boot OVMF (ms and snakeoil alike: symlinks to one secboot.fd) is the SMM build:
# its variables (the Secure Boot keys among them) belong in flash only SMM code may write. QEMU 7.2's
# q35 has SMM on by default and the firmware starts without these flags, but then the guest could
# write the flash directly; stated here so the lab is set up as a real machine is.
_SMM_MACHINE = "q35,smm=on"
_SMM = ("-global", "driver=cfi.pflash01,property=secure,value=on")


def _uefi_http(vm: Vm) -> list[str]:
    return _ovmf(vm, *_NO_PXE)


# IPv6 only. PXE: without PXEv4 the first boot option is PXEv6 (the kinds stop at its failure).
# HTTP boot: IPv4Support=no leaves out the IPv4 stack (the 60 s HTTPv4 attempt), but HTTPv6 then
# starts before the DHCPv6 address is ready and fails at once; the boot menu's 5 s splash gives it
# that time (measured: qemu-lab notes, IPv6).
_NO_PXE4 = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no")
_NO_IPV4 = ("-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=no", "-boot", "menu=on,splash-time=5000")


def _uefi6(vm: Vm) -> list[str]:
    return _ovmf(vm, *_NO_PXE4)


def _uefi_http6(vm: Vm) -> list[str]:
    return _ovmf(vm, *_NO_PXE, *_NO_IPV4)


def _uefi_secure(vm: Vm) -> list[str]:
    return _ovmf(vm, *_SMM, code=OVMF_CODE_MS, vars_template=OVMF_VARS_MS, machine=_SMM_MACHINE)


def _uefi_http_secure(vm: Vm) -> list[str]:
    return _ovmf(vm, *_SMM, *_NO_PXE, code=OVMF_CODE_SNAKEOIL, vars_template=OVMF_VARS_SNAKEOIL, machine=_SMM_MACHINE)


def _aavmf(vm: Vm, *extra: str, vars_template: Path = AAVMF_VARS) -> list[str]:
    """arm64 `virt` machine with AAVMF. Always TCG: on an x86 host KVM cannot run arm64 guests.
    1 GiB: Debian's arm64 kernel is a 33 MB uncompressed image (qemu-lab notes measured with it)."""
    vars_copy = vm.workdir / f"{vm.name}-{vars_template.name}"
    shutil.copy(vars_template, vars_copy)
    # AAVMF's PL011 is the console (Linux: console=ttyAMA0); romfile= and bootindex=1 as for OVMF
    return [
        "qemu-system-aarch64", "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57", "-smp", "1",
        "-m", str(max(vm.memory_mb, 1024)), "-nographic", "-serial", "stdio", "-monitor", "none",
        *([] if vm.reboot else ["-no-reboot"]), "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac},romfile=,bootindex=1",
        *_uefi_disk(vm), *extra, *vm.extra,
    ]  # fmt: skip


# AAVMF honours OVMF's fw_cfg PXE switches (measured: with them its first boot option is HTTPv4,
# without them PXEv4). Neither firmware has a switch for HTTP boot: the PXE kinds stop at the
# PXEv4 failure (their give-up pattern) before the HTTP fallback runs.
def _arm64_http(vm: Vm) -> list[str]:
    return _aavmf(vm, *_NO_PXE)


def _arm64_secure(vm: Vm) -> list[str]:
    return _aavmf(vm, vars_template=AAVMF_VARS_MS)


_X86 = ("qemu-system-x86",)
_ARM64 = ("qemu-system-arm", "qemu-efi-aarch64")
FIRMWARES: dict[str, FirmwareKind] = {
    "bios": FirmwareKind(
        "bios", "SeaBIOS with the NIC's iPXE ROM (PXE, then iPXE)", "qemu-system-x86_64",
        (*_X86, "ipxe-qemu"), (IPXE_NIC_ROM,), _bios, None, 90.0, start=SEABIOS_START,
    ),
    "uefi": FirmwareKind(
        "uefi", "OVMF's own UEFI PXE (4011 exchange, TFTP)", "qemu-system-x86_64",
        (*_X86, "ovmf"), (OVMF_CODE, OVMF_VARS), _ovmf, _GAVE_UP_PXE4,
    ),
    "uefi-http": FirmwareKind(
        "uefi-http", "OVMF's UEFI HTTP boot (IPv4)", "qemu-system-x86_64",
        (*_X86, "ovmf"), (OVMF_CODE, OVMF_VARS), _uefi_http, _GAVE_UP_HTTP4,
    ),
    "uefi6": FirmwareKind(
        "uefi6", "OVMF's own UEFI PXE over IPv6 (DHCPv6, the 4011 exchange, TFTP over IPv6; PXEv4 off)",
        "qemu-system-x86_64", (*_X86, "ovmf"), (OVMF_CODE, OVMF_VARS), _uefi6, _GAVE_UP_PXE6, ipv6=True,
    ),
    "uefi-http6": FirmwareKind(
        "uefi-http6", "OVMF's UEFI HTTP boot over IPv6 (IPv4 off)", "qemu-system-x86_64",
        (*_X86, "ovmf"), (OVMF_CODE, OVMF_VARS), _uefi_http6, _GAVE_UP_HTTP6, ipv6=True,
    ),
    "uefi-secure": FirmwareKind(
        "uefi-secure", "OVMF's own UEFI PXE, Secure Boot enforced with Microsoft's keys (shim loads, unsigned iPXE is refused)",
        "qemu-system-x86_64", (*_X86, "ovmf"), (OVMF_CODE_MS, OVMF_VARS_MS), _uefi_secure, _GAVE_UP_PXE4_OR_GRUB, 180.0,
    ),
    "uefi-http-secure": FirmwareKind(
        "uefi-http-secure", "OVMF's UEFI HTTP boot (IPv4), Secure Boot enforced with OVMF's snakeoil test key",
        "qemu-system-x86_64", (*_X86, "ovmf"), (OVMF_CODE_SNAKEOIL, OVMF_VARS_SNAKEOIL), _uefi_http_secure,
        _GAVE_UP_HTTP4, 180.0,
    ),
    # TCG emulating arm64 is slower: AAVMF asks DHCP ~6 s after start, a boot to the marker takes 15-35 s
    "arm64-uefi": FirmwareKind(
        "arm64-uefi", "arm64 (AAVMF): its own UEFI PXE (4011 exchange, TFTP)", "qemu-system-aarch64",
        _ARM64, (AAVMF_CODE, AAVMF_VARS), _aavmf, _GAVE_UP_PXE4_OR_GRUB, 180.0, start=AAVMF_START,
    ),
    "arm64-http": FirmwareKind(
        "arm64-http", "arm64 (AAVMF): UEFI HTTP boot (IPv4)", "qemu-system-aarch64",
        _ARM64, (AAVMF_CODE, AAVMF_VARS), _arm64_http, _GAVE_UP_HTTP4, 180.0, start=AAVMF_START,
    ),
    "arm64-secure": FirmwareKind(
        "arm64-secure", "arm64 (AAVMF): its own UEFI PXE, Secure Boot enforced with Microsoft's keys (shim loads, "
        "unsigned iPXE is refused)",
        "qemu-system-aarch64", _ARM64, (AAVMF_CODE, AAVMF_VARS_MS), _arm64_secure, _GAVE_UP_PXE4_OR_GRUB, 180.0,
        start=AAVMF_START,
    ),
}
# The names the project's own tests used before the kinds were shipped.
ALIASES = {"uefi-pxe": "uefi"}


def firmware(name: str) -> FirmwareKind:
    kind = FIRMWARES.get(ALIASES.get(name, name))
    if kind is None:
        raise ValueError(f"unknown firmware {name!r}; known: {', '.join(FIRMWARES)}")
    return kind


def accelerator() -> str:
    """"kvm" when /dev/kvm can run guests at full speed here, else "tcg" (which always works).
    A /dev/kvm that opens but sits on a CPU without vmx/svm (nested paravirtual setups) makes
    guests crawl, so the CPU flags decide too. NETBOOTD_QEMU_ACCEL overrides."""
    forced = os.environ.get("NETBOOTD_QEMU_ACCEL")
    if forced:
        return forced
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "tcg"
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    return "kvm" if re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) else "tcg"
