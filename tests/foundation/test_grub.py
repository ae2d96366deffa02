"""The GRUB loader path on the real loader and core: which machines get shim / GRUB, the names the
chain asks for (from ../shared/captures, *secureboot*), grub.cfg per machine, and what the TFTP
edge gets for each name."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import GrubBinaries, Settings
from netbootd.core.decide import BootCore
from netbootd.core.explain import explain_lines
from netbootd.core.files import AccessDenied, FileNotFound
from netbootd.core.loaders import grub
from netbootd.model import Arch, Client, Firmware

SB = "52:54:00:99:00:01"
PLAIN = "52:54:00:99:00:02"
IPXE = "52:54:00:99:00:03"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def core(tmp_path) -> BootCore:
    files = tmp_path / "files"
    write(files / "vmlinuz", "KERNEL")
    write(files / "initrd.img", "INITRD")
    bins = tmp_path / "bins"
    write(bins / "shimx64.efi.signed", "SHIM")
    write(bins / "grubnetx64.efi.signed", "GRUB")
    machines = tmp_path / "machines"
    write(machines / "52-54-00-99-00-01.toml", """
        secure_boot = true
        [vars]
        hostname = "sb-1"
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.img", "https://mirror.example/extra.img"]
        cmdline = "console=ttyS0 host={{ hostname }} url={{ ignition_url }} q='x'"
        [ignition]
        inline = '{"ignition": {"version": "3.4.0"}}'
        """)
    write(machines / "52-54-00-99-00-02.toml", """
        loader = "grub"
        [boot]
        kernel = "vmlinuz"
        cmdline = "console=ttyS0 host=plain"
        """)
    write(machines / "52-54-00-99-00-03.toml", '[boot]\nkernel = "vmlinuz"\n')
    settings = Settings(machines_dir=machines, files_root=files, advertise="10.0.0.2",
                        grub=GrubBinaries(efi64_shim=bins / "shimx64.efi.signed",
                                          efi64_grub=bins / "grubnetx64.efi.signed"))
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result))


def efi_pxe(core, mac, arch=Arch.EFI64, firmware=Firmware.EFI_PXE):
    return core.decide(Client(mac, arch, firmware), "10.0.0.2")


def read(opened) -> bytes:
    with opened as f:
        return f.read()


def test_offers(core):
    assert efi_pxe(core, SB).offer.bootfile == "boot/x64/shimx64.efi"  # Secure Boot: shim first
    assert efi_pxe(core, PLAIN).offer.bootfile == "boot/x64/grubx64.efi"  # GRUB without Secure Boot: no shim
    assert efi_pxe(core, IPXE).offer.bootfile == "snponly.efi"
    assert efi_pxe(core, SB, Arch.ARM64).offer.bootfile == "boot/aa64/shimaa64.efi"
    bios = efi_pxe(core, SB, Arch.BIOS, Firmware.BIOS_PXE)
    assert bios.offer is None and "needs UEFI" in bios.reason
    http = efi_pxe(core, SB, Arch.EFI64, Firmware.HTTP_BOOT)
    assert http.offer is None and "PXE-boot this machine" in http.reason and "signed UKI" in http.reason
    # iPXE (a NIC ROM, no Secure Boot) still gets the machine's script: the same boot definition
    assert "kernel --name kernel" in core.script(PLAIN, None, Arch.EFI64, "10.0.0.2")


@pytest.mark.parametrize(
    ("name", "what"),
    [
        # the names in ../shared/captures/*secureboot*.txt
        ("boot/x64/shimx64.efi", "shim"),
        ("boot/x64/revocations_sku.efi", "shim-optional"),
        ("boot/x64/revocations_sbat.efi", "shim-optional"),
        ("boot/x64/shim_certificate_0.efi", "shim-optional"),
        ("boot/x64/grubx64.efi", "grub"),
        ("grubx64.efi", "grub"),  # full DHCP: at the root
        ("shimaa64.efi", "shim"),
        ("grub/x86_64-efi/command.lst", "module-list"),
        ("grub/arm64-efi/terminal.lst", "module-list"),
        ("grub/grub.cfg", "generic-cfg"),
        ("grub/machines/52:54:00:99:00:01.cfg", "machine-cfg"),
        ("grub/m/52-54-00-99-00-01/x86_64/kernel", "kernel"),
        ("grub/m/52-54-00-99-00-01/arm64/initrd1", "initrd"),
        ("grub/m/52-54-00-99-00-01/x86_64/image.efi", "efi"),
    ],
)
def test_names_of_the_chain(name, what):
    assert grub.parse(name).what == what


@pytest.mark.parametrize("name", ["boot/aa64/shimx64.efi", "snponly.efi", "grub/m/nope/x86_64/kernel",
                                  "grub/m/52-54-00-99-00-01/sparc/kernel", "x/revocations_sku.efi",
                                  "grub/machines/../../etc/passwd.cfg", "grub/m/52-54-00-99-00-01/../../x"])
def test_other_names_are_not_the_chain(name):
    assert grub.parse(name) is None


def test_tftp_files_of_the_chain(core):
    assert read(core.open_tftp("boot/x64/shimx64.efi", "10.0.0.50")) == b"SHIM"
    assert read(core.open_tftp("/grubx64.efi", "10.0.0.50")) == b"GRUB"
    for optional in ("boot/x64/revocations_sbat.efi", "/grub/x86_64-efi/fs.lst"):
        with pytest.raises(FileNotFound):
            core.open_tftp(optional, "10.0.0.50")
    generic = read(core.open_tftp("/grub/grub.cfg", "10.0.0.50")).decode()
    assert "configfile /grub/machines/${net_default_mac}.cfg" in generic
    assert read(core.open_tftp("/grub/m/52-54-00-99-00-01/x86_64/kernel", "10.0.0.50")) == b"KERNEL"
    assert read(core.open_tftp("/grub/m/52-54-00-99-00-01/x86_64/initrd0", "10.0.0.50")) == b"INITRD"
    with pytest.raises(FileNotFound, match="cannot fetch remote files"):  # no fetcher wired: a URL initrd
        core.open_tftp("/grub/m/52-54-00-99-00-01/x86_64/initrd1", "10.0.0.50")
    with pytest.raises(FileNotFound):
        core.open_tftp("/grub/m/52-54-00-99-00-01/x86_64/initrd2", "10.0.0.50")


def test_each_machine_gets_its_own_grub_cfg(core):
    sb = read(core.open_tftp(f"/grub/machines/{SB}.cfg", "10.0.0.50", "10.0.0.2")).decode()
    plain = read(core.open_tftp(f"/grub/machines/{PLAIN}.cfg", "10.0.0.51", "10.0.0.2")).decode()
    assert "linux /grub/m/52-54-00-99-00-01/${grub_cpu}/kernel 'console=ttyS0' 'host=sb-1'" in sb
    assert "'url=http://10.0.0.2/ignition?mac=52-54-00-99-00-01&exp=" in sb  # a signed URL, quoted for GRUB
    assert "'q='\\''x'\\'''" in sb  # a single quote survives GRUB's quoting
    assert "initrd /grub/m/52-54-00-99-00-01/${grub_cpu}/initrd0 /grub/m/52-54-00-99-00-01/${grub_cpu}/initrd1\n" in sb
    assert "linux /grub/m/52-54-00-99-00-02/${grub_cpu}/kernel 'console=ttyS0' 'host=plain'" in plain
    assert "initrd" not in plain
    assert "sb-1" not in plain


def test_unknown_held_and_ignored_machines_get_no_grub_cfg(core, tmp_path):
    with pytest.raises(FileNotFound, match="unknown machine"):
        core.open_tftp("/grub/machines/52:54:00:00:00:99.cfg", "10.0.0.60")
    write(core.settings.machines_dir / "52-54-00-99-00-04.toml", "secure_boot = true\n[boot]\nkernel = 'nope'\n")
    core.replace_catalog(build_catalog(load_machines(core.settings)))
    with pytest.raises(AccessDenied, match="held:"):
        core.open_tftp("/grub/machines/52:54:00:99:00:04.cfg", "10.0.0.61")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('secure_boot = true\nloader = "ipxe"\n[boot]\nkernel = "vmlinuz"\n', "iPXE is not signed"),
        ('loader = "grub"\n[boot]\nscript = "#!ipxe\\nexit"\n', "boot.script is iPXE's"),
        ('secure_boot = true\n[boot]\nchain = "https://x.example/"\n', "boot.chain is iPXE's"),
        ('loader = "syslinux"\n[boot]\nkernel = "vmlinuz"\n', 'expected "ipxe" or "grub"'),
    ],
)
def test_loader_errors_name_file_line_and_key(tmp_path, text, message):
    machines = tmp_path / "machines"
    write(machines / "52-54-00-99-00-09.toml", text)
    write(tmp_path / "files" / "vmlinuz", "K")
    result = load_machines(Settings(machines_dir=machines, files_root=tmp_path / "files"))
    assert len(result.errors) == 1 and message in str(result.errors[0]), result.errors
    assert str(result.errors[0]).startswith(f"{machines / '52-54-00-99-00-09.toml'}:")


def test_grub_that_never_asks_for_its_config_is_reported(core):
    now = [1000.0]
    core.timeline.clock = lambda: now[0]
    core.dhcp_seen(Client(SB, Arch.EFI64, Firmware.EFI_PXE), None, "", "10.0.0.70", 4011)
    read(core.open_tftp("boot/x64/grubx64.efi", "10.0.0.70"))
    read(core.open_tftp("boot/x64/grubx64.efi", "10.0.0.71"))  # another machine, which does ask
    read(core.open_tftp("/grub/grub.cfg", "10.0.0.71"))
    now[0] += 29
    assert core.loaders["grub"].overdue(now[0]) == []
    now[0] += 2
    assert core.loaders["grub"].overdue(now[0]) == [("10.0.0.70", SB)]
    events = core.timeline.machine(SB)["events"]
    assert events[-1]["stage"] == "grub-config-missing" and "next-server" in events[-1]["hint"]
    assert core.loaders["grub"].overdue(now[0] + 100) == []  # once


def test_grub_cfg_is_what_explain_prints(core):
    assert isinstance(core.open_tftp(f"/grub/machines/{PLAIN}.cfg", "10.0.0.51", "10.0.0.2"), io.BytesIO)
    served = read(core.open_tftp(f"/grub/machines/{PLAIN}.cfg", "10.0.0.51", "10.0.0.2")).decode()
    lines = explain_lines(core, PLAIN, "efi64", "10.0.0.2")
    shown = lines[lines.index(f"--- /grub/machines/{PLAIN}.cfg " + "-" * 30) + 1:]
    assert "\n".join(shown[:len(served.rstrip().split("\n"))]) == served.rstrip()


def test_a_local_boot_makes_the_disk_root_before_chainloading(core):
    """Debian's GRUB 2.06 hands a chainloaded image $root's device: the disk holding the loader must
    be $root first (loaders/grub.py, LOCAL_CFG); QEMU runs it in test_lifecycle_boot.py."""
    write(core.settings.machines_dir / "52-54-00-99-00-05.toml", "secure_boot = true\n[boot]\nlocal = true\n")
    core.replace_catalog(build_catalog(load_machines(core.settings)))
    cfg = read(core.open_tftp("/grub/machines/52:54:00:99:00:05.cfg", "10.0.0.62", "10.0.0.2")).decode()
    search = cfg.index("search --no-floppy --file --set=root $nbd_efi")
    assert search < cfg.index("chainloader $nbd_efi") < cfg.rindex("exit")
    assert "linux" not in cfg
