"""arm64 machines network-boot from netbootd: AAVMF (QEMU's arm64 UEFI) under TCG, on Debian's arm64
kernel with the same busybox /init as the x86 guest (assets.sh builds both; arm64 in .assets/arm64).

- (a) `arm64-uefi`: AAVMF's PXE → netbootd's GRUB path (on the defaults: no arm64 iPXE, so GRUB):
  grubaa64 → grub.cfg → the machine's own grub.cfg → kernel + initramfs over TFTP;
- (b) `arm64-http`: UEFI HTTP boot of an arm64 UKI (`efi = ...`), and of a kernel machine on the
  defaults: a UKI netbootd assembles of its kernel, initramfs and command line;
- (c) `arm64-secure` (Microsoft's keys, Secure Boot enforced) + `secure_boot = true`: shimaa64 →
  grubaa64 → Debian's signed arm64 kernel;
- (d) `arm64-uefi` → Debian 13's arm64 iPXE (deploy/ipxe-arm64.sh) → netbootd's iPXE script → kernel
  + initramfs over HTTP; and `arm64-secure` refusing that unsigned iPXE.

netbootd's shim and GRUB for arm64 are Debian 12's shim-signed:arm64 and grub-efi-arm64-signed,
taken out of their packages by assets.sh (they cannot be installed beside the amd64 ones) and named
in the lab's [grub] settings. When the arm64 assets cannot be built these tests skip, saying why
(under CI=true they fail: CI installs what they need).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from netbootd.testing.firmware import firmware
from netbootd.testing.lab import missing_requirements
from netbootd.testing.tryboot import preflight

from .conftest import ASSETS, ASSETS_SCRIPT, BOOT_IP, HTTP_PORT, ProjectLab, _lab

pytestmark = pytest.mark.integration

ARM64 = ASSETS / "arm64"
MAC = "52:54:00:a6:40:01"
UKI_CMDLINE = "console=ttyAMA0 panic=-1 nbd_uki=1"  # assets.sh's ARM64_UKI_CMDLINE


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs what the arm64 tests need; they must not skip there)")
    pytest.skip(reason)


def need_arm64(firmware_name: str) -> None:
    reason = missing_requirements() or firmware(firmware_name).missing()
    if reason:
        skip_or_fail(reason)


@attrs.frozen
class Arm64Assets:
    kernel: Path
    initrd: Path
    uki: Path
    shim: Path  # shimaa64.efi.signed
    grub: Path  # grubnetaa64.efi.signed
    ipxe_dir: Path  # holds ipxe-arm64.efi

    @property
    def ipxe(self) -> Path:
        return self.ipxe_dir / "ipxe-arm64.efi"


@pytest.fixture(scope="session")
def arm64(assets) -> Arm64Assets:
    """assets.sh's arm64 files (the `assets` fixture has run it), or skip saying why they are missing."""
    found = Arm64Assets(ARM64 / "vmlinuz", ARM64 / "initrd.cpio.gz", ARM64 / "uki.efi",
                        ARM64 / "shimaa64.efi.signed", ARM64 / "grubnetaa64.efi.signed", ARM64 / "ipxe")
    why = ARM64 / "unavailable"
    if why.is_file():
        skip_or_fail(f"{ASSETS_SCRIPT} could not build the arm64 assets: {why.read_text().strip()}")
    absent = [str(p) for p in (found.kernel, found.initrd, found.uki, found.shim, found.grub) if not p.is_file()]
    if absent:
        skip_or_fail(f"{ASSETS_SCRIPT} ran but left out {', '.join(absent)}")
    return found


def serve_arm64(lab: ProjectLab, arm64: Arm64Assets) -> None:
    """The arm64 kernel, initramfs and UKI under files/arm64/, and netbootd's arm64 shim and GRUB."""
    (lab.files / "arm64").mkdir(exist_ok=True)
    for source in (arm64.kernel, arm64.initrd, arm64.uki):
        shutil.copy(source, lab.files / "arm64" / source.name)
    s = lab.settings
    lab.write_settings(attrs.evolve(s, grub=attrs.evolve(s.grub, arm64_shim=arm64.shim, arm64_grub=arm64.grub)))


def kernel_machine(lab: ProjectLab, value: str, loader: str) -> None:
    """An arm64 kernel boot whose command line and Ignition carry this machine's own value.
    No `quiet`: the Secure Boot test reads the kernel's log."""
    lab.machine(MAC, f"""\
        {loader}
        [vars]
        value = "{value}"
        [boot]
        kernel = "arm64/vmlinuz"
        initrds = ["arm64/initrd.cpio.gz"]
        cmdline = "console=ttyAMA0 panic=-1 nbd_value={{{{ value }}}} nbd_ign={{{{ ignition_url }}}}"
        [ignition]
        inline = '{{"ignition": {{"version": "3.4.0"}}, "netbootd_marker": "{value}-ign"}}'
        """)


def check_marker(marker, value: str) -> None:
    assert marker.mac == MAC
    assert f"nbd_value={value}" in marker.cmdline.split(), marker.cmdline
    assert json.loads(marker.ignition)["netbootd_marker"] == f"{value}-ign", marker.ignition


def tftp_files(lab: ProjectLab) -> list[str]:
    """The files netbootd sent the machine whole over TFTP, in order (its timeline)."""
    return [e["file"] for e in lab.get_json(f"/machines/{MAC}")["events"] if e["stage"] == "tftp" and "bytes" in e]


def grub_chain(shim: bool) -> list[str]:
    m = MAC.replace(":", "-")
    return [*(["boot/aa64/shimaa64.efi"] if shim else []), "boot/aa64/grubaa64.efi", "/grub/grub.cfg",
            f"/grub/machines/{MAC}.cfg", f"/grub/m/{m}/arm64/kernel", f"/grub/m/{m}/arm64/initrd0"]  # GRUB fills in ${grub_cpu}


@pytest.fixture
def grub_lab(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """netbootd on its own host; the site server names it as next-server (Debian 12's signed GRUB
    takes its TFTP server from the site's ACK: docs/firmware/secure-boot.md)."""
    yield from _lab(tmp_path, assets, request, host="own-host", site_next_server=True)


# ---------------------------------------------------------------------------------- (a) GRUB


def test_pxe_grub_path(grub_lab, arm64):
    """AAVMF PXE (arch 11) → 4011 → grubaa64.efi → grub.cfg → this machine's grub.cfg → the arm64
    kernel and initramfs over TFTP → the marker with this machine's value. On the defaults: the
    machine file names no loader and ipxe.arm64 is unset, so GRUB (iPXE's fallback) carries it."""
    need_arm64("arm64-uefi")
    lab = grub_lab
    serve_arm64(lab, arm64)
    assert lab.settings.ipxe.arm64 == "", "not the default settings: an arm64 iPXE is configured"
    kernel_machine(lab, "arm-grub-7", "")
    lab.start_netbootd()
    marker = lab.booted(MAC, "arm64-uefi")
    check_marker(marker, "arm-grub-7")
    assert [f for f in tftp_files(lab) if f in grub_chain(shim=False)] == grub_chain(shim=False), tftp_files(lab)
    log = lab.netbootd_log()
    assert 'arch=arm64 firmware=efi-pxe offered="tftp boot/aa64/grubaa64.efi"' in log, "not offered arm64 GRUB"


def test_provisioned_once_then_grub_boots_the_disk(grub_lab, arm64):
    """Provision once on arm64: the installer (GRUB → arm64 kernel and initramfs) writes the arm64
    test disk (assets.sh: systemd-boot as EFI/BOOT/BOOTAA64.EFI) and calls its done URL; on the next
    power-on the machine's grub.cfg chainloads the disk's loader, whose own system prints the marker."""
    need_arm64("arm64-uefi")
    image = ARM64 / "disk.img.gz"
    if not image.is_file():
        skip_or_fail(f"{ASSETS_SCRIPT} ran but left out {image}")
    lab = grub_lab
    serve_arm64(lab, arm64)
    shutil.copy(image, lab.files / "arm64" / "disk.img.gz")
    lab.machine(MAC, """\
        loader = "grub"
        [lifecycle]
        once = true
        [boot]
        kernel = "arm64/vmlinuz"
        initrds = ["arm64/initrd.cpio.gz"]
        cmdline = 'console=ttyAMA0 panic=-1 nbd_install={{ file("arm64/disk.img.gz") }} nbd_done={{ done_url }}'
        """)
    lab.start_netbootd()
    result = lab.boot(MAC, "arm64-uefi", r"NETBOOTD-DISK-OK firmware=\S+", 900, disk="96M", reboots=1)
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    assert "NETBOOTD-INSTALL-DONE" in result.console
    last = result.power_ons[-1]
    assert "netbootd: chainloading (hd0,msdos1)/EFI/BOOT/BOOTAA64.EFI" in last.console, last.console
    assert f"{result.match} disk_marker=systemd-boot" in last.console
    assert [(e["state"], e["by"]) for e in result.timeline if e["stage"] == "lifecycle"] == [("provisioned", "done_url")]
    kernels = [e for e in result.timeline if e["stage"] == "tftp" and str(e.get("file", "")).endswith("/arm64/kernel")
               and "bytes" in e]
    assert len(kernels) == 1, "the installer ran again"
    seconds = round(lab.boots[-1].proc.started_wall + result.seconds - last.started, 1)
    print("\n  " + "\n  ".join(result.paths()) + f"\n  power-on {last.number} to the disk's own system: {seconds} s")


# ---------------------------------------------------------------------------------- (b) HTTP boot


def test_http_boot_uki(lab, arm64):
    """AAVMF HTTP boot (arch 19): netbootd offers the machine's arm64 UKI by URL; the firmware
    downloads and starts it; the UKI's own command line reaches the marker."""
    need_arm64("arm64-http")
    serve_arm64(lab, arm64)
    lab.machine(MAC, '[boot]\nefi = "arm64/uki.efi"\n')
    url = f"http://{BOOT_IP}:{HTTP_PORT}/files/arm64/uki.efi"
    assert f"http-efi {url}" in preflight(str(lab.settings_path), MAC, "arm64-http"), "netbootd try asks as arm64 HTTP"
    lab.start_netbootd()
    marker = lab.booted(MAC, "arm64-http")
    assert marker.mac == MAC
    assert marker.cmdline.split() == UKI_CMDLINE.split(), "not the UKI's own command line"
    log = lab.netbootd_log()
    assert f'arch=arm64 firmware=http-boot offered="http-efi {url}"' in log, "arm64 HTTP boot was not offered the UKI"
    events = lab.get_json(f"/machines/{MAC}")["events"]
    size = arm64.uki.stat().st_size
    assert any(e["stage"] == "http" and e.get("path") == "/files/arm64/uki.efi" and e.get("bytes") == size for e in events), \
        "the UKI was not served whole"


def test_http_boot_assembled_uki(lab, arm64):
    """AAVMF HTTP boot (arch 19) of a kernel machine on the defaults (no arm64 iPXE): netbootd
    offers /uki/<mac>/arm64.efi, assembles the UKI of the machine's kernel, initramfs and rendered
    command line on systemd's arm64 stub, and the firmware runs it: the marker carries the
    machine's value and the Ignition its signed URL (made for this request) fetched.

    The stub: uki.arm64_stub names assets.sh's copy, the amd64 host's one step (an arm64 host
    has it at the default path from systemd-boot-efi)."""
    need_arm64("arm64-http")
    serve_arm64(lab, arm64)
    s = lab.settings
    assert s.ipxe.arm64 == "", "not the default settings: an arm64 iPXE is configured"
    lab.write_settings(attrs.evolve(s, uki=attrs.evolve(s.uki, arm64_stub=ARM64 / "linuxaa64.efi.stub")))
    kernel_machine(lab, "arm-uki-9", "")
    path = f"/uki/{MAC.replace(':', '-')}/arm64.efi"
    url = f"http://{BOOT_IP}:{HTTP_PORT}{path}"
    assert f"http-efi {url}" in preflight(str(lab.settings_path), MAC, "arm64-http"), "not offered the assembled UKI"
    lab.start_netbootd()
    marker = lab.booted(MAC, "arm64-http")
    check_marker(marker, "arm-uki-9")
    assert "initrd=" not in marker.cmdline, "the stub passes the initrd itself: no initrd= on the command line"
    log = lab.netbootd_log()
    assert f'arch=arm64 firmware=http-boot offered="http-efi {url}"' in log, "arm64 HTTP boot was not offered the UKI"
    assert "uki assembled" in log and "arch=arm64" in log, "netbootd did not assemble the UKI"
    served = [e.get("bytes", 0) for e in lab.get_json(f"/machines/{MAC}")["events"]
              if e["stage"] == "http" and e.get("path") == path]  # EDK2 asks HEAD (0 bytes), then GET
    assert max(served, default=0) > arm64.kernel.stat().st_size + arm64.initrd.stat().st_size, served


# ---------------------------------------------------------------------------------- (c) Secure Boot


def test_secure_boot_shim_grub_signed_kernel(grub_lab, arm64):
    """AAVMF with Microsoft's keys, Secure Boot enforced: shimaa64 (signed by Microsoft) → grubaa64
    and Debian's arm64 kernel (signed by Debian, verified by shim) → the marker, and the kernel says
    Secure Boot is on."""
    need_arm64("arm64-secure")
    lab = grub_lab
    serve_arm64(lab, arm64)
    kernel_machine(lab, "arm-sb-3", "secure_boot = true")
    lab.start_netbootd()
    marker = lab.booted(MAC, "arm64-secure")
    check_marker(marker, "arm-sb-3")
    console = lab.boots[-1].console()
    assert "secureboot: Secure boot enabled" in console, "the kernel did not report Secure Boot"
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    assert [f for f in tftp_files(lab) if f in grub_chain(shim=True)] == grub_chain(shim=True), tftp_files(lab)


# ---------------------------------------------------------------------------------- (d) iPXE


def ipxe_settings(lab: ProjectLab, arm64: Arm64Assets) -> None:
    """Default settings plus Debian 13's arm64 iPXE, as deploy/ipxe-arm64.sh tells an operator."""
    if not arm64.ipxe.is_file():
        why = ARM64 / "ipxe.unavailable"
        skip_or_fail(f"no arm64 iPXE: deploy/ipxe-arm64.sh failed in {ASSETS_SCRIPT}: "
                     f"{why.read_text().strip() if why.is_file() else 'see ' + str(ARM64 / 'ipxe.log')}")
    s = lab.settings
    lab.write_settings(attrs.evolve(s, ipxe=attrs.evolve(s.ipxe, arm64=arm64.ipxe.name),
                                    tftp=attrs.evolve(s.tftp, ipxe_dir=arm64.ipxe_dir)))


def test_pxe_ipxe_script(lab, arm64):
    """AAVMF PXE → ipxe-arm64.efi over TFTP → iPXE asks again (user class iPXE) → netbootd's script
    for arm64 → kernel and initramfs over HTTP → the marker with this machine's value."""
    need_arm64("arm64-uefi")
    serve_arm64(lab, arm64)
    ipxe_settings(lab, arm64)
    kernel_machine(lab, "arm-ipxe-5", 'loader = "ipxe"')
    lab.start_netbootd()
    marker = lab.booted(MAC, "arm64-uefi")
    check_marker(marker, "arm-ipxe-5")
    log = lab.netbootd_log()
    assert 'arch=arm64 firmware=efi-pxe offered="tftp ipxe-arm64.efi"' in log, "not offered the arm64 iPXE"
    assert "ipxe-arm64.efi" in tftp_files(lab), "the arm64 iPXE was not sent whole"
    assert f'arch=arm64 firmware=ipxe offered="ipxe-script http://{BOOT_IP}:{HTTP_PORT}/ipxe?mac=' in log, \
        "iPXE did not ask netbootd for its script"
    assert "script sent" in log and "kind=kernel" in log


def test_secure_boot_refuses_unsigned_ipxe(lab, arm64):
    """`arm64-secure` enforces Secure Boot: the unsigned arm64 iPXE is sent whole, then refused by
    the firmware (the lab stops at the refusal, not at a timeout)."""
    need_arm64("arm64-secure")
    serve_arm64(lab, arm64)
    ipxe_settings(lab, arm64)
    kernel_machine(lab, "arm-sb-ipxe", 'loader = "ipxe"')
    lab.start_netbootd()
    result = lab.not_booted(MAC, "arm64-secure")
    assert not result.timed_out, result.reason
    assert '"UEFI PXEv4' in result.reason and result.reason.endswith(": Access Denied"), result.reason
    assert "ipxe-arm64.efi" in tftp_files(lab), "not refused by the firmware: iPXE was never sent whole"
    assert "firmware=ipxe" not in lab.netbootd_log(), "iPXE ran: Secure Boot was not enforced"


KERNEL_MEDIA, INITRD_MEDIA, UKI_MEDIA = (f"application/vnd.ironcore.image.{k}" for k in ("kernel", "initramfs", "uki"))
X86_MAC = "52:54:00:a6:40:86"


@pytest.mark.registry
def test_one_multi_arch_image_boots_an_x86_and_an_arm64_machine(tmp_path, assets, arm64, request):
    """(3) One OCI index with an amd64 and an arm64 manifest; one profile-less `image = ...` for two
    machines of different architectures, booted at the same time: each gets its own layers (the
    registry's log shows which blobs netbootd fetched), both reach their initramfs."""
    from .test_image_boot import REGISTRY, LabRegistry, digest_of

    need_arm64("arm64-uefi")
    for lab in _lab(tmp_path, assets, request):
        serve_arm64(lab, arm64)
        registry = LabRegistry(lab)
        registry.push_index("boot/mixed", "v1", {
            "amd64": [(KERNEL_MEDIA, assets.kernel), (INITRD_MEDIA, assets.initrd)],
            "arm64": [(KERNEL_MEDIA, arm64.kernel), (INITRD_MEDIA, arm64.initrd)],
        })
        registry.serve()
        for mac, console in ((X86_MAC, "ttyS0"), (MAC, "ttyAMA0")):
            lab.machine(mac, f"""\
                [vars]
                value = "{mac[-2:]}"
                [boot]
                image = "{REGISTRY}/boot/mixed:v1"
                cmdline = "console={console} panic=-1 nbd_value={{{{ value }}}} nbd_ign={{{{ ignition_url }}}}"
                [ignition]
                inline = '{{"ignition": {{"version": "3.4.0"}}, "netbootd_marker": "{mac[-2:]}-ign"}}'
                """)
        lab.start_netbootd()
        x86, arm = lab.booted_many([(X86_MAC, "bios"), (MAC, "arm64-uefi")])
        assert "nbd_value=86" in x86.cmdline.split() and "nbd_value=01" in arm.cmdline.split()
        for content in (assets.kernel, assets.initrd, arm64.kernel, arm64.initrd):
            assert len(registry.blob_gets(digest_of(content))) == 1, f"{content}: not exactly one upstream GET"
        log = lab.netbootd_log()
        assert "arch=arm64" in log and "boot/aa64/grubaa64.efi" in log  # arm64 PXE: GRUB by default


@pytest.mark.registry
def test_http_boot_of_an_images_arm64_uki_layer(tmp_path, assets, arm64, request):
    """(2) AAVMF HTTP boot of the UKI layer of an image's arm64 manifest (the amd64 one has none)."""
    from .test_image_boot import REGISTRY, LabRegistry

    need_arm64("arm64-http")
    for lab in _lab(tmp_path, assets, request):
        registry = LabRegistry(lab)
        registry.push_index("boot/ukis", "v1", {
            "amd64": [(KERNEL_MEDIA, assets.kernel), (INITRD_MEDIA, assets.initrd)],
            "arm64": [(UKI_MEDIA, arm64.uki)],
        })
        registry.serve()
        lab.machine(MAC, f'[boot]\nimage = "{REGISTRY}/boot/ukis:v1"\n')
        lab.start_netbootd()
        lab.wait_log(r"image resolved .*", timeout=30)  # the background resolution, both architectures
        marker = lab.booted(MAC, "arm64-http")
        assert UKI_CMDLINE in marker.cmdline, marker.cmdline
        log = lab.netbootd_log()
        assert "application%2Fvnd.ironcore.image.uki&arch=arm64" in log, log[-3000:]
