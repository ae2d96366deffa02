"""DHCP options → `netbootd.model.Client`: which firmware is asking, for which architecture.

Shared by the port-67 and port-4011 paths so both see a client the same way.

Rules (reference.md §1, checked against the captures in ../shared/captures):
- iPXE: user class (77) `iPXE`, sent raw by iPXE or length-prefixed (RFC 3004), or iPXE's
  encapsulated options (175) present. A chained undionly.kpxe looks exactly like the iPXE ROM,
  which is fine: both get the script URL.
- UEFI HTTP boot: vendor class (60) starts with `HTTPClient`.
- PXE: vendor class starts with `PXEClient`; arch 0 → BIOS PXE, any UEFI arch → EFI PXE.
- Anything else is not a network-boot client: None (no answer; the site's DHCP server serves it).

Architecture: option 93 (first code if several), else the `Arch:NNNNN` field of option 60, else
(a `PXEClient` with neither, i.e. a pre-RFC 4578 ROM) BIOS. Codes outside `model.ARCH_CODES`
(Itanium, XScale, ...) are not answered.

UUID (option 97: type 0 + 16 bytes): firmware (EDK2 copies its EFI_GUID, iPXE "mangles" its
`${uuid}` before sending) puts the SMBIOS 2.6+ byte order on the wire, i.e. the first three
fields little-endian. We present the UUID the way iPXE prints `${uuid}` and dmidecode prints the
system UUID: those three fields swapped back to big-endian (`uuid.UUID(bytes_le=...)`), so a
lookup by `/ipxe/<uuid>` from an iPXE script finds the same string. An all-zero UUID (QEMU's
default) is passed through as it is; a 97 that is empty, short or not type 0 gives uuid None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from netbootd.dhcp.codec import OPT_CLIENT_ARCH, OPT_CLIENT_UUID, OPT_IPXE, OPT_USER_CLASS, OPT_VENDOR_CLASS
from netbootd.model import ARCH_CODES, Arch, Client, Firmware

_ARCH_IN_60 = re.compile(rb"(?:^|:)Arch:(\d{5})(?::|$)")

# Why a client was not classified (log/metric reasons).
NOT_PXE = "not-pxe"
UNKNOWN_ARCH = "unsupported-arch"


def is_ipxe_user_class(value: bytes | None) -> bool:
    """True for `iPXE` raw (what iPXE sends) or inside an RFC 3004 list (`\\x04iPXE...`)."""
    if not value:
        return False
    if value == b"iPXE":
        return True
    i = 0
    while i < len(value):
        length = value[i]
        item = value[i + 1 : i + 1 + length]
        if length == 0 or len(item) != length:
            return False
        if item == b"iPXE":
            return True
        i += 1 + length
    return False


def arch_code(options: Mapping[int, bytes]) -> int | None:
    """The client's processor architecture type (IANA), or None if it says nothing."""
    raw = options.get(OPT_CLIENT_ARCH)
    if raw is not None and len(raw) >= 2:
        return int.from_bytes(raw[:2], "big")
    match = _ARCH_IN_60.search(options.get(OPT_VENDOR_CLASS, b""))
    if match:
        return int(match.group(1))
    return None


_UUIDS: dict[bytes, str] = {}  # one machine sends 97 in its DISCOVER, REQUEST and 4011 REQUEST


def client_uuid(options: Mapping[int, bytes]) -> str | None:
    raw = options.get(OPT_CLIENT_UUID)
    if raw is None or len(raw) != 17 or raw[0] != 0:
        return None
    text = _UUIDS.get(raw)
    if text is None:
        if len(_UUIDS) >= 4096:
            _UUIDS.clear()
        text = _UUIDS[raw] = _format_uuid(raw)
    return text


def _format_uuid(raw: bytes) -> str:
    """== str(uuid.UUID(bytes_le=raw[1:])), without building a UUID object."""
    h = (raw[4:0:-1] + raw[6:4:-1] + raw[8:6:-1]).hex()
    t = raw[9:].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{t[:4]}-{t[4:]}"


def _kind(
    vendor: bytes, user_class: bytes | None, arch: bytes | None, has_175: bool
) -> tuple[Arch, Firmware] | str:
    """(arch, firmware) or the reason there is none; depends only on its (hashable) arguments."""
    ipxe = has_175 or is_ipxe_user_class(user_class)
    http = vendor.startswith(b"HTTPClient")
    pxe = vendor.startswith(b"PXEClient")
    if not (ipxe or http or pxe):
        return NOT_PXE
    code = arch_code(
        {OPT_CLIENT_ARCH: arch, OPT_VENDOR_CLASS: vendor} if arch is not None else {OPT_VENDOR_CLASS: vendor}
    )
    if code is None and not http:
        code = 0  # a PXEClient without 93 or Arch: is a pre-RFC 4578 BIOS ROM
    entry = ARCH_CODES.get(code) if code is not None else None
    if entry is None:
        return UNKNOWN_ARCH
    arch_, _http_code = entry
    if http and arch_ is Arch.BIOS:
        return UNKNOWN_ARCH  # HTTP boot is a UEFI feature; a BIOS code here is nonsense
    if ipxe:
        return arch_, Firmware.IPXE
    if http:
        return arch_, Firmware.HTTP_BOOT
    return arch_, (Firmware.BIOS_PXE if arch_ is Arch.BIOS else Firmware.EFI_PXE)


# Firmware of one model sends identical 60/77/93/175 from every machine: in a boot storm the
# answer to "what kind of client is this" is a dictionary hit. Bounded: cleared when full.
_CACHE: dict[tuple, tuple[Arch, Firmware] | str] = {}
_CACHE_MAX = 4096


def classify_reason(options: Mapping[int, bytes], mac: str) -> tuple[Client | None, str]:
    """(client, "") or (None, why not). `mac` is already normalized."""
    key = (
        options.get(OPT_VENDOR_CLASS, b""),
        options.get(OPT_USER_CLASS),
        options.get(OPT_CLIENT_ARCH),
        OPT_IPXE in options,
    )
    kind = _CACHE.get(key)
    if kind is None:
        kind = _kind(*key)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = kind
    if isinstance(kind, str):
        return None, kind
    return Client(mac=mac, arch=kind[0], firmware=kind[1], uuid=client_uuid(options)), ""


def classify(options: Mapping[int, bytes], mac: str) -> Client | None:
    """The booting client these options describe, or None for a non-PXE (or unsupported) client."""
    return classify_reason(options, mac)[0]
