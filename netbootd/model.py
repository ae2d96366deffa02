"""Domain types shared by the boot core and the protocol edges.

The edges (dhcp, tftp, http) turn packets and requests into a `Client`, ask the core
(`netbootd.core.BootCore`) what that client gets, and turn the answer back into bytes.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re

import attrs


class Firmware(enum.Enum):
    """What kind of boot program is talking to us; decides what it can be offered."""

    BIOS_PXE = "bios-pxe"  # legacy PXE ROM: TFTP only, chainload undionly.kpxe
    EFI_PXE = "efi-pxe"  # UEFI PXE: TFTP (via the 4011 exchange), chainload ipxe.efi/snponly.efi
    IPXE = "ipxe"  # iPXE itself (ROM or chained): give it an HTTP script URL
    HTTP_BOOT = "http-boot"  # UEFI HTTP boot: give it an http:// URL of an EFI binary


class Arch(enum.Enum):
    """CPU + firmware platform, the granularity at which boot binaries differ."""

    BIOS = "bios"  # x86 legacy BIOS
    EFI32 = "efi32"  # x86 32-bit UEFI
    EFI64 = "efi64"  # x86-64 UEFI
    ARM32 = "arm32"  # 32-bit ARM UEFI
    ARM64 = "arm64"  # 64-bit ARM UEFI

    @property
    def oci(self) -> str:
        """The OCI platform architecture of this arch's machines (for multi-arch image indexes)."""
        return {"bios": "amd64", "efi32": "386", "efi64": "amd64", "arm32": "arm", "arm64": "arm64"}[self.value]

    @property
    def ipxe_buildarch(self) -> str:
        return {"bios": "i386", "efi32": "i386", "efi64": "x86_64", "arm32": "arm32", "arm64": "arm64"}[
            self.value
        ]


# IANA "Processor Architecture Types" (DHCP option 93) → (arch, is HTTP boot).
# 9 is "EFI BC": real x86-64 ROMs send it, so it is treated as EFI64.
ARCH_CODES: dict[int, tuple[Arch, bool]] = {
    0: (Arch.BIOS, False),
    6: (Arch.EFI32, False),
    7: (Arch.EFI64, False),
    9: (Arch.EFI64, False),
    10: (Arch.ARM32, False),
    11: (Arch.ARM64, False),
    15: (Arch.EFI32, True),
    16: (Arch.EFI64, True),
    18: (Arch.ARM32, True),
    19: (Arch.ARM64, True),
}

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.I)


def normalize_mac(text: str) -> str:
    """'52-54-00-AB-CD-EF', '52:54:00:ab:cd:ef' or '525400abcdef' → '52:54:00:ab:cd:ef'.

    Raises ValueError for anything else.
    """
    text = text.strip()
    if not _MAC_RE.match(text):
        raise ValueError(f"not a MAC address: {text!r}")
    h = text.replace(":", "").replace("-", "").lower()
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


def mac_hyphen(mac: str) -> str:
    """The dash form used in file names and ConfigMap keys."""
    return mac.replace(":", "-")


_UUID_RE = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def normalize_uuid(text: str) -> str:
    """SMBIOS UUID in canonical lower-case 8-4-4-4-12 form; ValueError if malformed."""
    text = text.strip()
    if not _UUID_RE.match(text):
        raise ValueError(f"not a UUID: {text!r}")
    h = text.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@attrs.frozen
class Client:
    """A booting machine as an edge saw it."""

    mac: str  # normalized, colon form
    arch: Arch
    firmware: Firmware
    uuid: str | None = None  # normalized SMBIOS UUID, if the client sent one


class OfferKind(enum.Enum):
    TFTP = "tftp"  # `bootfile` is a TFTP file name on this server
    IPXE_SCRIPT = "ipxe-script"  # `bootfile` is the http:// URL of the machine's iPXE script
    HTTP_EFI = "http-efi"  # `bootfile` is the http:// URL of an EFI binary / UKI (UEFI HTTP boot)


@attrs.frozen
class Offer:
    """What the DHCP edge puts in its answer: the core's decision for one client."""

    kind: OfferKind
    bootfile: str
    machine: str  # which config answered: "52-54-00-12-34-56", "default", ...

    def describe(self) -> str:
        return f"{self.kind.value} {self.bootfile}"
