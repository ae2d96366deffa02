"""Shared fixtures of the DHCP edge tests: the firmware captures and a test double of the core."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import attrs
import dpkt
import pytest

from netbootd.core.interfaces import Decision
from netbootd.dhcp import codec
from netbootd.model import Arch, Client, Firmware, Offer, OfferKind

# The captures live beside the repository (../shared/captures), not in it; NETBOOTD_CAPTURES points
# elsewhere (a checkout that is not beside them, e.g. a second git worktree).
CAPTURES = Path(
    os.environ.get("NETBOOTD_CAPTURES") or Path(__file__).resolve().parents[2] / ".." / "shared" / "captures"
)

BOOT_SERVER = "10.77.0.2"  # the proxy that answered in the captures
ADDRESS_SERVER = "10.77.0.1"


@attrs.frozen
class Datagram:
    capture: str
    index: int
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def capture_files() -> list[Path]:
    return sorted(CAPTURES.glob("*.pcap")) if CAPTURES.is_dir() else []


def read_capture(path: Path) -> Iterator[Datagram]:
    with path.open("rb") as fh:
        for index, (_ts, frame) in enumerate(dpkt.pcap.Reader(fh)):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            if {udp.sport, udp.dport} & {67, 68, 4011}:
                yield Datagram(
                    path.name,
                    index,
                    socket.inet_ntoa(ip.src),
                    udp.sport,
                    socket.inet_ntoa(ip.dst),
                    udp.dport,
                    bytes(udp.data),
                )


def client_requests() -> list[Datagram]:
    """Every DHCP request a firmware sent in the captures (to 67 or 4011)."""
    out = []
    for path in capture_files():
        out += [d for d in read_capture(path) if d.dport in (67, 4011) and d.payload[:1] == b"\x01"]
    return out


def port67_requests() -> list[Datagram]:
    """Every DHCPREQUEST a firmware sent to port 67 in the captures (the lease it took)."""
    return [d for d in client_requests() if d.dport == 67 and codec.decode(d.payload).msgtype == codec.REQUEST]


requires_captures = pytest.mark.skipif(
    not capture_files(),
    reason=f"firmware captures not found at {CAPTURES} (../shared/captures beside the repo, or set NETBOOTD_CAPTURES)",
)


class OfferingCore:
    """Test double of OUR OWN interface netbootd.core.interfaces.DhcpCore (the real core is tested
    with the edge in test_real_core.py): a subclass says what it offers in `offer()`; the decision
    carries no reason, reports are dropped, and no MAC has a machine file."""

    def offer(self, client: Client, server_ip: str) -> Offer | None:
        raise NotImplementedError

    def decide(self, client: Client, server_ip: str) -> Decision:
        return Decision(self.offer(client, server_ip), "")

    def dhcp_seen(self, client: Client, offer: Offer | None, reason: str, client_ip: str = "", port: int = 67) -> None:
        pass

    def is_known(self, mac: str) -> bool:
        return False


class FakeCore(OfferingCore):
    """Answers what the boot server in the captures answered, and records what it was told."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.calls: list[tuple[Client, str]] = []
        self.seen: list[tuple[Client, Offer | None, str, str, int]] = []  # dhcp_seen(...) arguments

    def dhcp_seen(self, client: Client, offer: Offer | None, reason: str, client_ip: str = "", port: int = 67) -> None:
        self.seen.append((client, offer, reason, client_ip, port))

    def offer(self, client: Client, server_ip: str) -> Offer | None:
        self.calls.append((client, server_ip))
        if not self.answer:
            return None
        if client.firmware is Firmware.IPXE:
            return Offer(OfferKind.IPXE_SCRIPT, f"http://{server_ip}:8080/E.ipxe", "default")
        if client.firmware is Firmware.HTTP_BOOT:
            return Offer(OfferKind.HTTP_EFI, f"http://{server_ip}:8080/ipxe.efi", "default")
        name = "undionly.kpxe" if client.arch is Arch.BIOS else "snponly.efi"
        return Offer(OfferKind.TFTP, name, "default")


@pytest.fixture
def fake_core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def capture_log():
    """Every twisted.logger event emitted while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
