"""The proxy-DHCPv6 controller: a decoded message + where it arrived → the answer to send (or none).

Pure: no sockets. The protocol (protocol.py) decodes and hands packets here; this classifies the
client (classify.py), asks the boot core what it gets — the same `BootCore.decide` the DHCPv4 edge
asks — and builds the answer (codec.py). What goes on the wire, as EDK2 takes it (codec docs):

- UDP 547, SOLICIT → ADVERTISE without IA_NA or status code, our Server ID, vendor class 343
  "PXEClient"/"HTTPClient" and the Boot File URL (59): `tftp://[addr]/file` for PXE (EDK2 then asks
  [addr]:4011), the http:// URL for HTTP boot and iPXE. It never answers REQUEST, RENEW, RELEASE
  ... on 547: those belong to the site's address server (the DHCPv4 rule, for the same reason).
- UDP 4011, REQUEST → REPLY with the same options (EDK2 boots its Boot File URL).
- RELAY-FORW (a routed segment) → the answer to the relayed message in a RELAY-REPL, back to the
  relay on 547; the client's MAC from its DUID or the relay's option 79.
"""

from __future__ import annotations

from typing import NamedTuple

from netbootd.core.interfaces import DhcpCore
from netbootd.dhcp6 import codec
from netbootd.dhcp6.classify import MAC, classify_reason
from netbootd.dhcp6.metrics import ANSWERS, DROPPED, REQUESTS
from netbootd.logs import RateLimiter, get_logger
from netbootd.model import Firmware, OfferKind


class Arrival(NamedTuple):
    port: int  # the local UDP port (547 or 4011)
    proxy: bool  # True: 4011 (the boot-server REQUEST)
    source: tuple  # (address, port, flowinfo, scope id) of the sender (a client or a relay)
    server_ip: str  # our IPv6 address for URLs (global or unique-local)
    server_duid: bytes  # our Server Identifier


# Begins as the DHCPv4 edge's reason does: the dashboard tells the normal path from errors by it.
SITE_REQUEST = "REQUEST for the site's DHCP server (DHCPv6): a proxy answers only SOLICITs and on 4011"


class Answer(NamedTuple):
    payload: bytes
    dest: tuple  # (address, port, flowinfo, scope id)


def boot_url(kind: OfferKind, bootfile: str, server_ip: str) -> str:
    """Option 59: TFTP names become tftp://[addr]/name; the core's http:// URLs pass through."""
    return f"tftp://[{server_ip}]/{bootfile.lstrip('/')}" if kind is OfferKind.TFTP else bootfile


class Dhcp6Controller:
    def __init__(self, core: DhcpCore, answer_lines_per_second: int = 200) -> None:
        self.core = core
        self.answer_lines = RateLimiter(burst=answer_lines_per_second, period=1.0)
        self.log = get_logger("netbootd.dhcp6")

    def answer(self, packet: codec.Message | codec.Relay, arrival: Arrival) -> Answer | None:
        message = packet.innermost if isinstance(packet, codec.Relay) else packet
        wanted = codec.REQUEST if arrival.proxy else codec.SOLICIT
        if message.msg_type != wanted:
            # REQUEST/RENEW/RELEASE/... on 547 are the address server's; on 4011 only REQUEST comes
            if message.msg_type == codec.REQUEST and not arrival.proxy:
                self.site_server_request(packet, message)
            self.refuse("request-for-dhcp-server" if not arrival.proxy else "msgtype", message, arrival)
            return None
        client, identity, why = classify_reason(packet)
        if client is None:
            self.refuse(why, message, arrival)
            return None
        firmware, arch = client.firmware.value, client.arch.value
        REQUESTS.labels(firmware, arch, message.name).inc()
        decision = self.core.decide(client, arrival.server_ip)
        offer = decision.offer
        # No address learned here: EDK2 sends its 4011 REQUEST from its SLAAC address but downloads
        # from its DHCPv6 lease (site_server_request learns that one); a timeline entry holds one
        # address per machine, and the later one would disown the downloads.
        self.core.dhcp_seen(client, offer, decision.reason, "", arrival.port)
        if offer is None:
            ANSWERS.labels(firmware, "none").inc()
            if self.answer_lines.allow("not-answered"):
                self.log.info("not answered: {why}", why=decision.reason, mac=client.mac, arch=arch,
                              firmware=firmware, port=arrival.port, family="ipv6")
            return None
        url = boot_url(offer.kind, offer.bootfile, arrival.server_ip)
        vendor = codec.HTTP_CLIENT if client.firmware is Firmware.HTTP_BOOT else codec.PXE_CLIENT
        build = codec.boot_reply if arrival.proxy else codec.proxy_advertise
        answer = build(message, arrival.server_duid, vendor, url)
        reply: codec.Message | codec.Relay = answer
        if isinstance(packet, codec.Relay):
            reply = codec.relay_reply(packet, answer)
        # A client: its link-local address and port 546 (on 4011: its address and 4011). A relay: the
        # port it sent from (547, or another per RFC 8357's source-port option).
        dest = arrival.source
        ANSWERS.labels(firmware, offer.kind.value).inc()
        if self.answer_lines.allow("answered"):
            self.log.info("answered", mac=client.mac, arch=arch, firmware=firmware, offered=url, machine=offer.machine,
                          port=arrival.port, family="ipv6", identity=identity.source if identity else "",
                          relay=arrival.source[0] if isinstance(packet, codec.Relay) else None)
        return Answer(codec.encode(reply), dest)

    def site_server_request(self, packet: codec.Message | codec.Relay, message: codec.Message) -> None:
        """A boot client's REQUEST to the site server: never answered, but the address it asks for
        is where EDK2 downloads its boot file from (PXE asks 4011 from another one), so the boot
        timeline learns it, as the DHCPv4 edge learns option 50, and files those downloads under
        this machine."""
        client, identity, _why = classify_reason(packet)
        addresses = message.ia_na_addresses
        # Only a MAC identity: iPXE names itself by a DUID-UUID, and its address is claimed by the
        # script request naming its MAC; a DUID claiming it too would make both suspects.
        if client is None or identity is None or identity.kind != MAC or not addresses:
            return
        self.core.dhcp_seen(client, None, SITE_REQUEST, addresses[0], 547)

    def refuse(self, reason: str, message: codec.Message, arrival: Arrival) -> None:
        DROPPED.labels(reason).inc()
        self.log.debug("not answered: {reason}", reason=reason, msgtype=message.name, port=arrival.port,
                       source=arrival.source[0])
