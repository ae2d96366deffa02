"""Reading a lab's capture of its bridge: a short conversation summary for failure reports, and the
DHCP packets decoded (what each firmware asked and who answered what)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from netbootd.testing.lab import tail

# What the summary shows: UDP, ICMP, ARP, TCP opens/closes/resets and the first segment of HTTP
# requests and responses (not the bulk data in between).
_TCP_PAYLOAD4 = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
CAPTURE_FILTER = (
    f"(udp or icmp or arp or tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
    f" or {_TCP_PAYLOAD4} = 0x47455420 or {_TCP_PAYLOAD4} = 0x48454144 or {_TCP_PAYLOAD4} = 0x48545450)"
)
DHCP_DETAIL = re.compile(
    r"(DHCP-Message|Vendor-Class|Vendor-Option|ARCH|User-Class|Server-ID|BF) \(\d+\), length|Your-IP|Server-IP|file \""
)


def tcpdump(pcap: Path, *args: str) -> str:
    proc = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-tt", *args], capture_output=True, text=True, timeout=60)
    return proc.stdout + "".join(f"{line}\n" for line in proc.stderr.splitlines() if "reading from" not in line)


def decoded(pcap: Path) -> str:
    return tcpdump(pcap, "-v")


def summary(pcap: Path, lines: int = 40) -> str:
    """The conversation on the bridge (one line a packet; TCP data segments and TFTP blocks
    counted, not listed), then the DHCP packets decoded (the options that matter)."""
    if not pcap.exists():
        return "(no capture)"
    out: list[str] = []
    bulk = 0
    for line in tcpdump(pcap, "not ip6 and " + CAPTURE_FILTER).splitlines():
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
    for line in tcpdump(pcap, "-v", "port 67 or port 68 or port 4011").splitlines():
        if not line.startswith((" ", "\t")) or "BOOTP/DHCP" in line or DHCP_DETAIL.search(line):
            dhcp.append(line)
    return f"{tail(chr(10).join(out), lines)}\n--- DHCP packets decoded ---\n{tail(chr(10).join(dhcp), lines * 2)}"
