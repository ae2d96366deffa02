"""Mixed fleets: one profile for x86-64 and arm64 machines (`{{ arch }}` in file locations), a
machine file's own `arch`, arm64 PXE through GRUB when no arm64 iPXE is configured (Debian 12 has
none), and what arm64 UEFI HTTP boot gets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import GrubBinaries, Settings
from netbootd.core.decide import BootCore
from netbootd.model import Arch, Client, Firmware

X86, ARM, PINNED = "52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def conf(tmp_path):
    for arch in ("efi64", "arm64"):
        write(tmp_path / "files" / "os" / arch / "vmlinuz", f"kernel-{arch}")
        write(tmp_path / "files" / "os" / arch / "initrd.img", f"initrd-{arch}")
    write(tmp_path / "files" / "uki" / "arm64.efi", "uki-arm64")
    write(tmp_path / "bins" / "grubnetaa64.efi.signed", "GRUB-AA64")
    write(tmp_path / "machines" / "profiles" / "fleet.toml", """
        [boot]
        kernel = "os/{{ arch }}/vmlinuz"
        initrds = ["os/{{ arch }}/initrd.img"]
        cmdline = "console=ttyS0 arch={{ arch }}"
        """)
    for mac in (X86, ARM):
        write(tmp_path / "machines" / f"{mac.replace(':', '-')}.toml", 'profile = "fleet"\n')
    write(tmp_path / "machines" / f"{PINNED.replace(':', '-')}.toml", 'profile = "fleet"\narch = "arm64"\n')
    return tmp_path


def make_core(conf: Path, **settings) -> BootCore:
    s = Settings(machines_dir=conf / "machines", files_root=conf / "files",
                 grub=GrubBinaries(arm64_grub=conf / "bins" / "grubnetaa64.efi.signed"), **settings)
    result = load_machines(s)
    assert result.errors == [], result.errors
    return BootCore(s, build_catalog(result))


def test_one_profile_serves_each_architecture_its_own_kernel(conf):
    core = make_core(conf)
    machine = core.find(X86)
    assert sorted(machine.boot.by_arch) == ["arm64", "efi64"]  # bios/efi32/arm32: no files, not offered
    x86 = core.script(X86, None, Arch.EFI64, "10.0.0.2")
    arm = core.script(ARM, None, Arch.ARM64, "10.0.0.2")
    assert "/files/os/efi64/vmlinuz" in x86 and "arch=efi64" in x86 and "arm64" not in x86
    assert "/files/os/arm64/vmlinuz" in arm and "/files/os/arm64/initrd.img" in arm and "arch=arm64" in arm
    bios = core.decide(Client(X86, Arch.BIOS, Firmware.BIOS_PXE), "10.0.0.2")
    assert bios.offer is None and "no boot files for bios" in bios.reason and "arm64, efi64" in bios.reason


def test_arm64_pxe_boots_through_grub_when_no_arm64_ipxe_is_configured(conf):
    core = make_core(conf)
    offer = core.decide(Client(ARM, Arch.ARM64, Firmware.EFI_PXE), "10.0.0.2").offer
    assert offer.bootfile == "boot/aa64/grubaa64.efi"  # GRUB directly: no Secure Boot asked
    assert core.decide(Client(X86, Arch.EFI64, Firmware.EFI_PXE), "10.0.0.2").offer.bootfile == "snponly.efi"
    with core.open_tftp("boot/aa64/grubaa64.efi", "10.0.0.9") as f:
        assert f.read() == b"GRUB-AA64"
    with core.open_tftp(f"grub/m/{ARM.replace(':', '-')}/arm64/kernel", "10.0.0.9") as f:
        assert f.read() == b"kernel-arm64"  # GRUB's ${grub_cpu} picks the arch's files
    with core.open_tftp(f"grub/m/{ARM.replace(':', '-')}/x86_64/kernel", "10.0.0.9") as f:
        assert f.read() == b"kernel-efi64"
    # with an arm64 iPXE configured, arm64 machines chainload it like x86 ones
    from netbootd.config.settings import IpxeBinaries

    core = make_core(conf, ipxe=IpxeBinaries(arm64="ipxe-arm64.efi"))
    assert core.decide(Client(ARM, Arch.ARM64, Firmware.EFI_PXE), "10.0.0.2").offer.bootfile == "ipxe-arm64.efi"


def test_arm64_http_boot(conf):
    core = make_core(conf)
    refused = core.decide(Client(ARM, Arch.ARM64, Firmware.HTTP_BOOT), "10.0.0.2")
    assert refused.offer is None and "needs iPXE" in refused.reason and "deploy/ipxe-arm64.sh" in refused.reason
    write(conf / "machines" / "52-54-00-aa-00-04.toml", '[boot]\nefi = "uki/{{ buildarch }}.efi"\n')
    core = make_core(conf)
    uki = core.decide(Client("52:54:00:aa:00:04", Arch.ARM64, Firmware.HTTP_BOOT), "10.0.0.2").offer
    assert uki.bootfile == "http://10.0.0.2/files/uki/arm64.efi"  # the UKI itself: no loader needed
    x86 = core.decide(Client("52:54:00:aa:00:04", Arch.EFI64, Firmware.HTTP_BOOT), "10.0.0.2")
    assert x86.offer is None and "no boot files for efi64" in x86.reason


def test_machine_file_arch(conf):
    core = make_core(conf)
    pinned = core.find(PINNED)
    assert pinned.arch == "arm64" and sorted(pinned.boot.by_arch) == ["arm64"]
    # an HTTP client that says nothing (boot-operator's) gets the machine's own architecture
    assert core.machine_arch(pinned, None) is Arch.ARM64 and core.machine_arch(core.find(X86), None) is Arch.EFI64
    assert "/files/os/arm64/vmlinuz" in core.script(PINNED, None, core.machine_arch(pinned, None), "10.0.0.2")


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        ('[boot]\nkernel = "os/{{ arch }}/nosuch"\n', "no architecture has all its files"),
        ('arch = "arm64"\n[boot]\nkernel = "os/efi64/{{ arch }}-only"\n', "no architecture has all its files"),
        ('[boot]\nkernel = "os/{{ hostname }}/vmlinuz"\n', "may use only arch and buildarch"),
        ('arch = "sparc"\n[boot]\nkernel = "os/efi64/vmlinuz"\n', "expected one of bios, efi32, efi64, arm32, arm64"),
    ],
)
def test_errors(conf, machine, message):
    write(conf / "machines" / "52-54-00-aa-00-09.toml", machine)
    s = Settings(machines_dir=conf / "machines", files_root=conf / "files")
    errors = load_machines(s).errors
    assert len(errors) == 1 and message in str(errors[0]), errors
    assert str(errors[0]).startswith(str(conf / "machines" / "52-54-00-aa-00-09.toml") + ":")
