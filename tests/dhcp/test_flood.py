"""Known machines first: DISCOVERs from MACs without a machine file are admitted within a budget,
decided from chaddr before decoding; a configured machine always passes (netbootd.dhcp.flood)."""

from __future__ import annotations

from netbootd.dhcp.flood import FloodGuard


def discover(mac: str) -> bytes:
    head = bytearray(300)
    head[0:4] = bytes([1, 1, 6, 0])
    head[28:34] = bytes.fromhex(mac.replace(":", ""))
    return bytes(head)


def test_unknown_macs_within_a_budget_known_ones_always():
    now = [0.0]
    guard = FloodGuard(lambda mac: mac == "52:54:00:00:00:01", rate=100, burst=10, clock=lambda: now[0])
    flood = [guard.admit(discover(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}")) for i in range(1000)]
    assert sum(flood) == 10  # the burst, then nothing within the same instant
    assert all(guard.admit(discover("52:54:00:00:00:01")) for _ in range(1000))  # a configured machine: always
    now[0] += 0.5  # half a second refills 50
    assert sum(guard.admit(discover("02:00:00:00:ff:ff")) for _ in range(100)) == 10  # capped at the burst
    assert FloodGuard(lambda mac: False, rate=0, burst=1).admit(discover("02:00:00:00:00:01"))  # 0: no limit
    assert not FloodGuard(lambda mac: False, rate=1, burst=0).admit(b"short")  # a runt: unknown, no tokens


def test_a_read_that_is_behind_during_a_flood_answers_configured_machines_only(capture_log):
    """netbootd.dhcp.protocol.DhcpProtocol.batchReceived: configured machines first; while behind
    (the socket had more than one read takes) during a flood (the unknown-MAC budget ran out within
    the last second) no unknown MAC is answered at all; behind in a storm within the budget, all are."""
    from netbootd.dhcp.flood import FLOOD_MEMORY
    from netbootd.dhcp.protocol import DhcpProtocol

    handled: list[str] = []

    class Recording(DhcpProtocol):
        def packetReceived(self, datagram, addr, info, truncated):
            handled.append(":".join(f"{b:02x}" for b in datagram[28:34]))

    now = [0.0]
    guard = FloodGuard(lambda mac: mac == "52:54:00:00:00:01", rate=1000, burst=1000, clock=lambda: now[0])
    proto = Recording(None, proxy=False, flood=guard)
    batch = [(discover(f"02:00:00:00:00:{i:02x}"), ("0.0.0.0", 68), None, False) for i in range(5)]
    batch.insert(3, (discover("52:54:00:00:00:01"), ("0.0.0.0", 68), None, False))
    proto.batchReceived(batch, behind=False)
    assert handled[0] == "52:54:00:00:00:01" and len(handled) == 6  # first, then the others
    for _ in range(5):  # a storm of new machines: behind, within the budget: everyone, known first
        handled.clear()
        proto.batchReceived(batch, behind=True)
        assert handled[0] == "52:54:00:00:00:01" and len(handled) == 6
    while guard.admit(discover("02:00:00:00:ff:ff")):  # a flood spends the budget
        pass
    proto.batchReceived(batch, behind=False)
    for reads in range(1, 6):  # a standing queue in a flood: shed only after several reads in a row were behind
        handled.clear()
        proto.batchReceived(batch, behind=True)
        assert handled[0] == "52:54:00:00:00:01" and len(handled) == (1 if reads >= 2 else 6)
    proto.batchReceived(batch, behind=False)  # caught up: everyone again
    handled.clear()
    proto.batchReceived(batch, behind=True)
    assert len(handled) == 6
    now[0] += 2 * FLOOD_MEMORY  # the flood is over (the budget refilled, nothing refused since)
    for _ in range(3):
        handled.clear()
        proto.batchReceived(batch, behind=True)
        assert len(handled) == 6


def test_flooding_is_half_the_burst_spent_or_a_refusal_within_a_second():
    from netbootd.dhcp.flood import FLOOD_MEMORY

    now = [0.0]
    guard = FloodGuard(lambda mac: False, rate=100, burst=100, clock=lambda: now[0])
    for i in range(50):
        assert guard.admit(discover(f"02:00:00:00:00:{i:02x}"))
    assert not guard.flooding()  # a rack powering on: half the burst left
    assert guard.admit(discover("02:00:00:00:01:00")) and guard.flooding()  # more than half spent at once
    now[0] += 0.3  # refilled 30: under half spent again
    assert not guard.flooding()
    while guard.admit(discover("02:00:00:00:02:00")):
        pass
    now[0] += 0.9  # refilled 90 (over half the burst), but refused 0.9 s ago
    assert guard.flooding()
    now[0] += FLOOD_MEMORY
    assert not guard.flooding()
