"""Secure Boot firmware in the lab: OVMF with Secure Boot enforced, booting what netbootd serves.

- `uefi-http-secure` (OVMF's snakeoil test key enrolled) boots the test kernel + initramfs as a
  UKI that assets.sh signed with that key, offered by netbootd as an `efi = "uki.efi"` machine over
  UEFI HTTP boot; the same UKI unsigned is refused by the firmware ("Access Denied"), and the lab
  stops at that refusal instead of waiting for a timeout.
- `uefi-secure` (Microsoft's keys enrolled) refuses the unsigned iPXE (snponly.efi) that netbootd
  offers to UEFI PXE today: proof the kind enforces Secure Boot. Booting shim → GRUB on it is the
  GRUB loader path's own test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netbootd.testing.firmware import FIRMWARES
from netbootd.testing.tryboot import _CLIENTS, preflight

from .conftest import ASSETS, ASSETS_SCRIPT, BOOT_IP, HTTP_PORT, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:40"
UKI_URL = f"http://{BOOT_IP}:{HTTP_PORT}/files/uki.efi"
# assets.sh puts this on the UKIs' command line; `quiet` is left out so the kernel log shows
# what it found: "secureboot: Secure boot enabled" (arch/x86/kernel/setup.c)
UKI_CMDLINE = "console=ttyS0 panic=-1 nbd_uki=1"


def uki(name: str) -> Path:
    """One of assets.sh's UKIs (the `assets` fixture has run it), or a skip naming what is missing."""
    path = ASSETS / name
    if not path.is_file():
        pytest.skip(f"{path} was not built: {ASSETS_SCRIPT} says which packages it needs "
                    "(systemd-boot-efi, binutils, sbsigntool, openssl, ovmf)")
    return path


def uki_machine(lab, name: str) -> Path:
    """An `efi = "uki.efi"` machine whose file under files_root is the UKI `name`."""
    source = uki(name)
    shutil.copy(source, lab.files / "uki.efi")
    lab.machine(MAC, '[boot]\nefi = "uki.efi"\n')
    return source


def downloaded(lab, size: int) -> bool:
    """netbootd's timeline has the whole UKI sent to the machine over HTTP."""
    events = lab.get_json(f"/machines/{MAC}")["events"]
    return any(e["stage"] == "http" and e.get("path") == "/files/uki.efi" and e.get("bytes") == size for e in events)


def test_signed_uki_boots_with_secure_boot(lab):
    """OVMF (snakeoil keys, Secure Boot on) → proxy OFFER with the UKI's URL → the UKI signed with
    the snakeoil key is verified and started → the kernel reports Secure Boot → the marker."""
    need("uefi-http-secure")
    signed = uki_machine(lab, "uki-signed.efi")
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-http-secure")
    assert marker.mac == MAC
    assert marker.cmdline.split() == UKI_CMDLINE.split(), "not the UKI's own command line"
    console = lab.boots[-1].console()
    assert "secureboot: Secure boot enabled" in console, "the kernel did not find Secure Boot enforced"
    assert "EFI stub: UEFI Secure Boot is enabled." in console, console[-3000:]
    log = lab.netbootd_log()
    assert f'firmware=http-boot offered="http-efi {UKI_URL}"' in log, "the HTTP-boot firmware was not offered the UKI"
    assert downloaded(lab, signed.stat().st_size), "the signed UKI was not served whole"


def test_unsigned_uki_refused_by_the_firmware(lab):
    """The same UKI without a signature: downloaded whole, then refused by the firmware; the lab
    ends the boot at the refusal (no timeout) and says the firmware refused it."""
    need("uefi-http-secure")
    unsigned = uki_machine(lab, "uki-unsigned.efi")
    lab.start_netbootd()
    result = lab.not_booted(MAC, "uefi-http-secure")
    assert not result.timed_out, result.reason
    assert result.reason.startswith("the firmware gave up on this boot path: failed to load Boot"), result.reason
    assert '"UEFI HTTPv4' in result.reason and result.reason.endswith(": Access Denied"), result.reason
    assert "Linux version" not in result.console and "EFI stub" not in result.console, "the UKI ran"
    assert downloaded(lab, unsigned.stat().st_size), "not refused by the firmware: the UKI was never served whole"


def test_microsoft_keys_refuse_unsigned_ipxe(lab):
    """`uefi-secure` (Microsoft's keys) runs OVMF's own PXE: the 4011 exchange and TFTP of
    snponly.efi go as in `uefi`, and the firmware refuses to load that unsigned iPXE."""
    need("uefi-secure")
    lab.kernel_machine(MAC, "sb40", "sb40-secret")
    lab.start_netbootd()
    result = lab.not_booted(MAC, "uefi-secure")
    assert not result.timed_out, result.reason
    assert '"UEFI PXEv4' in result.reason and result.reason.endswith(": Access Denied"), result.reason
    log = lab.netbootd_log()
    assert "firmware=efi-pxe" in log and "port=4011" in log, "no 4011 answer to the firmware's PXE"
    assert "tftp transfer completed" in log and "file=snponly.efi" in log, "snponly.efi was not sent whole"
    assert "firmware=ipxe" not in log, "iPXE ran: Secure Boot was not enforced"


def test_try_knows_the_secure_kinds(lab):
    """`netbootd try --firmware` offers every kind, and its preflight asks the configuration as the
    kind's firmware does: HTTP boot gets the UKI's URL, PXE gets iPXE over TFTP."""
    assert set(_CLIENTS) == set(FIRMWARES), "a firmware kind without its DHCP client in tryboot._CLIENTS"
    uki_machine(lab, "uki-signed.efi")
    assert f"http-efi {UKI_URL}" in preflight(str(lab.settings_path), MAC, "uefi-http-secure")
    assert "tftp snponly.efi" in preflight(str(lab.settings_path), MAC, "uefi-secure")
