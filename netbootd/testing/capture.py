"""Reading a lab's capture of its bridge: a short conversation summary for failure reports, and the
DHCP packets decoded (what each firmware asked and who answered what)."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import attrs

from netbootd.testing.results import tail

# What the summary shows: UDP, ICMP, ARP, TCP opens/closes/resets and the first segment of HTTP
# requests and responses (not the bulk data in between).
_TCP_PAYLOAD4 = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
CAPTURE_FILTER = (
    f"(udp or icmp or arp or tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
    f" or {_TCP_PAYLOAD4} = 0x47455420 or {_TCP_PAYLOAD4} = 0x48454144 or {_TCP_PAYLOAD4} = 0x48545450)"
)
# The same for an IPv6-only lab: UDP, and TCP opens/closes/resets (tcpdump's tcp[] offsets are
# IPv4-only; 53 = the TCP flags byte behind a 40-byte IPv6 header without extension headers).
CAPTURE_FILTER6 = "(udp or (ip6 and tcp and ip6[53] & 0x07 != 0))"
DHCP_DETAIL = re.compile(
    r"(DHCP-Message|Vendor-Class|Vendor-Option|ARCH|User-Class|Server-ID|BF) \(\d+\), length|Your-IP|Server-IP|file \""
)


def tcpdump(pcap: Path, *args: str) -> str:
    proc = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-tt", *args], capture_output=True, text=True, timeout=60)
    return proc.stdout + "".join(f"{line}\n" for line in proc.stderr.splitlines() if "reading from" not in line)


def decoded(pcap: Path) -> str:
    return tcpdump(pcap, "-v")


def summary(pcap: Path, lines: int = 40, ipv6: bool = False) -> str:
    """The conversation on the bridge (one line a packet; TCP data segments and TFTP blocks
    counted, not listed), then the DHCP packets decoded (the options that matter). `ipv6`: the
    lab is IPv6-only (the IPv6 conversation and DHCPv6, instead of IPv4 and DHCP)."""
    if not pcap.exists():
        return "(no capture)"
    out: list[str] = []
    bulk = 0
    for line in tcpdump(pcap, CAPTURE_FILTER6 if ipv6 else "not ip6 and " + CAPTURE_FILTER).splitlines():
        if re.search(r"UDP, length \d+$", line):  # TFTP blocks and ACKs (ephemeral ports)
            if bulk == 0:
                out.append(line)  # the first one shows who answers whom, from where
            bulk += 1
            continue
        if bulk > 1:
            out.append(f"    ({bulk - 1} more UDP packets)")
        bulk = 0
        out.append(line)
    if bulk > 1:
        out.append(f"    ({bulk - 1} more UDP packets)")
    dhcp: list[str] = []
    ports = "port 546 or port 547 or port 4011" if ipv6 else "port 67 or port 68 or port 4011"
    for line in tcpdump(pcap, "-v", ports).splitlines():
        if not line.startswith((" ", "\t")) or "BOOTP/DHCP" in line or DHCP_DETAIL.search(line):
            dhcp.append(line)
    return f"{tail(chr(10).join(out), lines)}\n--- DHCP packets decoded ---\n{tail(chr(10).join(dhcp), lines * 2)}"


DHCP_OFFER, DHCP_REQUEST, DHCP_ACK = 2, 3, 5


@attrs.frozen
class DhcpPacket:
    op: int  # 1 BOOTREQUEST, 2 BOOTREPLY
    src: str
    sport: int
    dst: str
    dport: int
    msgtype: int | None
    xid: int
    yiaddr: str
    server_id: str

    def __str__(self) -> str:
        return (
            f"{self.src}:{self.sport} -> {self.dst}:{self.dport} op {self.op} type {self.msgtype} xid {self.xid:08x}"
            f" yiaddr {self.yiaddr} server id {self.server_id}"
        )


def dhcp_packets(pcap: Path) -> list[DhcpPacket]:
    """The DHCP packets (UDP 67/68/4011) of a capture. A record tcpdump is still writing is skipped."""
    import dpkt

    out: list[DhcpPacket] = []
    with pcap.open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            try:
                ip = dpkt.ethernet.Ethernet(frame).data
                udp = ip.data
                if not isinstance(ip, dpkt.ip.IP) or not isinstance(udp, dpkt.udp.UDP):
                    continue
                if not {udp.sport, udp.dport} & {67, 68, 4011}:
                    continue
                dhcp = dpkt.dhcp.DHCP(bytes(udp.data))
            except (dpkt.UnpackError, ValueError):
                continue
            opts = dict(dhcp.opts)
            msgtype = opts.get(53, b"")[:1]
            server_id = opts.get(54, b"")
            out.append(
                DhcpPacket(
                    dhcp.op,
                    socket.inet_ntoa(ip.src),
                    udp.sport,
                    socket.inet_ntoa(ip.dst),
                    udp.dport,
                    msgtype[0] if msgtype else None,
                    dhcp.xid,
                    socket.inet_ntoa(dhcp.yiaddr.to_bytes(4, "big")),
                    socket.inet_ntoa(server_id) if len(server_id) == 4 else "",
                )
            )
    return out


def proxy_acks_on_67(packets: list[DhcpPacket]) -> list[DhcpPacket]:
    """ACKs from port 67 with no address: a proxy answering a REQUEST meant for the site's server
    (which puts the lease in yiaddr). With the same server id, such an ACK races the real one and
    EDK2 DECLINEs the lease (PXE-E07), so a lab checks every answer, not whether one boot won."""
    return [p for p in packets if p.op == 2 and p.sport == 67 and p.msgtype == DHCP_ACK and p.yiaddr == "0.0.0.0"]


@attrs.frozen
class Dhcp6Datagram:
    """One DHCPv6 datagram of a capture (UDP 546/547/4011 over IPv6), undecoded: the tests decode
    it with netbootd.dhcp6.codec (this module stays free of the edges)."""

    time: float
    src_mac: str
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes

    def __str__(self) -> str:
        return f"[{self.src}]:{self.sport} -> [{self.dst}]:{self.dport} type {self.payload[:1].hex()} ({len(self.payload)} bytes)"


DHCP6_PORTS = frozenset({546, 547, 4011})


def dhcp6_datagrams(pcap: Path) -> list[Dhcp6Datagram]:
    """The DHCPv6 datagrams of a capture. A record tcpdump is still writing is skipped."""
    import dpkt

    out: list[Dhcp6Datagram] = []
    with pcap.open("rb") as fh:
        for ts, frame in dpkt.pcap.Reader(fh):
            try:
                eth = dpkt.ethernet.Ethernet(frame)
            except (dpkt.UnpackError, ValueError):
                continue
            ip, udp = eth.data, getattr(eth.data, "data", None)
            if not isinstance(ip, dpkt.ip6.IP6) or not isinstance(udp, dpkt.udp.UDP):
                continue
            if not {udp.sport, udp.dport} & DHCP6_PORTS:
                continue
            out.append(Dhcp6Datagram(
                float(ts), ":".join(f"{b:02x}" for b in eth.src), socket.inet_ntop(socket.AF_INET6, ip.src), udp.sport,
                socket.inet_ntop(socket.AF_INET6, ip.dst), udp.dport, bytes(udp.data),
            ))
    return out
