"""The proxy-DHCP controller: a decoded request + where it arrived → the answer to send (or none).

Pure: no sockets, no clock. The protocol (protocol.py) decodes and hands requests here; this
module classifies the client, asks the boot core what it gets, and builds the reply packet and
its destination. Policy is in overridable methods, so tests can subclass it.

What goes on the wire (reference.md §1, except its ACK on 67: see below; byte-checked against
../shared/captures):
- port 67: DISCOVER → OFFER; a REQUEST is never answered (below). Destination: giaddr:67 for a
  relayed request, else 255.255.255.255:68 out of the receiving interface. The broadcast flag is
  set in the reply (as dnsmasq does and every captured firmware accepted): the client has no
  address yet, and a relay must broadcast our answer onto the client's segment since yiaddr is 0.
- port 4011 (PXE boot-server discovery): REQUEST/INFORM → ACK with siaddr, sname and file,
  unicast back to the sender's address and port; flags copied.
- always: yiaddr 0, siaddr = boot server address, option 54 = same, option 60 `PXEClient`
  (`HTTPClient` for HTTP boot), option 97 echoed if sent, xid/chaddr/giaddr/ciaddr copied.
- BIOS (arch 0) on 67: option 43 with discovery control 8 ("boot the file in this offer").
- EFI PXE on 67: no file (the firmware then asks on 4011, where it gets the file).
- A URL too long for the 128-byte `file` field goes in option 67 instead (iPXE and EDK2 HTTP boot
  both read it); a TFTP name that long is refused (a configuration error, logged).

Why no REQUEST on 67 is answered: it is the client taking a lease from the server whose OFFER it
chose (option 54), and firmware only chooses an OFFER with an address: EDK2 files yiaddr-0 offers
as proxy offers (PxeBcDhcp4.c, HttpBootDhcp4.c), iPXE takes its server only from an OFFER with
yiaddr (dhcp.c). Every REQUEST to 67 in the captures names the site's server. Nothing after it
needs a proxy ACK: iPXE boots from the proxy OFFER (siaddr + file, else it asks on 4011), EDK2 PXE
asks option 54 of the proxy OFFER on 4011, EDK2 HTTP boot uses the proxy OFFER. An ACK can only
hurt: EDK2's Dhcp4Dxe (Dhcp4Io.c, DhcpHandleRequest) takes the first ACK whose option 54 is the
chosen server's and, if its yiaddr differs from the lease, DECLINEs and aborts (PXE-E07). On the
DHCP server's host and address our ACK carries that very option 54 and races the real one; a proxy
cannot know whether its address is also the site server's, so it answers none, as dnsmasq's proxy
mode does (REQUEST only on 4011). A boot-server discovery REQUEST broadcast to 67 (PXE spec) only
follows an OFFER that enables broadcast discovery, which ours never do. Such a REQUEST is still
reported to the core: its option 50 tells the boot timeline which address the machine is about to
have.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from netbootd.core.interfaces import DhcpCore
from netbootd.dhcp import codec
from netbootd.dhcp.classify import classify_reason
from netbootd.dhcp.metrics import ANSWERS, DROPPED, REQUESTS
from netbootd.logs import RateLimiter, get_logger
from netbootd.model import Arch, Client, Firmware, Offer, OfferKind

OPT_REQUESTED_IP = 50
# A REQUEST on 67 (module doc): the metric label, and the reason the boot timeline shows.
SITE_REQUEST_REASON = "request-for-dhcp-server"
SITE_REQUEST = "REQUEST for the site's DHCP server: a proxy answers only on 4011"

BROADCAST = "255.255.255.255"
MAX_TEMPLATES = 1024  # encoded answers kept (encode_reply); a handful in practice
ANSWER_LINES_PER_SECOND = 200
CLIENT_PORT = 68
RELAY_PORT = 67

# Option 43 for BIOS offers: discovery control 8, "boot the file named in this offer".
_USE_BOOTFILE = codec.pxe_options([(codec.PXE_DISCOVERY_CONTROL, bytes([codec.DISCOVERY_USE_BOOTFILE]))])
_DHCP_TYPES = {codec.DISCOVER: codec.OFFER}  # a REQUEST on 67 is the site server's (module doc)
_PROXY_TYPES = {codec.REQUEST: codec.ACK, codec.INFORM: codec.ACK}


class Arrival(NamedTuple):
    """Where a request came from and what we know about where it arrived."""

    port: int  # the local UDP port it arrived on (for logs)
    proxy: bool  # True: the PXE boot-server port (4011); False: the DHCP port (67)
    source: tuple[str, int]
    server_ip: str  # the address to advertise: siaddr, option 54, sname, URLs


class Answer(NamedTuple):
    payload: bytes
    dest: tuple[str, int]
    broadcast: bool  # must leave through the interface the request came in on


class DhcpController:
    def __init__(
        self,
        core: DhcpCore,
        *,
        client_port: int = CLIENT_PORT,
        relay_port: int = RELAY_PORT,
        answer_lines_per_second: int | None = ANSWER_LINES_PER_SECOND,
    ) -> None:
        self.core = core
        # One "answered" line per answer, up to this many a second; beyond that (a boot storm)
        # the next line that is written says how many were not (`unlogged_before=`). Formatting
        # and writing a line costs more than building the answer, journald drops bursts beyond
        # its own rate limit anyway, and netbootd_dhcp_answers_total stays exact. None: no limit.
        self.answer_lines = (
            RateLimiter(burst=answer_lines_per_second, period=1.0) if answer_lines_per_second else None
        )
        self.client_port = client_port
        self.relay_port = relay_port
        self._templates: dict[tuple, codec.ReplyTemplate] = {}  # see encode_reply
        self.log = get_logger("netbootd.dhcp")

    # -- entry point -------------------------------------------------------------------------

    def answer(self, request: codec.Packet, arrival: Arrival) -> Answer | None:
        reply_type = (_PROXY_TYPES if arrival.proxy else _DHCP_TYPES).get(request.msgtype)
        if reply_type is None:
            if request.msgtype == codec.REQUEST:
                self.site_server_request(request, arrival)
            else:
                self.refuse("msgtype", request, arrival, msgtype=request.msgtype_name)
            return None
        client, why = classify_reason(request.options, request.mac)
        if client is None:
            self.refuse(why, request, arrival)
            return None
        # `_value_`: the plain attribute behind Enum.value (a property, slow in 3.11's enum).
        firmware, arch = client.firmware._value_, client.arch._value_
        REQUESTS.inc(firmware, arch, request.msgtype_name)
        offer, why = self.decide(client, arrival)
        self.report(client, offer, why, request, arrival)
        if offer is None:
            ANSWERS.inc(firmware, "none")
            # rate-limited like the answers: a flood of requests from ignored or unknown machines
            # (spoofed MACs cost nothing) must not become a flood of log lines
            if self.answer_lines is None or self.answer_lines.allow("not-answered"):
                extra = {}
                skipped = self.answer_lines.take_suppressed("not-answered") if self.answer_lines is not None else 0
                if skipped:
                    extra["unlogged_before"] = skipped
                self.log.info(
                    "not answered: {why}",
                    why=why or "the boot core has no offer for this machine",
                    mac=client.mac,
                    arch=arch,
                    firmware=firmware,
                    uuid=client.uuid,
                    port=arrival.port,
                    **extra,
                )
            return None
        try:
            payload, names_file = self.encode_reply(request, client, offer, arrival, reply_type)
        except codec.FieldTooLong as exc:
            DROPPED.inc("bootfile-too-long")
            self.log.error(
                "not answered: {problem}",
                problem=str(exc),
                mac=client.mac,
                offered=offer.describe(),
                machine=offer.machine,
            )
            return None
        ANSWERS.inc(firmware, offer.kind._value_)
        dest, broadcast = self.destination(request, arrival)
        if self.answer_lines is None or self.answer_lines.allow("answered"):
            self.log_answer(request, client, offer, names_file, arrival, firmware, arch)
        return Answer(payload, dest, broadcast)

    def site_server_request(self, request: codec.Packet, arrival: Arrival) -> None:
        """A REQUEST on 67: not answered (module doc), but counted, logged at debug, and reported
        to the boot timeline, which learns the address the machine asks for (option 50)."""
        client, why = classify_reason(request.options, request.mac)
        if client is None:
            self.refuse(why, request, arrival)
            return
        REQUESTS.inc(client.firmware._value_, client.arch._value_, request.msgtype_name)
        server = request.options.get(codec.OPT_SERVER_ID, b"")
        server_id = socket.inet_ntoa(server) if len(server) == 4 else "none"
        self.report(client, None, f"{SITE_REQUEST} (server id {server_id})", request, arrival)
        self.refuse(SITE_REQUEST_REASON, request, arrival, server_id=server_id)

    def report(self, client: Client, offer: Offer | None, why: str, request: codec.Packet, arrival: Arrival) -> None:
        """Tell the core's boot timeline what happened, with the address this client has or asks
        for (option 50, ciaddr, or the 4011 source), so later TFTP/HTTP requests find their MAC."""
        if arrival.proxy:
            ip = arrival.source[0]
        elif request.ciaddr != "0.0.0.0":
            ip = request.ciaddr
        else:
            requested = request.options.get(OPT_REQUESTED_IP, b"")
            ip = socket.inet_ntoa(requested) if len(requested) == 4 else ""
        self.core.dhcp_seen(client, offer, why, ip, arrival.port)

    def log_answer(
        self,
        request: codec.Packet,
        client: Client,
        offer: Offer,
        names_file: bool,
        arrival: Arrival,
        firmware: str,
        arch: str,
    ) -> None:
        extra: dict[str, object] = {}
        if request.giaddr != "0.0.0.0":
            extra["relay"] = request.giaddr
        if not names_file:
            extra["file_sent"] = False  # EFI PXE on 67: the file follows on 4011
        if self.answer_lines is not None:
            skipped = self.answer_lines.take_suppressed("answered")
            if skipped:
                extra["unlogged_before"] = skipped
        self.log.info(
            "answered",
            mac=client.mac,
            arch=arch,
            firmware=firmware,
            offered=offer.describe(),
            machine=offer.machine,
            port=arrival.port,
            **extra,
        )

    # -- policy (overridable) ----------------------------------------------------------------

    def decide(self, client: Client, arrival: Arrival) -> tuple[Offer | None, str]:
        """The core's offer, and why / why not."""
        decision = self.core.decide(client, arrival.server_ip)
        return decision.offer, decision.reason

    def file_in_reply(self, client: Client, arrival: Arrival) -> bool:
        """EFI PXE gets its file over 4011 only, as in the captured exchange that booted: the
        67 OFFER names no file, so EDK2 asks the boot server on 4011 and gets it there."""
        return arrival.proxy or client.firmware is not Firmware.EFI_PXE

    def build(
        self, request: codec.Packet, client: Client, offer: Offer, arrival: Arrival, reply_type: int
    ) -> codec.Reply:
        """The reply, field by field. `encode_reply` sends its bytes without building it each time:
        whatever this reads from the request that is not in `_template_key` it must patch."""
        server = arrival.server_ip
        http = client.firmware is Firmware.HTTP_BOOT
        options: list[tuple[int, bytes]] = [
            (codec.OPT_SERVER_ID, _ip_bytes(server)),
            (codec.OPT_VENDOR_CLASS, b"HTTPClient" if http else b"PXEClient"),
        ]
        uuid = request.options.get(codec.OPT_CLIENT_UUID)
        if uuid is not None:
            options.append((codec.OPT_CLIENT_UUID, uuid))
        with_file = self.file_in_reply(client, arrival)
        if not arrival.proxy:
            if client.arch is Arch.BIOS and not http and with_file:
                options.append((codec.OPT_VENDOR, _USE_BOOTFILE))
        else:
            # PXE spec: a boot server echoes the boot item (type, layer) the client asked for.
            item = _boot_item(request)
            if item is not None:
                options.append((codec.OPT_VENDOR, codec.pxe_options([(codec.PXE_BOOT_ITEM, item)])))
        file, in_option = self.bootfile_fields(offer, with_file)
        if in_option is not None:
            # URLs only: both iPXE and EDK2 HTTP boot read option 67 before the file field.
            options.append((codec.OPT_BOOTFILE, in_option))
        return codec.Reply(
            msgtype=reply_type,
            xid=request.xid,
            chaddr=request.chaddr,
            flags=self.reply_flags(request, arrival),
            ciaddr=request.ciaddr,
            yiaddr="0.0.0.0",
            siaddr=server,
            giaddr=request.giaddr,
            sname=server if arrival.proxy else "",
            file=file,
            options=tuple(options),
        )

    @staticmethod
    def bootfile_fields(offer: Offer, with_file: bool) -> tuple[str, bytes | None]:
        """(the `file` header field, option 67's value or None) for this offer."""
        if not with_file:
            return "", None
        file = offer.bootfile
        if offer.kind is not OfferKind.TFTP and len(file.encode("utf-8")) >= codec.FILE_LEN:
            return "", file.encode("utf-8")
        return file, None

    @staticmethod
    def reply_flags(request: codec.Packet, arrival: Arrival) -> int:
        return request.flags if arrival.proxy else request.flags | 0x8000

    def encode_reply(
        self, request: codec.Packet, client: Client, offer: Offer, arrival: Arrival, reply_type: int
    ) -> tuple[bytes, bool]:
        """`codec.encode(self.build(...))`, and whether the reply names a file (field or option 67).

        Answers differ from one request to the next only in the request's own fields (xid,
        chaddr, flags, ciaddr, giaddr, the echoed UUID) and the file field: the rest is encoded
        once per `_template_key` (reply type, port, server address, firmware, arch, option 67,
        boot item) and patched. Nothing of the configuration is in a template but the offer's
        bootfile, which is either patched (file field) or part of the key (option 67): a reload
        that changes what a machine gets changes its answer at once."""
        with_file = self.file_in_reply(client, arrival)
        file, in_option = self.bootfile_fields(offer, with_file)
        uuid = request.options.get(codec.OPT_CLIENT_UUID)
        key = (reply_type, arrival.proxy, arrival.server_ip, client.firmware, client.arch, with_file, in_option,
               _boot_item(request) if arrival.proxy else None, uuid is not None)
        template = self._templates.get(key)
        if template is None:
            reply = self.build(request, client, offer, arrival, reply_type)
            template = codec.reply_template(reply)
            if len(self._templates) >= MAX_TEMPLATES:
                del self._templates[next(iter(self._templates))]  # the oldest: keys are few but a 4011 boot item is the client's
            self._templates[key] = template
        payload = codec.encode_from(template, request.xid, request.chaddr, self.reply_flags(request, arrival),
                                    request.ciaddr, request.giaddr, file, uuid)
        return payload, bool(file) or template.bootfile_option

    def destination(self, request: codec.Packet, arrival: Arrival) -> tuple[tuple[str, int], bool]:
        if arrival.proxy:
            return arrival.source, False
        if request.giaddr != "0.0.0.0":
            return (request.giaddr, self.relay_port), False
        return (BROADCAST, self.client_port), True

    def refuse(self, reason: str, request: codec.Packet, arrival: Arrival, **fields: object) -> None:
        DROPPED.inc(reason)
        self.log.debug("not answered: {reason}", reason=reason, mac=request.mac, port=arrival.port, **fields)


def _ip_bytes(text: str) -> bytes:
    return socket.inet_aton(text)


def _boot_item(request: codec.Packet) -> bytes | None:
    """The PXE boot item (option 43, sub-option 71: type and layer) the client asked for, if valid."""
    item = codec.parse_pxe_options(request.options.get(codec.OPT_VENDOR, b"")).get(codec.PXE_BOOT_ITEM)
    return item if item is not None and len(item) == 4 else None
