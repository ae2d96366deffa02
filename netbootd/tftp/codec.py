"""TFTP packets: bytes from the wire → small frozen objects, and back.

The file name and mode of request packets (RRQ/WRQ) are parsed by tftpy's packet classes, as
are OACKs; every exception they raise on bad input (UnicodeDecodeError, struct.error,
TftpException, IndexError, ...) becomes one `MalformedPacket`. Everything else is hand-coded:

- request options: tftpy refuses empty option values (RFC 2090 `multicast` has one), so a
  whole request would be refused for an option we would merely ignore.

- ACK is 4 bytes and the one packet the server receives on its hot path: a slice and
  `int.from_bytes` instead of tftpy's factory (which formats debug strings eagerly on every call).
- ERROR: tftpy's decoder logs every one at ERROR level through stdlib logging (a remote client
  could flood stderr with it) and its encoder drops the message and fails on code 0.
- DATA: one `struct.pack` of the 4-byte header plus the payload (the hot path when sending).

Option names are case-insensitive (returned lower-cased); values stay strings here. What an
option *means* (blksize, tsize, timeout, windowsize ranges) is decided by the session's
negotiation, not by the codec.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType

import attrs
from tftpy.TftpPacketTypes import TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ

OP_RRQ = 1
OP_WRQ = 2
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6

# RFC 1350 / 2347 error codes
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL_OP = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464
MAX_WINDOWSIZE = 65535  # RFC 7440


class MalformedPacket(ValueError):
    """The bytes are not a TFTP packet we can make sense of.

    `reason` is a short, fixed token usable as a metrics label; `opcode` is the opcode when the
    first two bytes were readable (so a server can answer a broken *request* with an ERROR).
    """

    def __init__(self, reason: str, detail: str = "", opcode: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.opcode = opcode


def _frozen_options(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class ReadRequest:
    filename: str
    mode: str  # lower case: "octet", "netascii", "mail", or whatever the client sent
    options: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_options)


@attrs.frozen
class WriteRequest:
    filename: str
    mode: str
    options: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_options)


@attrs.frozen
class Ack:
    block: int


@attrs.frozen
class Error:
    code: int
    message: str


@attrs.frozen
class Data:
    """A DATA packet (a read-only server never expects one)."""

    block: int
    size: int


@attrs.frozen
class OptionAck:
    """An OACK (a server never expects one)."""

    options: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_options)


Packet = ReadRequest | WriteRequest | Ack | Error | Data | OptionAck

_HEADER = struct.Struct("!HH")
_pack_header = _HEADER.pack


def _parse_options(rest: bytes, opcode: int) -> dict[str, str]:
    """RFC 2347 options after the mode: NUL-terminated name/value pairs.

    Not tftpy's `decode_options`: it refuses empty values, which RFC 2090's `multicast`
    option uses, so a client asking for multicast would get its whole request refused.
    Names are lower-cased; names and values are decoded leniently (an option we do not
    know is ignored whatever its bytes); trailing NUL padding (seen from some ROMs) is allowed.
    """
    if not rest:
        return {}
    fields = rest.split(b"\x00")
    if fields[-1]:
        raise MalformedPacket("bad_request", "unterminated option", opcode)
    fields.pop()
    options: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        name = fields[i]
        if not name:
            if any(fields[i:]):
                raise MalformedPacket("bad_request", "empty option name", opcode)
            break  # padding
        if i + 1 >= len(fields):
            raise MalformedPacket("bad_request", "option without a value", opcode)
        options[name.decode("ascii", "replace").lower()] = fields[i + 1].decode("ascii", "replace")
    return options


def _parse_request(data: bytes, opcode: int) -> ReadRequest | WriteRequest:
    cls = TftpPacketRRQ if opcode == OP_RRQ else TftpPacketWRQ
    # tftpy parses the file name and mode; the options are ours (see _parse_options)
    name_end = data.find(b"\x00", 2)
    mode_end = data.find(b"\x00", name_end + 1) if name_end >= 0 else -1
    if mode_end < 0:
        raise MalformedPacket("bad_request", "file name and mode not NUL-terminated", opcode)
    packet = cls()
    packet.buffer = data[: mode_end + 1]
    try:
        packet.decode()
    except Exception as e:  # tftpy raises UnicodeDecodeError, struct.error, TftpException, ...
        raise MalformedPacket("bad_request", f"{type(e).__name__}: {e}", opcode) from None
    if not packet.filename:
        raise MalformedPacket("bad_request", "empty file name", opcode)
    if not packet.mode:
        raise MalformedPacket("bad_request", "empty mode", opcode)
    options = _parse_options(data[mode_end + 1 :], opcode)
    if opcode == OP_RRQ:
        return ReadRequest(packet.filename, packet.mode, options)
    return WriteRequest(packet.filename, packet.mode, options)


def parse(data: bytes) -> Packet:
    """Parse one datagram. Raises `MalformedPacket` (and nothing else) for any bad input."""
    try:
        if len(data) < 4:
            # shortest packets (ACK, empty DATA, ERROR without message) are 4 bytes
            raise MalformedPacket("short", f"{len(data)} bytes")
        opcode = (data[0] << 8) | data[1]
        if opcode == OP_ACK:
            return Ack((data[2] << 8) | data[3])
        if opcode == OP_RRQ or opcode == OP_WRQ:
            return _parse_request(bytes(data), opcode)
        if opcode == OP_ERROR:
            code = (data[2] << 8) | data[3]
            message = bytes(data[4:]).split(b"\x00", 1)[0].decode("ascii", "replace")
            return Error(code, message)
        if opcode == OP_DATA:
            return Data((data[2] << 8) | data[3], len(data) - 4)
        if opcode == OP_OACK:
            packet = TftpPacketOACK()
            packet.buffer = bytes(data)
            try:
                packet.decode()
            except Exception as e:
                raise MalformedPacket("bad_oack", f"{type(e).__name__}: {e}", opcode) from None
            return OptionAck({k.lower(): v for k, v in packet.options.items()})
        raise MalformedPacket("bad_opcode", str(opcode), opcode)
    except MalformedPacket:
        raise
    except Exception as e:  # belt and braces: nothing but MalformedPacket leaves this function
        raise MalformedPacket("unparseable", f"{type(e).__name__}: {e}") from None


def encode_data(block: int, payload: bytes) -> bytes:
    """DATA packet for (16-bit) block number `block`. `payload` may be any bytes-like object."""
    return _pack_header(OP_DATA, block & 0xFFFF) + payload


def data_header(block: int) -> bytes:
    return _pack_header(OP_DATA, block & 0xFFFF)


def encode_ack(block: int) -> bytes:
    return _pack_header(OP_ACK, block & 0xFFFF)


def encode_error(code: int, message: str = "") -> bytes:
    """ERROR packet carrying `message` (ASCII; anything else replaced by '?')."""
    text = message.encode("ascii", "replace").replace(b"\x00", b"?")
    return _pack_header(OP_ERROR, code & 0xFFFF) + text + b"\x00"


def encode_oack(options: Mapping[str, str | int]) -> bytes:
    """OACK with the options in the given order (tftpy's encoder; once per transfer)."""
    packet = TftpPacketOACK()
    packet.options = {str(k): str(v) for k, v in options.items()}
    return bytes(packet.encode().buffer)


def encode_request(
    filename: str, mode: str = "octet", options: Mapping[str, str | int] | None = None, write: bool = False
) -> bytes:
    """RRQ/WRQ (for clients and tests; tftpy's encoder refuses every mode but octet)."""
    parts = [filename.encode("ascii"), mode.encode("ascii")]
    for k, v in (options or {}).items():
        parts += [str(k).encode("ascii"), str(v).encode("ascii")]
    op = OP_WRQ if write else OP_RRQ
    return op.to_bytes(2, "big") + b"".join(p + b"\x00" for p in parts)
