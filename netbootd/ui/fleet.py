"""The fleet as the dashboard shows it: one row per machine, configured or seen, kept current cheaply.

A boot storm records thousands of timeline events a second; the dashboard must not cost a boot
any of that. So the timeline only marks which machines changed (WatchedTimeline: one set.add per
event, and nothing at all while no dashboard is connected), and `Fleet.changes()`, called a few
times a second by the live stream, rebuilds the rows of those machines only and returns the ones
that really differ. The whole fleet is turned into rows once, when the first dashboard connects,
and then again only after a configuration reload (a catalog swap); every RECONCILE seconds a
pass over the MACs alone notices machines the bounded timeline forgot.

Times in rows are the server's unix times; the page computes ages against the `now` each message
carries, so no row changes merely because time passes.

Provision once: a `[lifecycle] once = true` machine's row carries its state (`lifecycle`: provisioning,
provisioned, failed or unknown; `lifecycle_since` and `lifecycle_by` once it has a record), read through
a function the dashboard passes (LifecycleOf), never from the core here. A transition is recorded in
the timeline (stage "lifecycle"), so its row is rebuilt as any other change is; the boot columns
(stage, state, elapsed) describe boots only and leave lifecycle events out. A state changed with no
event here (another netbootd sharing the store, the store's first read) is noticed by the RECONCILE pass.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from netbootd.config.machines import Catalog, Machine
from netbootd.core.timeline import ATTEMPT_IDLE, STAGE_RANK, Timeline

RECONCILE = 10.0  # seconds between full passes that catch machines the timeline forgot
# A new boot run starts with a DHCP answer after one of these (or after ATTEMPT_IDLE of silence):
# iPXE's own DHCP after the TFTP download belongs to the same run.
_RUN_ENDS = frozenset({"beacon", "ignition", "held"})
# A DHCP REQUEST on 67 is the site server's to answer: netbootd's silence is the normal path, not an
# error (the reason text of netbootd.dhcp.answer.SITE_REQUEST; tests/ui check that they agree).
SITE_REQUEST_PREFIX = "REQUEST for the site's DHCP server"
LIFECYCLE = "lifecycle"  # the timeline stage of a lifecycle transition: not a boot stage
LIFECYCLE_KEYS = ("lifecycle", "lifecycle_since", "lifecycle_by")

# What a machine's lifecycle puts in its row: {} when it does not provision once, else
# {"lifecycle": state} and, when the store has a record, its "lifecycle_since" and "lifecycle_by".
LifecycleOf = Callable[[Machine, str], dict[str, Any]]


class WatchedTimeline(Timeline):
    """The core's timeline, noting which machines changed while a dashboard watches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watching = False
        self.dirty: set[str] = set()

    def record(self, stage: str, mac: str | None = None, ip: str = "", **detail: Any) -> str | None:
        filed = super().record(stage, mac, ip, **detail)
        if self.watching and filed is not None:
            self.dirty.add(filed)
        return filed

    def record_dhcp(self, mac: str, ip: str, event: dict[str, Any]) -> None:
        super().record_dhcp(mac, ip, event)
        if self.watching:
            self.dirty.add(mac)

    def macs(self) -> list[str]:
        """Every MAC the timeline holds (no per-machine summary built)."""
        return list(self._machines)

    def seen(self, mac: str) -> dict[str, Any] | None:
        """What machine_row needs of one machine, without copying its events (the reactor reads
        it; `machine()` copies, for other threads)."""
        m = self._machines.get(mac)
        if m is None:
            return None
        return {"ip": m.ip, "stage": m.stage, "last_seen": round(m.last, 3), "events": m.events}

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty


def _error_of(event: dict[str, Any]) -> str:
    """What went wrong in this event, "" if nothing did."""
    if event.get("error"):
        if event["stage"] == "http" and event.get("path"):  # a file that was not there: which one
            return f"http: {event['error']}: {event['path']}"
        return f"{event['stage']}: {event['error']}"
    if event.get("answered") is False and not str(event.get("reason", "")).startswith(SITE_REQUEST_PREFIX):
        return f"not answered: {event.get('reason', '')}"
    if event["stage"] == "beacon" and event.get("beacon") not in (None, "loaded"):
        return f"beacon: {event.get('beacon')}"
    return ""


def _run_start(events: list[dict[str, Any]]) -> int:
    """Index of the first event of the machine's current boot run."""
    start = 0
    for i in range(1, len(events)):
        prev, ev = events[i - 1], events[i]
        if ev["stage"] == "dhcp" and (prev["stage"] in _RUN_ENDS or ev["time"] - prev["time"] > ATTEMPT_IDLE):
            start = i
    return start


def _label(event: dict[str, Any]) -> str:
    return f"beacon:{event.get('beacon', '')}" if event["stage"] == "beacon" else event["stage"]


def _boot_stage(run: Sequence[dict[str, Any]]) -> str:
    """How far this boot run got, for a machine whose timeline stage is a lifecycle transition:
    the furthest stage its boot events reached (the latest of equals)."""
    best, rank = "", -1
    for event in run:
        r = STAGE_RANK.get(event["stage"], STAGE_RANK["http"])
        if r >= rank:
            best, rank = _label(event), r
    return best


def lifecycle_fields(mac: str, catalog: Catalog, lifecycle: LifecycleOf | None) -> dict[str, Any]:
    """The row's lifecycle columns: the machine's own file, or default.toml for an unknown MAC."""
    if lifecycle is None or mac in catalog.held:
        return {}
    machine = catalog.machines.get(mac) or catalog.default
    return lifecycle(machine, mac) if machine is not None else {}


def machine_row(mac: str, seen: dict[str, Any] | None, catalog: Catalog,
                lifecycle: LifecycleOf | None = None) -> dict[str, Any] | None:
    """The fleet row of one machine, None when netbootd neither has a file for it nor saw it."""
    machine: Machine | None = catalog.machines.get(mac)
    held = catalog.held.get(mac)
    if machine is None and held is None and seen is None:
        return None
    row: dict[str, Any] = {"mac": mac}
    if machine is not None:
        row.update(name=machine.name, kind=machine.boot.kind.value, profile=machine.profile or "",
                   hostname=str(machine.vars.get("hostname", "")))
        if machine.name in catalog.stale:
            row["stale"] = str(catalog.stale[machine.name])
    elif held is not None:
        row.update(name=held.name, kind="", profile="", hostname="")
    else:
        default = catalog.default
        row.update(name="", kind=default.boot.kind.value if default is not None else "", profile="", hostname="",
                   unknown=True)
    if held is not None:
        row["held"] = str(held.error)
    row.update(lifecycle_fields(mac, catalog, lifecycle))
    events = seen["events"] if seen is not None else ()  # a list, or the timeline's own deque (no copy)
    stage = seen["stage"] if seen is not None else ""
    last_seen = seen["last_seen"] if seen is not None else 0.0
    count = len(events)
    if stage.startswith(LIFECYCLE) or any(e["stage"] == LIFECYCLE for e in events):
        # a transition is no boot stage: the boot columns are the boot events' alone
        events = [e for e in events if e["stage"] != LIFECYCLE]
        if events:
            last_seen = events[-1]["time"]
    if seen is None or not events:
        row["state"] = "held" if held is not None else "idle"
        return row
    run = list(itertools.islice(events, _run_start(events), None))
    if stage.startswith(LIFECYCLE):
        stage = _boot_stage(run)
    row.update(ip=seen["ip"], stage=stage, start=run[0]["time"], last=last_seen, events=count)
    # the machine's firmware: what started this run (iPXE asks DHCP again later: it is not the firmware)
    asked = [e for e in run if e["stage"] == "dhcp" and "firmware" in e] or [
        e for e in events if e["stage"] == "dhcp" and "firmware" in e][-1:]
    firmware = next((e for e in asked if e["firmware"] != "ipxe"), asked[0] if asked else None)
    if firmware is not None:
        row["firmware"], row["arch"] = firmware["firmware"], firmware.get("arch", "")
    error = ""
    for event in reversed(run):
        error = _error_of(event)
        if error:
            break
    last = events[-1]
    if held is not None:
        state = "held"
    elif _error_of(last):
        state = "unanswered" if last.get("answered") is False else "failed"
    elif stage in ("beacon:loaded", "ignition"):
        state = "done"
    else:
        state = "booting"
    if error:
        row["error"] = error
    row["state"] = state
    if state == "done":
        row["took"] = round(last["time"] - run[0]["time"], 3)
    return row


class Fleet:
    """The rows the dashboard shows, maintained from the dirty set while a dashboard watches."""

    def __init__(self, timeline: WatchedTimeline, catalog: Callable[[], Catalog], clock: Callable[[], float],
                 lifecycle: LifecycleOf | None = None) -> None:
        self.timeline = timeline
        self.catalog = catalog
        self.clock = clock
        self.lifecycle = lifecycle
        self.rows: dict[str, dict[str, Any]] = {}
        self._catalog_seen: Catalog | None = None
        self._reconciled = 0.0

    def start(self) -> None:
        """The first dashboard connected: every row, from now on kept current."""
        self.timeline.watching = True
        self.timeline.take_dirty()
        self.rows = self._all_rows()
        self._catalog_seen = self.catalog()
        self._reconciled = self.clock()

    def stop(self) -> None:
        """The last dashboard left: stop noting changes (start() rebuilds everything)."""
        self.timeline.watching = False
        self.timeline.take_dirty()
        self.rows = {}

    def _all_rows(self) -> dict[str, dict[str, Any]]:
        catalog = self.catalog()
        macs = self.timeline.macs()
        known = set(macs)
        macs += [mac for mac in catalog.machines if mac not in known]
        macs += [mac for mac in catalog.held if mac != "default" and mac not in known and mac not in catalog.machines]
        rows = {}
        for mac in macs:
            row = machine_row(mac, self.timeline.seen(mac), catalog, self.lifecycle)
            if row is not None:
                rows[mac] = row
        return rows

    def _lifecycle_moved(self, catalog: Catalog) -> set[str]:
        """Machines whose lifecycle state differs from their row's: changed with no timeline event
        (another netbootd sharing the state store, or the store read for the first time)."""
        if self.lifecycle is None:
            return set()
        moved = set()
        for mac, row in self.rows.items():
            # only once machines: which machines provision once changes with the files (a reload: every row rebuilt)
            if "lifecycle" in row and lifecycle_fields(mac, catalog, self.lifecycle) != {
                    k: row[k] for k in LIFECYCLE_KEYS if k in row}:
                moved.add(mac)
        return moved

    def changes(self, budget: float = 0.02) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows that changed since the last call, and MACs no longer shown. At most `budget`
        seconds of row building: in a storm the rest stays dirty for the next call (the page lags
        a little, the reactor that answers boots does not)."""
        catalog = self.catalog()
        changed: list[dict[str, Any]] = []
        removed: list[str] = []
        if catalog is not self._catalog_seen:
            # a reload: any machine's file may have changed; rare, so every row is rebuilt
            self._catalog_seen = catalog
            self.timeline.take_dirty()
            fresh = self._all_rows()
            removed = [mac for mac in self.rows if mac not in fresh]
            changed = [row for mac, row in fresh.items() if self.rows.get(mac) != row]
            self.rows = fresh
            return changed, removed
        dirty = self.timeline.dirty
        if self.clock() - self._reconciled >= RECONCILE:
            # machines the bounded timeline forgot (it keeps the 4096 seen last) had no event to say so
            self._reconciled = self.clock()
            known = set(self.timeline.macs())
            dirty |= {mac for mac, row in self.rows.items() if "last" in row and mac not in known}
            dirty |= self._lifecycle_moved(catalog)
        deadline = time.perf_counter() + budget
        while dirty:
            mac = dirty.pop()
            row = machine_row(mac, self.timeline.seen(mac), catalog, self.lifecycle)
            if row is None:
                if self.rows.pop(mac, None) is not None:
                    removed.append(mac)
            elif self.rows.get(mac) != row:
                self.rows[mac] = row
                changed.append(row)
            if len(changed) % 32 == 0 and time.perf_counter() > deadline:
                break
        return changed, removed
