"""A flood from clients netbootd does not answer (ignored or unknown machines; spoofed MACs cost
nothing on the boot network) does not become a flood of log lines."""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from netbootd.dhcp.answer import DhcpController
from netbootd.dhcp.protocol import DhcpProtocol, InterfaceAddresses, PacketInfo
from netbootd.logs import RateLimiter
from tests.dhcp.conftest import FakeCore
from tests.fuzz.conftest import corpus


class OneInterface(InterfaceAddresses):
    """Our own InterfaceAddresses with a fixed table instead of ioctls."""

    def lookup(self, ifindex):
        return ("eth0", "192.0.2.1")


class Discard:
    """Where answers go: nowhere (there are none here; a real port-67 socket would broadcast)."""

    def write(self, data, addr):
        pass

    def getHost(self):
        return None


def test_unanswered_requests_are_logged_rate_limited():
    request = next(s for s in corpus("dhcp") if s[:1] == b"\x01")
    controller = DhcpController(FakeCore(answer=False))
    controller.answer_lines = RateLimiter(burst=10, period=1.0, clock=lambda: 0.0)  # time stands still
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    proto = DhcpProtocol(controller, proxy=False, addresses=OneInterface())
    proto.makeConnection(Discard())
    try:
        for n in range(2000):
            data = request[:28] + n.to_bytes(6, "big") + request[34:]  # 2000 different MACs
            proto.packetReceived(data, ("0.0.0.0", 68), PacketInfo(3, "255.255.255.255", "192.0.2.1"), False)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if str(e.get("log_format", "")).startswith("not answered")]
    assert len(lines) == 10  # the burst, then nothing until the next period
    assert controller.answer_lines.suppressed["not-answered"] == 1990
