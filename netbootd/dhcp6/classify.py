"""A decoded DHCPv6 packet → `netbootd.model.Client`, and the identity that names the client.

The rules of netbootd/dhcp/classify.py, on DHCPv6's options (checked against the captures
proxy6-uefi-pxe-4011, proxy6-uefi-http-boot, full6-uefi-pxe-shim-grub, EDK2's PxeBcDhcp6.c and
HttpBootDhcp6.c, and iPXE's src/net/udp/dhcpv6.c):
- iPXE: user class (15) with an item `iPXE` (iPXE sends exactly that one item, `\\x00\\x04iPXE`, next
  to a `PXEClient` vendor class, so it is checked first).
- UEFI HTTP boot: vendor class (16) of enterprise 343 whose first item starts with `HTTPClient`.
- UEFI PXE: the same with `PXEClient`.
- Anything else: None, `not-pxe` (the OS's DHCPv6 client, and EDK2's own address configuration,
  whose SOLICIT asks only for DNS servers; the site's DHCPv6 server serves those).

Architecture: option 61 (first entry), else the `Arch:NNNNN` of the 343 vendor class; codes mapped
by `model.ARCH_CODES`, the table the DHCPv4 edge uses. Two differences from DHCPv4, on purpose:
a PXE or iPXE client that names no architecture is not guessed to be a pre-RFC 4578 BIOS ROM (no
such ROM speaks DHCPv6; iPXE's DHCPv6 always sends 61), and PXE firmware with the BIOS code 0 is
refused too (PXE over IPv6 is a UEFI feature): both `unsupported-arch`. iPXE on BIOS
(undionly.kpxe, code 0 in 61) is answered as on DHCPv4.

Not imported from netbootd.dhcp.classify: the edges do not import each other, and that import
would load netbootd/dhcp/__init__.py, hence Twisted and the DHCPv4 protocol; DHCPv6's user class
also has 2-byte item lengths where DHCPv4's has 1. tests/dhcp6/test_classify.py checks that both
modules give the same answer for the same vendor class, user class and architecture.

Identity (`client_identity`): the MAC when the wire carries one — option 79 of the innermost relay
that has it (what the relay next to the client saw), else a DUID-LL/DUID-LLT with Ethernet hardware
type in the Client ID (EDK2 sends a DUID-LLT of the booting NIC) — otherwise the DUID itself as
lower-case colon-separated hex (iPXE sends DUID-UUID). `Client.mac` holds the identity's value, so
for a DUID identity it is that DUID string, not a MAC: check `Identity.kind` before treating it as
one. A DUID-UUID also fills `Client.uuid` (in iPXE's `${uuid}` form).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from netbootd.dhcp6.codec import ENTERPRISE_PXE, HTTP_CLIENT, OPT_CLIENT_LINKLAYER_ADDR, PXE_CLIENT, Message, Relay
from netbootd.dhcp6.duid import duid_text, duid_uuid, mac_from_duid, mac_from_link_layer
from netbootd.model import ARCH_CODES, Arch, Client, Firmware

# The same pattern as netbootd/dhcp/classify.py's option-60 parser.
_ARCH_IN_VENDOR = re.compile(rb"(?:^|:)Arch:(\d{5})(?::|$)")
_IPXE = b"iPXE"

# Why a client was not classified (log/metric reasons); the first two as on DHCPv4.
NOT_PXE = "not-pxe"
UNKNOWN_ARCH = "unsupported-arch"
NO_IDENTITY = "no-client-id"  # neither a Client ID nor a relay's option 79 (an anonymous Information-request)

MAC = "mac"
DUID = "duid"


class Identity(NamedTuple):
    kind: str  # MAC or DUID
    value: str  # a normalized MAC ('52:54:00:99:00:41') or a DUID as duid_text gives it
    source: str  # where it came from: "option-79", "duid-ll", "duid-llt" or "duid"


def client_identity(packet: Message | Relay) -> Identity | None:
    """Who sent this: the MAC if the relays or the DUID give one, else the DUID; None without either."""
    if isinstance(packet, Relay):
        for relay in reversed(packet.chain):  # innermost first: the relay on the client's link
            raw = relay.get(OPT_CLIENT_LINKLAYER_ADDR)
            if raw is not None:
                mac = mac_from_link_layer(raw)
                if mac is not None:
                    return Identity(MAC, mac, "option-79")
                break  # the client's link is not Ethernet: its DUID is what we have
        message = packet.innermost
    else:
        message = packet
    duid = message.client_id
    if duid is None:
        return None
    mac = mac_from_duid(duid)
    if mac is not None:
        return Identity(MAC, mac, "duid-ll" if duid[1] == 3 else "duid-llt")
    return Identity(DUID, duid_text(duid), "duid")


def arch_code(message: Message) -> int | None:
    """The client's architecture type (IANA), or None if it says nothing."""
    archs = message.client_arch_types
    if archs:
        return archs[0]
    items = message.vendor_class(ENTERPRISE_PXE)
    match = _ARCH_IN_VENDOR.search(items[0]) if items else None
    return int(match.group(1)) if match else None


@functools.lru_cache(maxsize=4096)
def _kind(vendor: bytes, ipxe: bool, code: int | None) -> tuple[Arch, Firmware] | str:
    """(arch, firmware) or why none; firmware of one model sends the same values from every machine,
    so in a boot storm this is a cache hit."""
    http = vendor.startswith(HTTP_CLIENT)
    pxe = vendor.startswith(PXE_CLIENT)
    if not (ipxe or http or pxe):
        return NOT_PXE
    entry = ARCH_CODES.get(code) if code is not None else None
    if entry is None:
        return UNKNOWN_ARCH
    arch = entry[0]
    if http and arch is Arch.BIOS:
        return UNKNOWN_ARCH  # HTTP boot is a UEFI feature
    if ipxe:
        return arch, Firmware.IPXE
    if arch is Arch.BIOS:
        return UNKNOWN_ARCH  # PXE over IPv6 is UEFI's; no BIOS ROM sends it
    return arch, (Firmware.HTTP_BOOT if http else Firmware.EFI_PXE)


def classify_reason(packet: Message | Relay) -> tuple[Client | None, Identity | None, str]:
    """(client, identity, "") or (None, identity or None, why not)."""
    message = packet.innermost if isinstance(packet, Relay) else packet
    identity = client_identity(packet)
    items = message.vendor_class(ENTERPRISE_PXE)
    kind = _kind(items[0] if items else b"", _IPXE in message.user_classes, arch_code(message))
    if isinstance(kind, str):
        return None, identity, kind
    if identity is None:
        return None, None, NO_IDENTITY
    duid = message.client_id
    uuid = duid_uuid(duid) if duid is not None else None
    return Client(mac=identity.value, arch=kind[0], firmware=kind[1], uuid=uuid), identity, ""


def classify(packet: Message | Relay) -> Client | None:
    """The booting client this packet comes from, or None for a plain DHCPv6 (or unsupported) client."""
    return classify_reason(packet)[0]
