"""Per-machine boot timeline: what netbootd saw of each machine's boot, in order, bounded.

Edges report stages (DHCP answered, TFTP file sent, script fetched, kernel/initrd/image fetched,
beacon, Ignition fetched); this keeps the last few per machine in memory, for `GET /machines` and
`netbootd status`.

Attribution: an event goes to the MAC its request carries (the DHCP packet; the mac= of script,
beacon and Ignition URLs; a per-machine TFTP/HTTP path, see `netbootd.core.ident`). Otherwise to
the machine that claimed the request's address: DHCP reveals addresses (option 50, ciaddr, the
4011 source) and so does a request carrying a MAC (script, beacon, Ignition). A claim is not
trusted when it is stale (made longer than ATTEMPT_IDLE before the request began), ambiguous
(another machine claimed the same address within ATTEMPT_IDLE and still does), or its machine
has since claimed another address. Such events, and events from addresses nobody claimed, go
to a bounded "unattributed" list with the reason, never to a machine.

Downloads: an HTTP download's event carries what it was when the core knows (`role`: kernel,
initrd, efi, squashfs; `file`: a file its command line names with file("...")), and a request
for a file that is not there is an `http` event with `status=404` and an `error`.

Stage: a machine's `stage` says how far its current boot got, in STAGE_RANK order. Requests the
machine makes right now and that name it (DHCP, script, beacon, Ignition with a MAC) set the
stage as they say, backwards too: DHCP after a download means it started over, a second script
fetch means iPXE went back to its script (a menu, a chain, a retry) - worth seeing while it
loops. Everything else only moves the stage forward (or keeps it): events found by address may
be someone else's, and TFTP/HTTP transfers are reported when they END, seconds to minutes after
the machine moved on (a final ACK lost, a timeout), so a late TFTP report after the beacon is
filed in the machine's events without turning its stage back into "tftp". A transfer that began
before the machine last went back (a restart) belongs to the earlier run and leaves the stage.
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
MAX_UNATTRIBUTED = 256

# The order of a boot: firmware DHCP, its TFTP (NBP, shim, GRUB and its files), iPXE's script,
# the script's downloads (kernel, initrds, image layers, EFI binaries), the script's beacon just
# before it boots the kernel, and the booted initramfs fetching its Ignition (hence after it).
STAGE_RANK = {"dhcp": 0, "tftp": 1, "script": 2, "http": 3, "beacon": 4, "ignition": 5, "lifecycle": 6}
_DOWNLOAD_RANK = STAGE_RANK["http"]  # a stage an edge adds later ranks with the downloads
# reported when the transfer ends, with its duration in `seconds`
_REPORTED_AT_END = frozenset({"tftp", "http"})


def fetched(event: dict[str, Any]) -> str:
    """What an HTTP download was, as its event names it: its role in the machine's plan (kernel,
    initrd, efi, squashfs) or the base name of the file its command line names ("preseed.cfg");
    "" when the core could not say (display code then falls back to the download's position)."""
    if event.get("role"):
        return str(event["role"])
    if event.get("stage") == "http" and event.get("file"):
        return str(event["file"]).rstrip("/").rsplit("/", 1)[-1]
    return ""


def missing(event: dict[str, Any]) -> bool:
    """A request for a file that is not there (404 on /files or /boot)."""
    return event.get("stage") == "http" and event.get("status") == 404


class _Machine:
    __slots__ = ("attempt_start", "events", "ip", "ip_at", "last", "mac", "rank", "since", "stage")

    def __init__(self, mac: str, max_events: int) -> None:
        self.mac = mac
        self.ip = ""
        self.ip_at = 0.0  # when it claimed `ip`
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.attempt_start: float | None = None  # first DHCP answer of this attempt (boot_duration)
        self.last = 0.0
        self.stage = ""
        self.rank = 0
        self.since = 0.0  # when the stage last went back (a restart): older transfers don't move it


class _Claim:
    """Who claimed an address last, and the machine that claimed it before (if recently)."""

    __slots__ = ("at", "mac", "rival", "rival_at")

    def __init__(self, mac: str, at: float) -> None:
        self.mac = mac
        self.at = at
        self.rival: str | None = None
        self.rival_at = 0.0


class Timeline:
    def __init__(self, max_machines: int = 4096, max_events: int = 64, clock: Callable[[], float] = time.time) -> None:
        self.max_machines = max_machines
        self.max_events = max_events
        self.clock = clock
        self._machines: OrderedDict[str, _Machine] = OrderedDict()
        self._by_ip: OrderedDict[str, _Claim] = OrderedDict()
        self._unattributed: deque[dict[str, Any]] = deque(maxlen=MAX_UNATTRIBUTED)

    # ------------------------------------------------------------------ addresses

    def learn(self, mac: str, ip: str) -> None:
        """Remember that `mac` has `ip` (DHCP, or a request carrying its MAC), so later TFTP/HTTP
        requests from that address find their machine."""
        if ip and ip != "0.0.0.0":
            self._learn(self._get(mac), ip, self.clock())

    def _learn(self, m: _Machine, ip: str, now: float) -> None:
        claim = self._by_ip.get(ip)
        if claim is None:
            self._by_ip[ip] = _Claim(m.mac, now)
            while len(self._by_ip) > self.max_machines * 2:
                self._by_ip.popitem(last=False)
        else:
            if claim.mac != m.mac:
                # another machine claims this address: both are suspects while both claim it
                if now - claim.at <= ATTEMPT_IDLE:
                    claim.rival, claim.rival_at = claim.mac, claim.at
                else:
                    claim.rival = None
                claim.mac = m.mac
            claim.at = now
            self._by_ip.move_to_end(ip)
        m.ip = ip
        m.ip_at = now

    def _owner(self, ip: str, began: float, now: float) -> tuple[str | None, str]:
        """The machine a request from `ip` (begun at `began`) belongs to, or None and why not."""
        if not ip:
            return None, "no client address"
        claim = self._by_ip.get(ip)
        owner = self._machines.get(claim.mac) if claim is not None else None
        if claim is None or owner is None:
            return None, "no machine claimed this address (in DHCP or a request naming its MAC)"
        if began - claim.at > ATTEMPT_IDLE:
            return None, f"stale: {claim.mac} claimed it {began - claim.at:.0f} s before"
        if owner.ip != ip and owner.ip_at <= began:
            return None, f"{claim.mac} claimed it, then moved to {owner.ip}"
        rival = claim.rival
        if rival is not None and now - claim.rival_at <= ATTEMPT_IDLE:
            other = self._machines.get(rival)
            if other is not None and other.ip == ip:
                return None, f"ambiguous: claimed by both {rival} and {claim.mac}"
        return claim.mac, ""

    def mac_for(self, ip: str) -> str | None:
        """The machine at `ip` now, None if unknown or not reliably known."""
        now = self.clock()
        return self._owner(ip, now, now)[0]

    # ------------------------------------------------------------------ recording

    def record(self, stage: str, mac: str | None = None, ip: str = "", **detail: Any) -> str | None:
        """Add an event; returns the MAC it was filed under (None: unattributed).

        `mac`: only a MAC the request itself carries (URL, file path); otherwise the address
        decides. TFTP/HTTP transfers pass their duration as `seconds`."""
        now = self.clock()
        late = stage in _REPORTED_AT_END
        seconds = detail.get("seconds") if late else None
        began = now - seconds if seconds else now
        named = mac is not None
        if mac is None:
            mac, why = self._owner(ip, began, now)
            if mac is None:
                self._unattributed.append(self._event(now, stage, ip, detail, why=why))
                return None
        m = self._get(mac)
        if named and ip and not late:
            self._learn(m, ip, now)  # a live request naming its machine shows the machine's address
        event = self._event(now, stage, ip, detail)
        label = stage
        if stage == "lifecycle":
            label = f"lifecycle:{detail.get('state', '')}"  # provisioned, failed, provisioning (reprovisioned)
        if stage == "beacon":
            label = f"beacon:{detail.get('beacon', '')}"
            if detail.get("beacon") == "loaded" and m.attempt_start is not None:
                elapsed = now - m.attempt_start
                event["since_dhcp"] = round(elapsed, 3)
                boot_duration.observe(elapsed)
                m.attempt_start = None  # the next DHCP answer starts a new attempt
        rank = STAGE_RANK.get(stage, _DOWNLOAD_RANK)
        if not m.stage or now - m.last > ATTEMPT_IDLE:
            m.since = now  # its first event, or the first in a long while: a new boot
            m.stage, m.rank = label, rank
        elif named and not late:
            if rank < m.rank:
                m.since = now
            m.stage, m.rank = label, rank
        elif rank >= m.rank and began >= m.since:
            m.stage, m.rank = label, rank
        m.events.append(event)
        m.last = now
        return mac

    @staticmethod
    def _event(now: float, stage: str, ip: str, detail: dict[str, Any], **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"time": round(now, 3), "stage": stage}
        if ip:
            event["ip"] = ip
        event.update({k: v for k, v in detail.items() if v is not None and v != ""})
        event.update(extra)
        return event

    def record_dhcp(self, mac: str, ip: str, event: dict[str, Any]) -> None:
        """`record("dhcp", ...)` for the DHCP hot path: learns the address and adds the event
        with no keyword-argument shuffling (thousands of calls a second in a boot storm).
        DHCP always carries the MAC and is the machine (re)starting: it sets the stage."""
        now = self.clock()
        m = self._get(mac)
        if ip and ip != "0.0.0.0":
            self._learn(m, ip, now)
        if m.attempt_start is None or now - m.last > ATTEMPT_IDLE:
            m.attempt_start = now
        event["time"] = round(now, 3)
        event["stage"] = "dhcp"
        if ip:
            event["ip"] = ip
        m.events.append(event)
        m.last = now
        if m.rank:
            m.since = now
            m.rank = 0
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

    def unattributed(self) -> list[dict[str, Any]]:
        """Events no machine could be found for (oldest first), each with `why`."""
        return list(self._unattributed)

    def machine(self, mac_text: str) -> dict[str, Any] | None:
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            return None
        m = self._machines.get(mac)
        if m is None:
            return None
        return {"mac": m.mac, "ip": m.ip, "stage": m.stage, "last_seen": round(m.last, 3), "events": list(m.events)}
