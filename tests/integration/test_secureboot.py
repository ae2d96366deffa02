"""Secure Boot over PXE with real firmware: OVMF with Microsoft's keys and Secure Boot enforced
boots shim → Debian's signed network GRUB → the machine's own grub.cfg → Debian's signed kernel,
everything served by netbootd over TFTP.

netbootd runs on a host of its own beside the site's DHCP server, which names it as next-server
(BOOTP siaddr): Debian 12's signed GRUB takes its TFTP server from the site server's answer, not
from a proxy's (docs/firmware/secure-boot.md). Without that, netbootd says what happened.
"""

from __future__ import annotations

import json

import pytest

from .conftest import ProjectLab, need
from .test_image_boot import LabRegistry, check_cached, digest_of

pytestmark = pytest.mark.integration

SB_A = "52:54:00:99:00:01"
SB_B = "52:54:00:99:00:02"


@pytest.fixture
def sb_lab(tmp_path, assets, request):
    """netbootd on its own host; the site server names it as next-server."""
    from .conftest import _lab

    yield from _lab(tmp_path, assets, request, host="own-host", site_next_server=True)


def sb_machine(lab: ProjectLab, mac: str, value: str, boot: str | None = None) -> None:
    # no `quiet`: the kernel's Secure Boot lines must reach the console
    boot = boot or 'kernel = "vmlinuz"\ninitrds = ["initrd.cpio.gz"]'
    lab.machine(mac, f"""\
        secure_boot = true
        [vars]
        value = "{value}"
        [boot]
        {boot}
        cmdline = "console=ttyS0 panic=-1 nbd_value={{{{ value }}}} nbd_ign={{{{ ignition_url }}}}"
        [ignition]
        inline = '{{"ignition": {{"version": "3.4.0"}}, "netbootd_marker": "{value}-ign"}}'
        """)


def check_secure_boot(lab: ProjectLab, mac: str, value: str, marker) -> None:
    assert f"nbd_value={value}" in marker.cmdline.split(), marker.cmdline
    assert json.loads(marker.ignition)["netbootd_marker"] == f"{value}-ign"
    console = next(b for b in lab.boots if b.mac == mac).console()
    assert "secureboot: Secure boot enabled" in console, "the kernel did not report Secure Boot"
    assert "EFI stub: UEFI Secure Boot is enabled." in console


def test_shim_grub_signed_kernel_per_machine(sb_lab):
    """(1) and (2): two Secure Boot machines at once, each its own grub.cfg and command line."""
    need("uefi-secure")
    lab = sb_lab
    sb_machine(lab, SB_A, "alpha")
    sb_machine(lab, SB_B, "beta")
    lab.start_netbootd()
    a, b = lab.booted_many([(SB_A, "uefi-secure"), (SB_B, "uefi-secure")])
    check_secure_boot(lab, SB_A, "alpha", a)
    check_secure_boot(lab, SB_B, "beta", b)
    # the chain as netbootd saw it, in the timeline of each machine
    for mac in (SB_A, SB_B):
        files = [e["file"] for e in lab.get_json(f"/machines/{mac}")["events"] if e["stage"] == "tftp" and "bytes" in e]
        want = ["boot/x64/shimx64.efi", "boot/x64/grubx64.efi", "/grub/grub.cfg", f"/grub/machines/{mac}.cfg",
                f"/grub/m/{mac.replace(':', '-')}/x86_64/kernel", f"/grub/m/{mac.replace(':', '-')}/x86_64/initrd0"]
        assert [f for f in files if f in want] == want, files
    log = lab.netbootd_log()
    assert "GRUB never asked" not in log


@pytest.mark.registry
def test_image_machine_boots_through_grub_from_a_registry(sb_lab):
    """(3) an `image = ...` machine under Secure Boot: GRUB (no HTTP) gets the image's kernel and
    initramfs layers over TFTP, fetched by netbootd from a real registry into its cache."""
    need("uefi-secure")
    lab = sb_lab
    registry = LabRegistry(lab)
    image = f"{registry_host()}/boot/os:sb"
    registry.push("boot/os", "sb", [("application/vnd.ironcore.image.kernel", lab.assets.kernel),
                                   ("application/vnd.ironcore.image.initramfs", lab.assets.initrd)])
    registry.serve()
    sb_machine(lab, SB_A, "imaged", boot=f'image = "{image}"')
    lab.start_netbootd()
    marker = lab.booted(SB_A, "uefi-secure")
    check_secure_boot(lab, SB_A, "imaged", marker)
    for content in (lab.assets.kernel, lab.assets.initrd):
        digest = digest_of(content)
        assert len(registry.blob_gets(digest)) == 1, f"{digest}: not exactly one upstream GET"
        check_cached(lab, digest, content)


def registry_host() -> str:
    from .test_image_boot import REGISTRY

    return REGISTRY


def test_grub_asking_the_wrong_server_is_reported(tmp_path, assets, request):
    """Without next-server on the site server, GRUB asks the site server for its configuration and
    never reaches netbootd: netbootd says so (log and timeline) instead of staying silent."""
    need("uefi-secure")
    from .conftest import _lab

    for lab in _lab(tmp_path, assets, request, host="own-host"):
        sb_machine(lab, SB_A, "lost")
        lab.start_netbootd()
        machine = lab.launch(SB_A, "uefi-secure")
        lab.wait_log(r"tftp transfer completed .*file=boot/x64/grubx64.efi", timeout=120)
        found = lab.wait_log(r"GRUB never asked for its configuration .*", timeout=45)
        machine.proc.stop()
        assert "mac=52:54:00:99:00:01" in found.group(0) and "next-server" in found.group(0), found.group(0)
        events = lab.get_json(f"/machines/{SB_A}")["events"]
        missing = [e for e in events if e["stage"] == "grub-config-missing"]
        assert missing and "docs/firmware/secure-boot.md" in missing[0]["hint"], events
        assert not any("grub.cfg" in str(e.get("file", "")) for e in events), "GRUB did reach netbootd"
