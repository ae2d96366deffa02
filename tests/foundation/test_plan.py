"""The BootPlan: one derivation of what a machine boots, memoised per catalog generation, and the
template context built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import IpxeBinaries, RegistrySettings, Settings
from netbootd.config.templates import BUILTINS
from netbootd.core.context import boot_context
from netbootd.core.decide import BootCore
from netbootd.core.plan import FILE, LAYER, URL, build_plan
from netbootd.model import Arch, Client, Firmware

KERNEL = "52:54:00:00:00:01"
IMAGE = "52:54:00:00:00:02"
EFI = "52:54:00:00:00:03"
REF = "ghcr.io/lab/os:v1"


@pytest.fixture
def core(tmp_path: Path) -> BootCore:
    machines, files = tmp_path / "machines", tmp_path / "files"
    machines.mkdir()
    files.mkdir()
    for name in ("vmlinuz", "initrd.img", "os.efi"):
        (files / name).write_bytes(b"x")
    (machines / "52-54-00-00-00-01.toml").write_text(
        '[vars]\nrole = "db"\n[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img", "https://mirror.example/extra.img"]\n'
        'cmdline = "role={{ role }}"\n')
    (machines / "52-54-00-00-00-02.toml").write_text(f'[boot]\nimage = "{REF}"\n')
    (machines / "52-54-00-00-00-03.toml").write_text('[boot]\nefi = "os.efi"\n')
    settings = Settings(machines_dir=machines, files_root=files, registry=RegistrySettings(allowed=("ghcr.io",)),
                        ipxe=IpxeBinaries(arm64=""))
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result))


def test_a_kernel_machines_artefacts_name_their_sources(core):
    plan = core.plan(core.find(KERNEL), Arch.EFI64, Firmware.EFI_PXE)
    assert plan.loader == "ipxe" and plan.bootfile == "snponly.efi" and plan.refusal is None
    assert (plan.kernel.source, plan.kernel.location) == (FILE, "vmlinuz")
    assert [(a.source, a.location) for a in plan.initrds] == [(FILE, "initrd.img"), (URL, "https://mirror.example/extra.img")]
    assert list(plan.artefacts()) == ["kernel", "initrd0", "initrd1"]


def test_an_image_machines_artefacts_are_layers_until_and_after_resolution(core):
    machine = core.find(IMAGE)
    plan = core.plan(machine, Arch.ARM64, Firmware.IPXE)
    assert plan.kernel.source == LAYER and plan.kernel.arch == "arm64" and plan.squashfs is not None
    assert plan.efi is None and not plan.boots_efi
    core.image_resolved(REF, "arm64", frozenset({"uki"}))  # a new generation of plans
    plan = core.plan(machine, Arch.ARM64, Firmware.IPXE)
    assert plan.kernel is None and plan.boots_efi and list(plan.artefacts()) == ["image.efi"]


def test_refusals_say_why(core):
    assert "needs UEFI firmware" in core.plan(core.find(EFI), Arch.BIOS, Firmware.BIOS_PXE).refusal
    # no arm64 iPXE configured and no GRUB installed here: a kernel boot over HTTP has nothing to run
    refusal = core.plan(core.find(KERNEL), Arch.ARM64, Firmware.HTTP_BOOT).refusal
    assert "needs iPXE" in refusal and "ipxe.arm64" in refusal
    # the EFI binary itself is what UEFI HTTP boot runs: no loader
    plan = core.plan(core.find(EFI), Arch.EFI64, Firmware.HTTP_BOOT)
    assert plan.loader == "" and plan.refusal is None and plan.efi.location == "os.efi"


def test_plans_are_memoised_per_catalog_generation(core):
    machine = core.find(KERNEL)
    first = core.plan(machine, Arch.EFI64, Firmware.EFI_PXE)
    assert core.plan(machine, Arch.EFI64, Firmware.EFI_PXE) is first
    core.decide(Client(KERNEL, Arch.EFI64, Firmware.EFI_PXE), "10.0.0.2")
    assert core.plan(machine, Arch.EFI64, Firmware.EFI_PXE) is first  # a decision reads the memo
    core.replace_catalog(core.catalog)
    assert core.plan(machine, Arch.EFI64, Firmware.EFI_PXE) is not first
    assert core.plan(machine, Arch.EFI64, Firmware.EFI_PXE) == first  # the same plan, derived again


def test_the_plan_is_a_pure_function_of_its_inputs(core):
    machine = core.find(IMAGE)
    args = (machine, Arch.EFI64, Firmware.EFI_PXE, frozenset({"kernel", "initramfs"}), core.loaders)
    assert build_plan(*args) == build_plan(*args)
    assert build_plan(*args).squashfs is None  # resolved without a squashfs layer: none offered


def test_the_boot_context_has_exactly_the_names_templates_are_validated_against(core):
    for mac in (KERNEL, IMAGE, EFI):
        machine = core.find(mac)
        ctx = boot_context(core.plan(machine, Arch.EFI64, Firmware.IPXE), mac, None, "http://10.0.0.2", core.signer)
        assert set(ctx) - set(machine.vars) == set(BUILTINS)
    ctx = boot_context(core.plan(core.find(KERNEL), Arch.EFI64, Firmware.IPXE), KERNEL, None, "http://10.0.0.2")
    assert ctx["kernel_url"] == "http://10.0.0.2/files/vmlinuz"
    assert ctx["initrd_urls"] == "http://10.0.0.2/files/initrd.img https://mirror.example/extra.img"
    assert ctx["role"] == "db"
