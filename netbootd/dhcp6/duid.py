"""DUIDs (RFC 8415 §11) and link-layer addresses (RFC 6939): who a DHCPv6 client is.

A DHCPv6 client names itself with a DUID, not a MAC. netbootd's machine files are named after MACs,
so we recover the MAC where the wire carries one:
- option 79 (Client Link-Layer Address) that a relay adds: the address the relay saw the frame come
  from, so the most trustworthy;
- DUID-LL (type 3) and DUID-LLT (type 1) with hardware type 1 (Ethernet): the MAC of *some*
  interface of the client when the DUID was made (EDK2 makes its DUID-LLT from the booting NIC; a
  multi-NIC machine may show another NIC's MAC, which is why 79 wins);
and otherwise name the client by its DUID as lower-case colon-separated hex (`duid_text`), which a
machine file could be named after. iPXE sends DUID-UUID (type 4, RFC 6355) made from the SMBIOS
UUID: `duid_uuid` gives it in the form iPXE's `${uuid}` prints (iPXE copies its uuid setting,
RFC 4122 byte order, without the little-endian "mangling" it applies to DHCPv4 option 97).

Nothing here raises on odd input: an unusable DUID gives None where a MAC or UUID was asked for.
"""

from __future__ import annotations

import struct
import uuid

from netbootd.model import normalize_mac

DUID_LLT = 1  # link-layer address plus time
DUID_EN = 2  # enterprise number
DUID_LL = 3  # link-layer address
DUID_UUID = 4  # RFC 6355
HW_ETHERNET = 1  # IANA ARP hardware type

# A DUID is a 2-byte type and 1..128 bytes of identifier (RFC 8415 §11.1); EDK2 refuses a Server ID
# outside the same bounds (PXEBC_MIN/MAX_SIZE_OF_DUID in UefiPxeBcDxe/PxeBcDhcp6.h).
DUID_MIN_LEN = 3
DUID_MAX_LEN = 130

# DUID-LLT time: seconds since midnight (UTC), January 1, 2000, modulo 2^32 (RFC 8415 §11.2).
DUID_EPOCH = 946684800

_LL_HEADER = struct.Struct("!HH")  # DUID type, hardware type
_LLT_HEADER = struct.Struct("!HHI")  # DUID type, hardware type, time


def duid_ll(mac: str) -> bytes:
    """DUID-LL of an Ethernet MAC (type 3, hardware type 1): what netbootd uses as its Server ID."""
    return _LL_HEADER.pack(DUID_LL, HW_ETHERNET) + bytes.fromhex(normalize_mac(mac).replace(":", ""))


def duid_llt(mac: str, unix_time: int) -> bytes:
    """DUID-LLT of an Ethernet MAC made at `unix_time` (type 1, hardware type 1)."""
    since_2000 = (unix_time - DUID_EPOCH) & 0xFFFFFFFF
    return _LLT_HEADER.pack(DUID_LLT, HW_ETHERNET, since_2000) + bytes.fromhex(normalize_mac(mac).replace(":", ""))


def duid_text(duid: bytes) -> str:
    """The canonical name of a DUID: lower-case hex bytes joined by colons ('00:01:00:01:31:e7:...')."""
    return duid.hex(":")


def mac_from_duid(duid: bytes) -> str | None:
    """The Ethernet MAC inside a DUID-LL or DUID-LLT, or None (other types, other hardware, odd sizes)."""
    if len(duid) == 10:
        kind, hw = _LL_HEADER.unpack_from(duid)
        if kind == DUID_LL and hw == HW_ETHERNET:
            return duid[4:].hex(":")
    elif len(duid) == 14:
        kind, hw = _LL_HEADER.unpack_from(duid)
        if kind == DUID_LLT and hw == HW_ETHERNET:
            return duid[8:].hex(":")
    return None


def duid_uuid(duid: bytes) -> str | None:
    """The UUID of a DUID-UUID (type 4 + 16 bytes, RFC 6355) as 8-4-4-4-12 lower-case hex, or None."""
    if len(duid) == 18 and duid[:2] == b"\x00\x04":
        return str(uuid.UUID(bytes=duid[2:]))
    return None


def mac_from_link_layer(value: bytes) -> str | None:
    """The MAC in an option 79 value (2-byte hardware type + address, RFC 6939), or None if not Ethernet."""
    if len(value) == 8 and value[:2] == b"\x00\x01":
        return value[2:].hex(":")
    return None


def link_layer_option_value(mac: str) -> bytes:
    """An option 79 value for an Ethernet MAC (what a relay adds; used by tests and relay tooling)."""
    return struct.pack("!H", HW_ETHERNET) + bytes.fromhex(normalize_mac(mac).replace(":", ""))
