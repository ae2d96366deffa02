"""BOOTP/DHCP wire format: our strict wrapper over `dpkt.dhcp`.

dpkt unpacks the fixed BOOTP header well, but on its own it accepts a wrong magic cookie, silently
cuts option data that runs past the end of the packet (or raises IndexError/struct.error, depending
on where the packet ends), does not join split options (RFC 3396), does not pad replies to the BOOTP
minimum, and truncates `file`/`sname` without a word. This module fixes all of that:

- `decode(data)` → a frozen `Packet`, or raises `MalformedPacket(reason)`; it never raises anything
  else, whatever the bytes. `reason` is one of `REASONS` (a metric label, so the set is closed).
- `encode(packet)` → bytes: options longer than 255 bytes are split (RFC 3396), the packet is
  padded to 300 bytes, and a `file`/`sname` that does not fit raises `FieldTooLong`.
- `pxe_options` / `parse_pxe_options`: option 43 PXE sub-options (PXE 2.1 spec).
"""

from __future__ import annotations

import functools
import socket
import struct
import types
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import dpkt.dhcp

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC = b"\x63\x82\x53\x63"
MAGIC_INT = 0x63825363

HEADER_LEN = 236  # fixed BOOTP header, up to and excluding the magic cookie
MIN_BOOTP = 300  # RFC 951 packet size; some relays and ROMs drop anything shorter
# Largest datagram we accept. A DHCP client may announce a bigger maximum (option 57), but no PXE
# ROM or iPXE sends a request larger than an Ethernet frame's UDP payload (captures: 340..412
# bytes), and everything bigger than a 1500-byte MTU is either a fragment bomb or garbage. 1500
# (rather than the exact 1472) leaves slack for relays that append option 82 to a full packet.
MAX_PACKET = 1500
# A legitimate request carries 8..25 options (captures: at most 11). Hundreds of tiny options are
# only ever an attempt to make the parser work hard.
MAX_OPTIONS = 128
FILE_LEN = 128
SNAME_LEN = 64

# DHCP message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MSGTYPE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}

OPT_PAD = 0
OPT_VENDOR = 43
OPT_OVERLOAD = 52
OPT_MSGTYPE = 53
OPT_SERVER_ID = 54
OPT_VENDOR_CLASS = 60
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77
OPT_CLIENT_ARCH = 93
OPT_CLIENT_NDI = 94
OPT_CLIENT_UUID = 97
OPT_IPXE = 175
OPT_END = 255

# PXE option 43 sub-options
PXE_DISCOVERY_CONTROL = 6
PXE_BOOT_ITEM = 71
# Discovery control bit 3: "if a boot file name is present in the offer, download it directly"
# (no boot server discovery, no menu): what a proxy that already knows the file wants.
DISCOVERY_USE_BOOTFILE = 0x08

# Every reason `decode` can give (metric label values).
REASONS = (
    "truncated",  # shorter than the fixed header + magic cookie
    "oversized",  # longer than MAX_PACKET
    "bad-cookie",  # not DHCP (plain BOOTP has no cookie; we only speak DHCP)
    "bad-option",  # an option length runs past the end of its field
    "option-bomb",  # more than MAX_OPTIONS options
    "duplicate-msgtype",  # option 53 more than once: ambiguous, refuse
    "no-msgtype",  # option 53 missing or not one byte
    "wrong-op",  # BOOTREPLY where a request was expected (or the reverse)
    "bad-hardware",  # htype/hlen other than Ethernet (1/6)
)


class MalformedPacket(Exception):
    """The bytes are not a DHCP packet we accept; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FieldTooLong(ValueError):
    """A value does not fit its fixed BOOTP field (`file` 128 bytes, `sname` 64, both NUL-terminated)."""


@functools.lru_cache(maxsize=1024)
def _ip_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


class Packet(NamedTuple):
    """One decoded DHCP packet (request or reply); immutable.

    `options` maps option code → value (read-only); repeated instances are concatenated
    (RFC 3396) and options carried in `file`/`sname` under option 52 (overload) are merged in.
    `sname`/`file` are the NUL-terminated field contents (empty when overloaded).
    A NamedTuple rather than an attrs class: it is built for every packet of a boot storm, and
    tuple construction is several times cheaper.
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    chaddr: bytes  # the hlen significant bytes
    sname: bytes
    file: bytes
    msgtype: int
    options: Mapping[int, bytes]

    @property
    def mac(self) -> str:
        return self.chaddr[:6].hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def msgtype_name(self) -> str:
        return MSGTYPE_NAMES.get(self.msgtype, str(self.msgtype))


# The fixed header as dpkt.dhcp.DHCP defines it (op .. file + magic cookie), unpacked in one
# struct call: dpkt's own unpack sets each of its 15 fields one by one, then runs an option
# parser that truncates silently, which is both slower and what this module exists to avoid.
_HEADER = struct.Struct(dpkt.dhcp.DHCP.__hdr_fmt__)
assert _HEADER.size == HEADER_LEN + 4


def _ip(value: int) -> str:
    return "0.0.0.0" if value == 0 else socket.inet_ntoa(value.to_bytes(4, "big"))


def _scan_options(field: bytes, out: dict[int, bytes], state: list[int], where: str) -> None:
    """Parse one options area into `out` (concatenating repeats). state = [option count, msgtype seen]."""
    i = 0
    n = len(field)
    count = state[0]
    while i < n:
        code = field[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break  # anything after END is padding
        if i + 1 >= n:
            raise MalformedPacket("bad-option", f"option {code} has no length byte in {where}")
        end = i + 2 + field[i + 1]
        if end > n:
            raise MalformedPacket(
                "bad-option", f"option {code} length {field[i + 1]} runs past the end of {where}"
            )
        count += 1
        if count > MAX_OPTIONS:
            raise MalformedPacket("option-bomb", f"more than {MAX_OPTIONS} options")
        if code in out:
            if code == OPT_MSGTYPE:
                raise MalformedPacket("duplicate-msgtype")
            out[code] += field[i + 2 : end]  # RFC 3396: split options are concatenated in order
        else:
            out[code] = field[i + 2 : end]
        i = end
    # No END option: tolerated (several ROMs end exactly at the last option).
    state[0] = count


def decode(data: bytes, *, op: int = BOOTREQUEST) -> Packet:
    """Parse a DHCP packet of the given op; raise MalformedPacket for anything else.

    This is the only entry point for untrusted bytes; it raises nothing but MalformedPacket.
    """
    try:
        return _decode(bytes(data), op)
    except MalformedPacket:
        raise
    except Exception as exc:  # struct/index errors on hostile input: same outcome, a drop
        raise MalformedPacket("bad-option", f"{type(exc).__name__}: {exc}") from exc


def _decode(data: bytes, op: int) -> Packet:
    if len(data) > MAX_PACKET:
        raise MalformedPacket("oversized", f"{len(data)} bytes")
    if len(data) < HEADER_LEN + 4:
        raise MalformedPacket("truncated", f"{len(data)} bytes")
    (
        h_op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        magic,
    ) = _HEADER.unpack_from(data)
    if magic != MAGIC_INT:
        raise MalformedPacket("bad-cookie")
    if h_op != op:
        raise MalformedPacket("wrong-op", f"op {h_op}")
    if htype != 1 or hlen != 6:
        raise MalformedPacket("bad-hardware", f"htype {htype} hlen {hlen}")
    options: dict[int, bytes] = {}
    state = [0]
    _scan_options(data[HEADER_LEN + 4 :], options, state, "options")
    overload = options.get(OPT_OVERLOAD)
    if overload is not None and len(overload) == 1 and overload[0] in (1, 2, 3):
        # RFC 2131 §4.1: the options field first, then `file`, then `sname`.
        if overload[0] & 1:
            _scan_options(file, options, state, "file")
            file = b""
        if overload[0] & 2:
            _scan_options(sname, options, state, "sname")
            sname = b""
    msgtype = options.get(OPT_MSGTYPE)
    if msgtype is None or len(msgtype) != 1:
        raise MalformedPacket("no-msgtype")
    return Packet(
        h_op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        _ip(ciaddr),
        _ip(yiaddr),
        _ip(siaddr),
        _ip(giaddr),
        chaddr[:6],
        sname.split(b"\0", 1)[0] if sname[:1] != b"\0" else b"",
        file.split(b"\0", 1)[0] if file[:1] != b"\0" else b"",
        msgtype[0],
        types.MappingProxyType(options),
    )


class Reply(NamedTuple):
    """A BOOTREPLY to build. `options` excludes 53 (from `msgtype`) and END; order is kept."""

    msgtype: int
    xid: int
    chaddr: bytes
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    sname: str = ""
    file: str = ""
    options: tuple[tuple[int, bytes], ...] = ()


def _field(value: str, size: int, name: str) -> bytes:
    if not value:
        return b""
    raw = value.encode("utf-8")
    if len(raw) >= size:  # keep room for the terminating NUL firmware looks for
        raise FieldTooLong(f"{name} is {len(raw)} bytes; the BOOTP {name} field holds at most {size - 1}")
    if b"\0" in raw:
        raise FieldTooLong(f"{name} contains a NUL byte")
    return raw


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """TLV-encode options, splitting values over 255 bytes into consecutive instances (RFC 3396)."""
    out: list[bytes] = []
    append = out.append
    for code, value in options:
        if not 0 < code < 255:
            raise ValueError(f"option code {code} cannot be encoded")
        n = len(value)
        if n <= 255:
            append(bytes((code, n)))
            append(value)
            continue
        for start in range(0, n, 255):
            chunk = value[start : start + 255]
            append(bytes((code, len(chunk))))
            append(chunk)
    return b"".join(out)


_MSGTYPE_OPTION = {t: bytes((OPT_MSGTYPE, 1, t)) for t in MSGTYPE_NAMES}
_PADDING = bytes(MIN_BOOTP)


def encode(reply: Reply) -> bytes:
    """Bytes of a BOOTREPLY: header, cookie, 53 first, the options, END, padded to 300 bytes."""
    chaddr = reply.chaddr
    if len(chaddr) > 16:
        raise ValueError("chaddr longer than 16 bytes")
    packet = b"".join(
        (
            _HEADER.pack(
                BOOTREPLY,
                1,
                len(chaddr) if chaddr else 6,
                0,  # hops: 0 from servers (RFC 2131 table 3); relays keep their own count
                reply.xid,
                0,  # secs: 0 from servers
                reply.flags,
                _ip_int(reply.ciaddr),
                _ip_int(reply.yiaddr),
                _ip_int(reply.siaddr),
                _ip_int(reply.giaddr),
                chaddr,
                _field(reply.sname, SNAME_LEN, "sname"),
                _field(reply.file, FILE_LEN, "file"),
                MAGIC_INT,
            ),
            _MSGTYPE_OPTION.get(reply.msgtype) or bytes((OPT_MSGTYPE, 1, reply.msgtype)),
            encode_options(reply.options),
            b"\xff",
        )
    )
    if len(packet) < MIN_BOOTP:
        packet += _PADDING[: MIN_BOOTP - len(packet)]
    return packet


class ReplyTemplate(NamedTuple):
    """A reply's bytes less what differs from one request to the next: xid, chaddr, flags, ciaddr,
    giaddr, `file` (the header field) and the echoed client UUID (option 97). `encode_from` fills
    those in; the result is byte for byte `encode` of the whole Reply (tests/dhcp/test_codec.py)."""

    yiaddr: int
    siaddr: int
    sname: bytes
    head: bytes  # option 53 and the options before 97
    tail: bytes  # the options after 97, and END
    has_uuid: bool  # the reply echoes option 97 (between head and tail)
    bootfile_option: bool  # option 67 is among the options


def reply_template(reply: Reply) -> ReplyTemplate:
    options = reply.options
    at = next((i for i, (code, _) in enumerate(options) if code == OPT_CLIENT_UUID), None)
    before, after = (options, ()) if at is None else (options[:at], options[at + 1 :])
    return ReplyTemplate(
        _ip_int(reply.yiaddr),
        _ip_int(reply.siaddr),
        _field(reply.sname, SNAME_LEN, "sname"),
        (_MSGTYPE_OPTION.get(reply.msgtype) or bytes((OPT_MSGTYPE, 1, reply.msgtype))) + encode_options(before),
        encode_options(after) + b"\xff",
        at is not None,
        any(code == OPT_BOOTFILE for code, _ in options),
    )


def encode_from(
    template: ReplyTemplate, xid: int, chaddr: bytes, flags: int, ciaddr: str, giaddr: str, file: str,
    uuid: bytes | None,
) -> bytes:
    """`encode` of the Reply `template` was made from, with these fields (raises as `encode` does)."""
    if len(chaddr) > 16:
        raise ValueError("chaddr longer than 16 bytes")
    if template.has_uuid:
        value = uuid or b""
        middle = bytes((OPT_CLIENT_UUID, len(value))) + value if len(value) <= 255 else encode_options(
            ((OPT_CLIENT_UUID, value),))
    else:
        middle = b""
    packet = b"".join(
        (
            _HEADER.pack(
                BOOTREPLY, 1, len(chaddr) if chaddr else 6, 0, xid, 0, flags, _ip_int(ciaddr), template.yiaddr,
                template.siaddr, _ip_int(giaddr), chaddr, template.sname, _field(file, FILE_LEN, "file"), MAGIC_INT,
            ),
            template.head,
            middle,
            template.tail,
        )
    )
    if len(packet) < MIN_BOOTP:
        packet += _PADDING[: MIN_BOOTP - len(packet)]
    return packet


def pxe_options(sub: Iterable[tuple[int, bytes]]) -> bytes:
    """Option 43 contents with PXE sub-options, terminated by 255 as the PXE spec (and dnsmasq) does."""
    out = bytearray()
    for code, value in sub:
        if len(value) > 255 or not 0 < code < 255:
            raise ValueError(f"PXE sub-option {code} cannot be encoded")
        out += bytes((code, len(value))) + value
    out.append(OPT_END)
    return bytes(out)


def parse_pxe_options(data: bytes) -> dict[int, bytes]:
    """Option 43 sub-options; lenient (stops at a length that runs past the end). Never raises."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END or i + 1 >= len(data):
            break
        length = data[i + 1]
        if i + 2 + length > len(data):
            break
        out[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    return out
