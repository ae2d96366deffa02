"""DHCPv6 wire format (RFC 8415): strict decoding and encoding of client, server and relay messages.

- `decode(data, accept=TO_SERVER)` → a `Message`, or a `Relay` for RELAY-FORW/RELAY-REPL (with the
  relayed message decoded recursively), or raises `MalformedPacket(reason, detail)`; it raises
  nothing else, whatever the bytes. `reason` is one of `REASONS` (a closed set: a metric label).
- `encode(message_or_relay)` → bytes. DHCPv6 has no padding, option splitting or overloading, so
  the encoding is canonical: `encode(decode(x)) == x` for every `x` that decodes.
- Builders of what netbootd sends: option values (Server ID, Vendor Class, Boot File URL, Status
  Code, Relay Message, Interface-Id) and whole answers (`proxy_advertise`, `boot_reply`,
  `relay_reply`) shaped as EDK2 takes them (see `proxy_advertise`).

Strictness: the framing of every option (and of every relayed message) must be exact; options that
netbootd reads, or that RFC 8415 allows only once, are checked (size, inner framing, no repeats);
options it never reads (IA_NA contents, DNS servers, ...) are carried as opaque bytes, unchecked,
so that a round trip keeps them byte for byte.

Why hand-written rather than a library (the project uses a well-kept library when one fits):
- dpkt, already a dependency, has no DHCPv6 module.
- scapy 2.8.0's `scapy.layers.dhcp6` is maintained but lenient, which is what this module must not
  be: measured on the captured EDK2 SOLICIT, it accepts the packet cut by 5 bytes (the vendor class
  silently shortened to `PXEClient:Arch:00007:UNDI:0` while its length field says 32), a client ID
  whose length (400) runs ~300 bytes past the end (the rest of the packet swallowed into the DUID),
  a duplicated client ID, an unknown message type 200 and an empty packet; a 1-byte packet raises
  a bare struct.error. Its import also costs ~0.3 s and ~44 MiB of RSS (24 MB installed), against
  a few hundred lines of struct code here.
- dhcpkit, the other Python DHCPv6 codec, was last released in 2017.

Not `netbootd.dhcp.codec.MalformedPacket`: the edges do not import each other, and importing
anything from netbootd.dhcp first runs netbootd/dhcp/__init__.py, which loads Twisted and the
DHCPv4 protocol (measured: 0.4 s, 429 modules, for a module that must stay I/O-free). The class
here has the same shape (`reason`, `detail`) so an edge handles both the same way.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

# UDP ports
CLIENT_PORT = 546
SERVER_PORT = 547
BOOT_SERVER_PORT = 4011  # "4011 over IPv6": EDK2 asks the proxy named in the ADVERTISE's URL here

# Message types (RFC 8415 §7.3)
SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13
MSGTYPE_NAMES = {
    SOLICIT: "solicit",
    ADVERTISE: "advertise",
    REQUEST: "request",
    CONFIRM: "confirm",
    RENEW: "renew",
    REBIND: "rebind",
    REPLY: "reply",
    RELEASE: "release",
    DECLINE: "decline",
    RECONFIGURE: "reconfigure",
    INFORMATION_REQUEST: "information-request",
    RELAY_FORW: "relay-forw",
    RELAY_REPL: "relay-repl",
}

CLIENT_MESSAGES = frozenset({SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE, INFORMATION_REQUEST})
SERVER_MESSAGES = frozenset({ADVERTISE, REPLY, RECONFIGURE})
# What `decode` accepts as the outermost message (`accept=`):
TO_SERVER = CLIENT_MESSAGES | {RELAY_FORW}  # UDP 547: clients and relays
# UDP 4011: EDK2's PxeBcRequestBootService sends a copy of its REQUEST (same message type, minus
# IA_NA/IA_TA and the address server's Server ID, plus the proxy's); relays never forward to 4011.
TO_BOOT_SERVER = frozenset({REQUEST})
FROM_SERVER = SERVER_MESSAGES | {RELAY_REPL}  # what servers send (to check answers, ours or captured)
_INSIDE = {RELAY_FORW: CLIENT_MESSAGES | {RELAY_FORW}, RELAY_REPL: SERVER_MESSAGES | {RELAY_REPL}}
# RFC 8415 §16: a server MUST discard these when they carry no Client Identifier.
NEEDS_CLIENT_ID = frozenset({SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE})

# Option codes (RFC 8415 §21, RFC 5970, RFC 6939)
OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAADDR = 5  # inside an IA_NA / IA_TA
OPT_ORO = 6
OPT_PREFERENCE = 7
OPT_ELAPSED_TIME = 8
OPT_RELAY_MSG = 9
OPT_UNICAST = 12
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_USER_CLASS = 15
OPT_VENDOR_CLASS = 16
OPT_VENDOR_OPTS = 17
OPT_INTERFACE_ID = 18
OPT_RECONF_MSG = 19
OPT_RECONF_ACCEPT = 20
OPT_DNS_SERVERS = 23
OPT_IA_PD = 25
OPT_BOOTFILE_URL = 59
OPT_BOOTFILE_PARAM = 60
OPT_CLIENT_ARCH_TYPE = 61
OPT_NII = 62
OPT_CLIENT_LINKLAYER_ADDR = 79

# RFC 8415 §21: "Unless otherwise noted, each option may appear only once"; IA_NA/IA_TA/IA_PD (one
# per IAID), Vendor Class and Vendor-specific Information (one per enterprise) may repeat. We refuse
# repeats of the options a server reads, where two values would be ambiguous; unknown options pass.
SINGLETONS = frozenset(
    {
        OPT_CLIENTID,
        OPT_SERVERID,
        OPT_ORO,
        OPT_PREFERENCE,
        OPT_ELAPSED_TIME,
        OPT_RELAY_MSG,
        OPT_UNICAST,
        OPT_STATUS_CODE,
        OPT_RAPID_COMMIT,
        OPT_USER_CLASS,
        OPT_INTERFACE_ID,
        OPT_RECONF_MSG,
        OPT_RECONF_ACCEPT,
        OPT_BOOTFILE_URL,
        OPT_BOOTFILE_PARAM,
        OPT_CLIENT_ARCH_TYPE,
        OPT_NII,
        OPT_CLIENT_LINKLAYER_ADDR,
    }
)

# Enterprise number of the PXE vendor class: EDK2 uses Intel's ("TODO: IANA TBD: temporarily using
# Intel's", PxeBcDhcp6.h) and iPXE copies it as the de facto standard.
ENTERPRISE_PXE = 343
PXE_CLIENT = b"PXEClient"
HTTP_CLIENT = b"HTTPClient"

MSG_HEADER_LEN = 4  # msg-type + 3-byte transaction-id
RELAY_HEADER_LEN = 34  # msg-type, hop-count, link-address, peer-address
# Largest datagram we accept. Firmware messages are small (captures: 50..166 bytes) and a client
# keeps to the IPv6 minimum MTU (1280); each relay adds 38+ bytes (header + option 9) plus its own
# options (interface-id, 79, remote-id: ~100 bytes for real relays). 4096 leaves room for a deep
# relay chain around a full-size client message and refuses anything only a fragment flood makes.
MAX_PACKET = 4096
# A firmware message carries 6..8 options (captures), iPXE's ~8; relays add a few per hop. Hundreds
# of empty 4-byte options are only ever an attempt to make the parser work hard.
MAX_OPTIONS = 128
# Relay nesting: RFC 3315 §5.5 set HOP_COUNT_LIMIT to 32 and RFC 8415 §7.6 lowered it to 8; a relay
# drops a RELAY-FORW whose hop-count has reached the limit, so even old relays can build at most 33
# layers and current ones 9. We accept 32 layers: every real chain, with a wide margin, and a bound
# on recursion and work for hostile input.
MAX_RELAY_DEPTH = 32

# Every reason `decode` can give (metric label values).
REASONS = (
    "truncated",  # empty, or shorter than the message or relay header
    "oversized",  # longer than MAX_PACKET
    "bad-option",  # an option header or length runs past the end of its message
    "option-bomb",  # more than MAX_OPTIONS options in the packet (all relay layers together)
    "duplicate-option",  # a SINGLETONS option twice in one message: ambiguous, refuse
    "bad-value",  # an option we read has an impossible size or inner framing
    "wrong-type",  # a message type this port (or this relay direction) does not take
    "no-client-id",  # a client message that must carry a Client Identifier has none
    "no-relay-message",  # a RELAY-FORW/RELAY-REPL without its Relay Message option
    "relay-depth",  # relays nested deeper than MAX_RELAY_DEPTH
    "internal",  # a bug of ours (any other exception, turned into a drop); tests fail on it
)


class MalformedPacket(Exception):
    """The bytes are not a DHCPv6 packet we accept; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


Options = tuple[tuple[int, bytes], ...]

_OPTION_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")


def _items(value: bytes, start: int) -> tuple[bytes, ...] | None:
    """The 2-byte-length-prefixed items of a user class or vendor class value, or None if they do
    not exactly fill it (RFC 8415 §21.15, §21.16)."""
    out = []
    i, n = start, len(value)
    while i < n:
        if i + 2 > n:
            return None
        end = i + 2 + _U16.unpack_from(value, i)[0]
        if end > n:
            return None
        out.append(value[i + 2 : end])
        i = end
    return tuple(out)


class VendorClass(NamedTuple):
    enterprise: int
    items: tuple[bytes, ...]


class Message(NamedTuple):
    """One client/server message (not a relay); immutable. `options` in wire order.

    The helpers read options that `decode` has checked; on a Message built by hand with malformed
    values they may raise.
    """

    msg_type: int
    transaction_id: int  # 24 bits
    options: Options = ()

    def get(self, code: int) -> bytes | None:
        for c, value in self.options:
            if c == code:
                return value
        return None

    def get_all(self, code: int) -> list[bytes]:
        return [value for c, value in self.options if c == code]

    def has(self, code: int) -> bool:
        return any(c == code for c, _ in self.options)

    @property
    def name(self) -> str:
        return MSGTYPE_NAMES.get(self.msg_type, str(self.msg_type))

    @property
    def client_id(self) -> bytes | None:
        """The client's DUID (option 1)."""
        return self.get(OPT_CLIENTID)

    @property
    def server_id(self) -> bytes | None:
        """The server's DUID (option 2)."""
        return self.get(OPT_SERVERID)

    @property
    def elapsed_time(self) -> int | None:
        """Option 8, in hundredths of a second."""
        raw = self.get(OPT_ELAPSED_TIME)
        return None if raw is None else _U16.unpack(raw)[0]

    @property
    def requested_options(self) -> tuple[int, ...]:
        """The Option Request option (6): codes the client asks for."""
        raw = self.get(OPT_ORO) or b""
        return tuple(_U16.unpack_from(raw, i)[0] for i in range(0, len(raw) - 1, 2))

    @property
    def client_arch_types(self) -> tuple[int, ...]:
        """Option 61 (RFC 5970): the client's architecture types, most preferred first."""
        raw = self.get(OPT_CLIENT_ARCH_TYPE) or b""
        return tuple(_U16.unpack_from(raw, i)[0] for i in range(0, len(raw) - 1, 2))

    @property
    def vendor_classes(self) -> tuple[VendorClass, ...]:
        out = []
        for raw in self.get_all(OPT_VENDOR_CLASS):
            items = _items(raw, 4)
            if len(raw) >= 4 and items is not None:
                out.append(VendorClass(int.from_bytes(raw[:4], "big"), items))
        return tuple(out)

    def vendor_class(self, enterprise: int = ENTERPRISE_PXE) -> tuple[bytes, ...] | None:
        """The data items of the first vendor class (16) of `enterprise`, or None."""
        for vc in self.vendor_classes:
            if vc.enterprise == enterprise:
                return vc.items
        return None

    @property
    def user_classes(self) -> tuple[bytes, ...]:
        """Option 15's items (RFC 8415 §21.15: each with a 2-byte length); () when absent."""
        raw = self.get(OPT_USER_CLASS)
        return (_items(raw, 0) or ()) if raw is not None else ()

    @property
    def bootfile_url(self) -> str | None:
        raw = self.get(OPT_BOOTFILE_URL)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def ia_na_addresses(self) -> tuple[str, ...]:
        """The addresses (IA Address options, 5) inside the IA_NAs (3): what a REQUEST asks the
        address server for. Lenient by design: IA_NA contents are carried unchecked (module doc),
        so a malformed one gives what could be read of it, never an exception."""
        found = []
        for ia in self.get_all(OPT_IA_NA):
            i = 12  # IAID, T1, T2
            while i + 4 <= len(ia):
                code, length = struct.unpack_from("!HH", ia, i)
                if code == OPT_IAADDR and length >= 24 and i + 4 + length <= len(ia):
                    found.append(socket.inet_ntop(socket.AF_INET6, ia[i + 4 : i + 20]))
                i += 4 + length
        return tuple(found)

    @property
    def status(self) -> tuple[int, str] | None:
        """Option 13 at message level: (status code, message)."""
        raw = self.get(OPT_STATUS_CODE)
        if raw is None:
            return None
        return _U16.unpack_from(raw)[0], raw[2:].decode("utf-8", "replace")


class Relay(NamedTuple):
    """A RELAY-FORW or RELAY-REPL (RFC 8415 §9) and the message it carries, decoded.

    `options` are in wire order and include the Relay Message (9) at its place; `encode` writes
    `encode(message)` there (for a decoded Relay those are the same bytes).
    """

    msg_type: int
    hop_count: int
    link_address: str  # IPv6, as socket.inet_ntop writes it
    peer_address: str
    options: Options
    message: Message | Relay

    def get(self, code: int) -> bytes | None:
        for c, value in self.options:
            if c == code:
                return value
        return None

    @property
    def name(self) -> str:
        return MSGTYPE_NAMES[self.msg_type]

    @property
    def interface_id(self) -> bytes | None:
        return self.get(OPT_INTERFACE_ID)

    @property
    def chain(self) -> list[Relay]:
        """Every relay layer, outermost (the relay next to us) first, innermost (next to the client) last."""
        out = [self]
        inner = self.message
        while isinstance(inner, Relay):
            out.append(inner)
            inner = inner.message
        return out

    @property
    def innermost(self) -> Message:
        """The client's (or server's) message inside all the relay layers."""
        inner = self.message
        while isinstance(inner, Relay):
            inner = inner.message
        return inner


# ------------------------------------------------------------------ decoding


def decode(data: bytes, *, accept: frozenset[int] = TO_SERVER) -> Message | Relay:
    """Parse one DHCPv6 datagram whose (outermost) message type is in `accept`.

    This is the only entry point for untrusted bytes; it raises nothing but MalformedPacket.
    """
    try:
        data = bytes(data)
        if len(data) > MAX_PACKET:
            raise MalformedPacket("oversized", f"{len(data)} bytes")
        return _decode(data, accept, 0, [0], "")
    except MalformedPacket:
        raise
    except Exception as exc:  # a bug of ours: still only a drop, but tests look for this reason
        raise MalformedPacket("internal", f"{type(exc).__name__}: {exc}") from exc


def _decode(data: bytes, accept: frozenset[int], depth: int, count: list[int], inside: str) -> Message | Relay:
    """One message; `inside` names the relay message that carries it ("" for the datagram itself)."""
    if not data:
        raise MalformedPacket("truncated", f"empty message inside a {inside}" if inside else "empty packet")
    msg_type = data[0]
    if msg_type not in accept:
        where = f" inside a {inside}" if inside else ""
        raise MalformedPacket("wrong-type", f"message type {MSGTYPE_NAMES.get(msg_type, msg_type)}{where}")
    if msg_type in (RELAY_FORW, RELAY_REPL):
        if depth >= MAX_RELAY_DEPTH:
            raise MalformedPacket("relay-depth", f"more than {MAX_RELAY_DEPTH} nested relay messages")
        if len(data) < RELAY_HEADER_LEN:
            raise MalformedPacket("truncated", f"{MSGTYPE_NAMES[msg_type]} of {len(data)} bytes")
        options = _scan(data, RELAY_HEADER_LEN, count, MSGTYPE_NAMES[msg_type])
        relayed = None
        for code, value in options:
            if code == OPT_RELAY_MSG:
                relayed = value
        if relayed is None:
            raise MalformedPacket("no-relay-message", MSGTYPE_NAMES[msg_type])
        inner = _decode(relayed, _INSIDE[msg_type], depth + 1, count, MSGTYPE_NAMES[msg_type])
        return Relay(
            msg_type,
            data[1],
            socket.inet_ntop(socket.AF_INET6, data[2:18]),
            socket.inet_ntop(socket.AF_INET6, data[18:34]),
            options,
            inner,
        )
    if len(data) < MSG_HEADER_LEN:
        raise MalformedPacket("truncated", f"{len(data)} bytes")
    options = _scan(data, MSG_HEADER_LEN, count, MSGTYPE_NAMES[msg_type])
    if msg_type in NEEDS_CLIENT_ID and not any(code == OPT_CLIENTID for code, _ in options):
        raise MalformedPacket("no-client-id", MSGTYPE_NAMES[msg_type])
    return Message(msg_type, int.from_bytes(data[1:4], "big"), options)


def _check_duid(value: bytes) -> str:
    return "" if 3 <= len(value) <= 130 else f"DUID of {len(value)} bytes (RFC 8415 §11.1: 3..130)"


def _check_even(value: bytes) -> str:
    return "" if len(value) % 2 == 0 else f"{len(value)} bytes, not a list of 16-bit codes"


def _check_arch(value: bytes) -> str:
    return "" if value and len(value) % 2 == 0 else f"{len(value)} bytes, not a non-empty list of 16-bit types"


def _check_items(start: int) -> Callable[[bytes], str]:
    def check(value: bytes) -> str:
        if len(value) < start or _items(value, start) is None:
            return "data items do not fill the option exactly"
        return ""

    return check


def _check_size(size: int) -> Callable[[bytes], str]:
    def check(value: bytes) -> str:
        return "" if len(value) == size else f"{len(value)} bytes, must be {size}"

    return check


def _check_min(size: int) -> Callable[[bytes], str]:
    def check(value: bytes) -> str:
        return "" if len(value) >= size else f"{len(value)} bytes, at least {size} needed"

    return check


# option code → check of its value (an empty string: fine; otherwise what is wrong)
_CHECKS = {
    OPT_CLIENTID: _check_duid,
    OPT_SERVERID: _check_duid,
    OPT_ORO: _check_even,
    OPT_PREFERENCE: _check_size(1),
    OPT_ELAPSED_TIME: _check_size(2),
    OPT_UNICAST: _check_size(16),
    OPT_STATUS_CODE: _check_min(2),
    OPT_RAPID_COMMIT: _check_size(0),
    OPT_USER_CLASS: _check_items(0),
    OPT_VENDOR_CLASS: _check_items(4),  # enterprise number, then the items
    OPT_CLIENT_ARCH_TYPE: _check_arch,
    OPT_NII: _check_size(3),  # RFC 5970 §3.2: type, major, minor
    OPT_CLIENT_LINKLAYER_ADDR: _check_min(3),  # RFC 6939: 2-byte type + an address
}


def _scan(data: bytes, start: int, count: list[int], where: str) -> Options:
    """The options of one message, from `start` to the end of `data`, checked."""
    out = []
    seen: set[int] = set()
    i, n = start, len(data)
    while i < n:
        if i + 4 > n:
            raise MalformedPacket("bad-option", f"option header cut short at byte {i} of the {where}")
        code, length = _OPTION_HEADER.unpack_from(data, i)
        end = i + 4 + length
        if end > n:
            raise MalformedPacket("bad-option", f"option {code} length {length} runs past the end of the {where}")
        count[0] += 1
        if count[0] > MAX_OPTIONS:
            raise MalformedPacket("option-bomb", f"more than {MAX_OPTIONS} options")
        value = data[i + 4 : end]
        if code in SINGLETONS:
            if code in seen:
                raise MalformedPacket("duplicate-option", f"option {code} twice in the {where}")
            seen.add(code)
        check = _CHECKS.get(code)
        if check is not None:
            problem = check(value)
            if problem:
                raise MalformedPacket("bad-value", f"option {code} in the {where}: {problem}")
        out.append((code, value))
        i = end
    return tuple(out)


# ------------------------------------------------------------------ encoding


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    out = []
    for code, value in options:
        if not 0 <= code <= 0xFFFF or len(value) > 0xFFFF:
            raise ValueError(f"option {code} of {len(value)} bytes cannot be encoded")
        out.append(_OPTION_HEADER.pack(code, len(value)))
        out.append(value)
    return b"".join(out)


def encode(packet: Message | Relay) -> bytes:
    """The bytes of a message or relay message (a Relay's option 9 is `encode(packet.message)`)."""
    if isinstance(packet, Relay):
        if packet.msg_type not in (RELAY_FORW, RELAY_REPL) or not 0 <= packet.hop_count <= 255:
            raise ValueError(f"not a relay header: type {packet.msg_type}, hop count {packet.hop_count}")
        relayed = encode(packet.message)
        options = [(code, relayed if code == OPT_RELAY_MSG else value) for code, value in packet.options]
        if not any(code == OPT_RELAY_MSG for code, _ in options):
            options.append((OPT_RELAY_MSG, relayed))
        return b"".join(
            (
                bytes((packet.msg_type, packet.hop_count)),
                socket.inet_pton(socket.AF_INET6, packet.link_address),
                socket.inet_pton(socket.AF_INET6, packet.peer_address),
                encode_options(options),
            )
        )
    if not 0 < packet.msg_type <= 255 or packet.msg_type in (RELAY_FORW, RELAY_REPL):
        raise ValueError(f"message type {packet.msg_type} is not a client/server message")
    if not 0 <= packet.transaction_id <= 0xFFFFFF:
        raise ValueError(f"transaction id {packet.transaction_id:#x} does not fit 24 bits")
    return bytes((packet.msg_type,)) + packet.transaction_id.to_bytes(3, "big") + encode_options(packet.options)


# ------------------------------------------------------------------ option builders


def client_id_option(duid: bytes) -> tuple[int, bytes]:
    """Option 1: the client's DUID, echoed as it came."""
    return OPT_CLIENTID, duid


def server_id_option(duid: bytes) -> tuple[int, bytes]:
    """Option 2: our DUID (`duid.duid_ll(mac)` or `duid.duid_llt(...)`)."""
    if not 3 <= len(duid) <= 130:
        raise ValueError(f"a DUID is 3..130 bytes, not {len(duid)}")
    return OPT_SERVERID, duid


def vendor_class_option(*items: bytes, enterprise: int = ENTERPRISE_PXE) -> tuple[int, bytes]:
    """Option 16: an enterprise number and one or more data items, each with a 2-byte length."""
    if not items:
        raise ValueError("a vendor class needs at least one data item")
    body = b"".join(_U16.pack(len(item)) + item for item in items)
    return OPT_VENDOR_CLASS, enterprise.to_bytes(4, "big") + body


def bootfile_url_option(url: str) -> tuple[int, bytes]:
    """Option 59 (RFC 5970): the URL as ASCII (percent-encode anything else), no terminating NUL,
    as the captured answers that booted OVMF have it."""
    try:
        return OPT_BOOTFILE_URL, url.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"boot file URL must be ASCII (percent-encoded): {url!r}") from None


def status_code_option(code: int, message: str = "") -> tuple[int, bytes]:
    """Option 13: a status code (0 Success, 1 UnspecFail, 2 NoAddrsAvail, ...) and a UTF-8 message."""
    return OPT_STATUS_CODE, _U16.pack(code) + message.encode("utf-8")


def relay_message_option(packet: Message | Relay) -> tuple[int, bytes]:
    """Option 9: the message a relay carries."""
    return OPT_RELAY_MSG, encode(packet)


def interface_id_option(value: bytes) -> tuple[int, bytes]:
    """Option 18: the relay's Interface-Id, echoed unchanged (RFC 8415 §19.3)."""
    return OPT_INTERFACE_ID, value


# ------------------------------------------------------------------ answers


def _boot_answer(msg_type: int, request: Message, server_duid: bytes, vendor: bytes, url: str) -> Message:
    client_id = request.client_id
    if client_id is None:
        raise ValueError(f"{request.name} has no Client Identifier to echo")
    if vendor not in (PXE_CLIENT, HTTP_CLIENT):
        raise ValueError(f"vendor class must be {PXE_CLIENT!r} or {HTTP_CLIENT!r}, not {vendor!r}")
    return Message(
        msg_type,
        request.transaction_id,
        (
            client_id_option(client_id),
            server_id_option(server_duid),
            vendor_class_option(vendor),
            bootfile_url_option(url),
        ),
    )


def proxy_advertise(solicit: Message, server_duid: bytes, vendor: bytes, url: str) -> Message:
    """A proxy's ADVERTISE, as EDK2 (PxeBcParseDhcp6Packet, HttpBootParseDhcp6Packet) takes it:
    the client's Client ID echoed, our Server ID, vendor class 343 whose first item starts with
    `PXEClient` or `HTTPClient`, and the Boot File URL (59). No IA_NA and no Status Code: either
    would make it an address server's offer. No Preference option: 255 would make the client take
    this ADVERTISE at once, before the address server's, and it needs both.

    For PXE the URL is `tftp://[proxy address]/file`: EDK2 then sends its REQUEST to UDP 4011 of
    that address (`boot_reply` answers it); for HTTP boot it is the http:// URL to boot."""
    return _boot_answer(ADVERTISE, solicit, server_duid, vendor, url)


def boot_reply(request: Message, server_duid: bytes, vendor: bytes, url: str) -> Message:
    """The REPLY to a REQUEST on UDP 4011: the same options as `proxy_advertise`, whose Boot File
    URL (`tftp://[addr]/file`) EDK2 boots (PxeBcRetryDhcp6Binl requires it)."""
    return _boot_answer(REPLY, request, server_duid, vendor, url)


def relay_reply(forward: Relay, answer: Message) -> Relay:
    """The RELAY-REPL (nested like `forward`) that carries `answer` back through the relays: each
    layer copies hop count, link and peer address of its RELAY-FORW and echoes its Interface-Id
    (RFC 8415 §19.3)."""
    inner: Message | Relay = relay_reply(forward.message, answer) if isinstance(forward.message, Relay) else answer
    options: list[tuple[int, bytes]] = []
    interface_id = forward.interface_id
    if interface_id is not None:
        options.append(interface_id_option(interface_id))
    options.append(relay_message_option(inner))
    return Relay(RELAY_REPL, forward.hop_count, forward.link_address, forward.peer_address, tuple(options), inner)
