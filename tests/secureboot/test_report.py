"""What `netbootd check` and `netbootd explain` say about the binaries a Secure Boot machine is offered."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from netbootd import cli
from netbootd.config.machines import Boot, BootKind, Machine
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore
from netbootd.core.explain import secure_boot_lines
from netbootd.core.secureboot import (
    OfferedBinary,
    boot_binaries,
    findings,
    findings_for,
    is_secure_boot,
    secure_boot_binaries,
)
from netbootd.imageref import parse_reference

MAC = "52-54-00-12-34-56"
NOT_CHECKED = "(not checked against the firmware's db)"


@attrs.frozen
class _SecureBootMachine(Machine):
    """A Machine with the `secure_boot` flag, for as long as Machine itself has none."""

    secure_boot: bool = True


def secure(machine: Machine) -> Machine:
    """The same machine with secure_boot = true, whether or not Machine has the field yet."""
    if "secure_boot" in attrs.fields_dict(Machine):
        return attrs.evolve(machine, secure_boot=True)
    return _SecureBootMachine(**attrs.asdict(machine, recurse=False))


def machine(name: str, **boot) -> Machine:
    """A machine as the loader builds it: `machine(MAC, kernel="vmlinuz")`, `machine(MAC, kind=BootKind.LOCAL)`."""
    kind = boot.pop("kind", None) or BootKind(next(k for k in boot if k in ("kernel", "efi", "image")))
    return Machine(name=name, source=Path(f"/conf/machines/{name}.toml"), boot=Boot(kind=kind, **boot),
                   mac=name.replace("-", ":"))


@pytest.fixture
def conf(tmp_path, kernel, snponly) -> Settings:
    """A configuration directory with Debian's signed kernel and iPXE's unsigned EFI binary under files/."""
    (tmp_path / "files" / "uki").mkdir(parents=True)
    (tmp_path / "machines").mkdir()
    shutil.copy(kernel, tmp_path / "files" / "vmlinuz")
    shutil.copy(snponly, tmp_path / "files" / "uki" / "os.efi")
    return Settings(machines_dir=tmp_path / "machines", files_root=tmp_path / "files",
                    source=tmp_path / "netbootd.toml")


def test_what_each_boot_kind_offers(conf):
    files = conf.files_root
    assert list(boot_binaries(conf, machine(MAC, kernel="vmlinuz", initrds=("initrd.img",)))) == [
        OfferedBinary("kernel", "files/vmlinuz", files / "vmlinuz")]  # initrds: Secure Boot does not check them
    assert list(boot_binaries(conf, machine(MAC, efi="uki/os.efi"))) == [
        OfferedBinary("uki", "files/uki/os.efi", files / "uki" / "os.efi")]
    assert list(boot_binaries(conf, machine(MAC, kernel="https://mirror.example/vmlinuz"))) == [
        OfferedBinary("kernel", "https://mirror.example/vmlinuz", None)]
    image = parse_reference("ghcr.io/org/os:1")
    assert list(boot_binaries(conf, machine(MAC, image=image))) == [OfferedBinary("kernel/uki", str(image), None)]
    assert list(boot_binaries(conf, machine(MAC, kind=BootKind.LOCAL))) == []
    # Outside the configuration's directory: the absolute path.
    elsewhere = attrs.evolve(conf, files_root=Path("/srv/boot"))
    [outside] = boot_binaries(elsewhere, machine(MAC, kernel="vmlinuz"))
    assert outside.shown == "/srv/boot/vmlinuz"


def test_report_lines_signed_unsigned_and_remote(conf):
    found = findings_for(MAC, [
        OfferedBinary("kernel", "files/vmlinuz", conf.files_root / "vmlinuz"),
        OfferedBinary("uki", "files/uki/os.efi", conf.files_root / "uki" / "os.efi"),
        OfferedBinary("kernel", "https://mirror.example/vmlinuz", None),
    ])
    kernel, uki, remote = (f.line() for f in found)
    assert kernel.startswith(f'{MAC}: secure boot: kernel files/vmlinuz: signed by "Debian Secure Boot Signer ')
    assert kernel.endswith(f' - linux", issuer "Debian Secure Boot CA" {NOT_CHECKED}')
    assert uki == f"{MAC}: secure boot: uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it"
    assert remote == f"{MAC}: secure boot: kernel https://mirror.example/vmlinuz: not inspected (remote: fetched at boot)"
    assert [f.refused for f in found] == [False, True, False]
    assert found[1].line(with_machine=False) == "uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it"


def test_report_lines_for_damaged_and_unreadable_files(tmp_path, snakeoil_signed, shim):
    changed = tmp_path / "changed.efi"
    data = bytearray(snakeoil_signed.read_bytes())
    data[0x1000] ^= 0x01  # inside the code, after signing
    changed.write_bytes(bytes(data))
    garbage = tmp_path / "garbage.efi"
    garbage.write_bytes(b"\x7fELF" + bytes(100))
    found = findings_for(MAC, [
        OfferedBinary("uki", "changed.efi", changed),
        OfferedBinary("uki", "garbage.efi", garbage),
        OfferedBinary("uki", "gone.efi", tmp_path / "gone.efi"),
        OfferedBinary("shim", str(shim), shim),
    ])
    lines = [f.line(with_machine=False) for f in found]
    assert lines[0] == ("uki changed.efi: SIGNATURE INVALID: the file does not match its signature's digest: it was "
                        'changed after signing (signer "SnakeOil"): Secure Boot firmware will refuse it')
    assert lines[1] == "uki garbage.efi: NOT AN EFI IMAGE (no MZ header): Secure Boot firmware will refuse it"
    assert lines[2] == "uki gone.efi: CANNOT CHECK ITS SIGNATURE: cannot read it (No such file or directory)"
    assert lines[3].startswith(f'shim {shim}: signed by "Microsoft Windows UEFI Driver Publisher", issuer '
                               '"Microsoft Corporation UEFI CA 2011"; and by "Microsoft')
    assert lines[3].endswith(NOT_CHECKED)
    assert [f.refused for f in found] == [True, True, True, False]


def test_only_secure_boot_machines_are_reported_and_loader_stages_plug_in_front(conf, shim, grub):
    plain = machine("52-54-00-00-00-01", efi="uki/os.efi")
    sb = secure(machine("52-54-00-00-00-02", efi="uki/os.efi"))
    sb_kernel = secure(machine("52-54-00-00-00-03", kernel="vmlinuz"))
    assert not is_secure_boot(plain) and is_secure_boot(sb)
    found = findings(conf, [sb_kernel, plain, sb])
    assert [(f.machine, f.binary.role, f.refused) for f in found] == [
        ("52-54-00-00-00-02", "uki", True), ("52-54-00-00-00-03", "kernel", False)]

    def loader(settings, m):  # what the GRUB loader provides: shim, then GRUB, in boot order
        yield OfferedBinary("shim", str(shim), shim)
        yield OfferedBinary("grub", str(grub), grub)

    providers = (loader, boot_binaries)
    assert [b.role for b in secure_boot_binaries(conf, sb_kernel, providers)] == ["shim", "grub", "kernel"]
    found = findings(conf, [sb_kernel], providers)
    assert [f.refused for f in found] == [False, False, False]
    assert '"Debian Secure Boot Signer' in found[1].line() and found[1].line().endswith(NOT_CHECKED)


def test_check_and_explain_helpers_print_and_count(conf, capsys):
    machines = [secure(machine(MAC, efi="uki/os.efi")), secure(machine("52-54-00-00-00-03", kernel="vmlinuz")),
                machine("52-54-00-00-00-09", efi="uki/os.efi")]
    assert cli._check_secure_boot(conf, machines) == 1
    out = capsys.readouterr().out.splitlines()  # by machine name
    assert out[0].startswith('52-54-00-00-00-03: secure boot: kernel files/vmlinuz: signed by "Debian')
    assert out[1] == f"{MAC}: secure boot: uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it"
    assert len(out) == 2  # 52-54-00-00-00-09 is not a Secure Boot machine
    core = BootCore(conf)
    assert secure_boot_lines(core, machines[0]) == [
        "--- Secure Boot signatures " + "-" * 38,
        "uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it"]
    assert secure_boot_lines(core, machines[2]) == []


def netbootd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netbootd", *args], capture_output=True, text=True, timeout=60)


def write_config(root: Path, machines: dict[str, str]) -> Path:
    (root / "machines").mkdir(exist_ok=True)
    for name, text in machines.items():
        (root / "machines" / f"{name}.toml").write_text(textwrap.dedent(text).lstrip())
    cfg = root / "netbootd.toml"
    cfg.write_text('machines_dir = "machines"\nfiles_root = "files"\nstate_dir = "state"\n')
    return cfg


def test_check_does_not_flag_unsigned_binaries_of_machines_without_secure_boot(conf):
    cfg = write_config(conf.files_root.parent, {MAC: '[boot]\nefi = "uki/os.efi"\n'})
    out = netbootd("check", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "secure boot" not in out.stdout


needs_field = pytest.mark.skipif(
    "secure_boot" not in attrs.fields_dict(Machine),
    reason="machine files have no secure_boot key yet (the GRUB loader adds it)")


@needs_field
def test_check_flags_an_unsigned_binary_for_a_secure_boot_machine_before_any_boot(conf):
    cfg = write_config(conf.files_root.parent, {
        MAC: 'secure_boot = true\n[boot]\nefi = "uki/os.efi"\n',
        "52-54-00-00-00-03": 'secure_boot = true\n[boot]\nkernel = "vmlinuz"\n',
        "52-54-00-00-00-09": '[boot]\nefi = "uki/os.efi"\n',
    })
    out = netbootd("check", str(cfg))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"{MAC}: secure boot: uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it" in lines
    assert any(line.startswith('52-54-00-00-00-03: secure boot: kernel files/vmlinuz: signed by "Debian Secure Boot')
               and line.endswith(NOT_CHECKED) for line in lines)
    assert not any(line.startswith("52-54-00-00-00-09") for line in lines)
    assert "1 binary(ies) Secure Boot would refuse" in out.stderr

    explained = netbootd("explain", MAC, "--config", str(cfg))
    assert explained.returncode == 0, explained.stdout + explained.stderr
    section = explained.stdout.split("--- Secure Boot signatures ", 1)[1].splitlines()[1:]
    assert "uki files/uki/os.efi: NOT SIGNED: Secure Boot firmware will refuse it" in section
