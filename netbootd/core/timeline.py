"""Per-machine boot timeline: what netbootd saw of each machine's boot, in order, bounded.

Edges report stages (DHCP answered, TFTP file sent, script fetched, kernel/initrd/image fetched,
beacon); this keeps the last few per machine in memory, for `GET /machines` and `netbootd status`.
TFTP and HTTP only see an IP address: the MAC is found from what DHCP saw (option 50, ciaddr,
the 4011 source address), which is why the DHCP edge reports addresses too.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

from netbootd.model import normalize_mac

boot_duration = Histogram(
    "netbootd_boot_duration_seconds",
    "Time from a machine's first DHCP answer to its boot beacon (kernel and initrds loaded)",
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800),
)

ATTEMPT_IDLE = 1800.0  # a DHCP answer this long after the last event starts a new boot attempt


class _Machine:
    __slots__ = ("attempt_start", "events", "ip", "last", "mac", "stage")

    def __init__(self, mac: str, max_events: int) -> None:
        self.mac = mac
        self.ip = ""
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.attempt_start: float | None = None
        self.last = 0.0
        self.stage = ""


class Timeline:
    def __init__(self, max_machines: int = 4096, max_events: int = 64, clock: Callable[[], float] = time.time) -> None:
        self.max_machines = max_machines
        self.max_events = max_events
        self.clock = clock
        self._machines: OrderedDict[str, _Machine] = OrderedDict()
        self._by_ip: OrderedDict[str, str] = OrderedDict()

    # ------------------------------------------------------------------ recording

    def learn(self, mac: str, ip: str) -> None:
        """Remember that `ip` is `mac` (from DHCP), so later TFTP/HTTP requests find their machine."""
        if not ip or ip == "0.0.0.0":
            return
        self._by_ip[ip] = mac
        self._by_ip.move_to_end(ip)
        while len(self._by_ip) > self.max_machines * 2:
            self._by_ip.popitem(last=False)
        self._get(mac).ip = ip

    def mac_for(self, ip: str) -> str | None:
        return self._by_ip.get(ip)

    def record(self, stage: str, mac: str | None = None, ip: str = "", **detail: Any) -> str | None:
        """Add an event; returns the MAC it was filed under (None if the machine is unknown)."""
        if mac is None and ip:
            mac = self._by_ip.get(ip)
        if mac is None:
            return None
        now = self.clock()
        m = self._get(mac)
        if stage == "dhcp" and (m.attempt_start is None or now - m.last > ATTEMPT_IDLE):
            m.attempt_start = now
        event = {"time": round(now, 3), "stage": stage}
        if ip:
            event["ip"] = ip
        event.update({k: v for k, v in detail.items() if v is not None and v != ""})
        if stage == "beacon" and detail.get("beacon") == "loaded" and m.attempt_start is not None:
            elapsed = now - m.attempt_start
            event["since_dhcp"] = round(elapsed, 3)
            boot_duration.observe(elapsed)
            m.attempt_start = None  # the next DHCP answer starts a new attempt
        m.events.append(event)
        m.last = now
        m.stage = stage if stage != "beacon" else f"beacon:{detail.get('beacon', '')}"
        return mac

    def record_dhcp(self, mac: str, ip: str, event: dict[str, Any]) -> None:
        """`record("dhcp", ...)` for the DHCP hot path: learns the address and adds the event
        with no keyword-argument shuffling (thousands of calls a second in a boot storm)."""
        now = self.clock()
        self.learn(mac, ip)
        m = self._get(mac)
        if m.attempt_start is None or now - m.last > ATTEMPT_IDLE:
            m.attempt_start = now
        event["time"] = round(now, 3)
        event["stage"] = "dhcp"
        if ip:
            event["ip"] = ip
        m.events.append(event)
        m.last = now
        m.stage = "dhcp"

    def _get(self, mac: str) -> _Machine:
        m = self._machines.get(mac)
        if m is None:
            m = self._machines[mac] = _Machine(mac, self.max_events)
            while len(self._machines) > self.max_machines:
                self._machines.popitem(last=False)  # forget the machine seen longest ago
        else:
            self._machines.move_to_end(mac)
        return m

    # ------------------------------------------------------------------ reading

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for m in reversed(self._machines.values()):
            first = m.events[0]["time"] if m.events else None
            out.append(
                {
                    "mac": m.mac,
                    "ip": m.ip,
                    "stage": m.stage,
                    "last_seen": round(m.last, 3),
                    "first_seen": first,
                    "events": len(m.events),
                }
            )
        return out

    def machine(self, mac_text: str) -> dict[str, Any] | None:
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            return None
        m = self._machines.get(mac)
        if m is None:
            return None
        return {"mac": m.mac, "ip": m.ip, "stage": m.stage, "last_seen": round(m.last, 3), "events": list(m.events)}
