"""The operator's dashboard: the fleet's boots at a glance, on a management listener.

It reads what the daemon already knows — the core's boot timeline and catalog, the lifecycle
states, the health problems, the image cache — and never the boot network. Its only actions are the
lifecycle's (lifecycle_act: reprovision, mark done or failed, stored through the core). It listens
on ui.listen (127.0.0.1:9180 by default), a Twisted Site of its own, never on the boot network's
HTTP port.
The service wires it (netbootd.service); nothing here decides a boot.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

from netbootd.config.machines import Machine
from netbootd.config.preflight import ui_credentials
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore
from netbootd.core.lifecycle import StateStore
from netbootd.logs import get_logger
from netbootd.model import normalize_mac
from netbootd.ui import details
from netbootd.ui.auth import Authenticator, Credentials
from netbootd.ui.fleet import Fleet, WatchedTimeline, machine_row
from netbootd.ui.live import Hub


def _transition_doc(t: Any) -> dict[str, Any]:
    if isinstance(t, dict):
        return t
    doc = {k: getattr(t, k, None) for k in ("state", "previous", "since", "by", "source", "note")}
    return {k: (str(v) if k in ("state", "previous") and v is not None else v) for k, v in doc.items()}


log = get_logger("netbootd.ui")

__all__ = ["Dashboard", "WatchedTimeline"]


class Dashboard:
    def __init__(self, core: BootCore, timeline: WatchedTimeline, settings: Settings, reactor, *,
                 health: Callable[[], dict[str, Any]],
                 problems: Callable[[], object], images: Callable[[], list[dict[str, Any]]],
                 cache: Callable[[], dict[str, Any] | None], credentials: Credentials | None,
                 clock: Callable[[], float] = time.time,
                 settings_doc: Callable[[], dict[str, Any]] | None = None,
                 downloads: Callable[[str], list[dict[str, Any]]] = lambda mac: []) -> None:
        self.core = core  # read-only here: the catalog, and image layers for explanations
        self.timeline = timeline  # the one the edges record into (watched: it says which machines changed)
        self.settings = settings
        self.reactor = reactor
        self.health = health
        self._settings_doc = settings_doc  # the daemon's running settings (/api/settings)
        self.downloads = downloads  # a machine's downloads still running on the boot network's HTTP port
        self.images = images
        self.cache = cache
        self.clock = clock
        self.auth = Authenticator(credentials)
        self.fleet = Fleet(timeline, lambda: self.core.catalog, clock, self.lifecycle_of)
        self.hub = Hub(self.fleet, health, problems, reactor, clock)

    def site(self):
        from netbootd.ui.app import make_ui_site

        return make_ui_site(self, self.auth)

    def settings_doc(self) -> dict[str, Any]:
        if self._settings_doc is not None:
            return self._settings_doc()
        from netbootd.config.live import LIVE, flatten

        return {"source": str(self.settings.source or ""), "settings": flatten(self.settings), "needs_restart": {},
                "live": sorted(LIVE)}

    def reload_auth(self) -> str:
        """Read ui.auth_file again (SIGHUP); raises SecretFileError and keeps the old credentials."""
        creds = ui_credentials(self.settings)
        self.auth.replace(creds)
        return creds.describe() if creds is not None else "none"

    # -------------------------------------------------------------- documents

    def fleet_doc(self) -> dict[str, Any]:
        """Every row now (what a snapshot carries), for scripts and the first paint."""
        rows = self.fleet.rows if self.hub.streams else self.fleet._all_rows()
        return {"now": self.clock(), "machines": list(rows.values()), "health": self.hub.health_summary()}

    def machine_doc(self, mac: str):
        """A Deferred: one machine in full, None if netbootd neither has a file for it nor saw it.
        The timeline is read here, on the reactor (edges write it there); the rest, which renders
        templates and may read binaries (Secure Boot signatures), runs in the thread pool."""
        from twisted.internet import defer, threads

        catalog = self.core.catalog
        seen = self.timeline.machine(mac)
        row = machine_row(mac, seen, catalog, self.lifecycle_of)
        if row is None:
            return defer.succeed(None)
        states = details.states_now(self.core.states, mac)  # read here, on the reactor
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._machine_doc,
                                         mac, catalog, seen, row, states)

    def _machine_doc(self, mac: str, catalog, seen: dict[str, Any] | None, row: dict[str, Any],
                     states: StateStore) -> dict[str, Any]:
        machine = catalog.machines.get(mac)
        server = self.settings.advertise or "192.0.2.1"
        profile_path = (self.settings.machines_dir / "profiles" / f"{machine.profile}.toml"
                        if machine is not None and machine.profile else None)
        own = machine.source if machine is not None else None
        if own is None and row.get("name"):
            own = self.settings.machines_dir / f"{row['name']}.toml"  # a held machine's broken file
        return {
            "now": self.clock(),
            "row": row,
            "events": seen["events"] if seen else [],
            "config": {"file": details.shown_file(own), "profile": details.shown_file(profile_path),
                       "vars": dict(machine.vars) if machine is not None else {},
                       "default": machine is None and catalog.default is not None and row.get("unknown", False)},
            "errors": details.machine_errors(catalog, mac, self.settings),
            "explain": details.explanations(self.settings, catalog, self.core.image_layers, mac, server,
                                            details.arch_order(row), states),
            "server": server,
            # without `advertise` each machine is sent the address its request reached: unknown here
            "server_note": "" if self.settings.advertise else (
                f"URLs show {server} (a documentation address): advertise is not set, so each machine is "
                "sent the address of this host its request reached"),
        }

    # -------------------------------------------------------------- lifecycle

    @property
    def on_loopback(self) -> bool:
        from netbootd.config.settings import parse_listen

        host, _ = parse_listen(self.settings.ui.listen)
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def lifecycle_of(self, machine: Machine, mac: str) -> dict[str, Any]:
        """A fleet row's lifecycle columns (netbootd.ui.fleet.LifecycleOf): nothing for a machine
        that does not provision once; its state, and since when and by whom once the store has a
        record. Read on the reactor, from the store's in-memory view (no database round trip)."""
        state = self.core.state(machine, mac)
        if not state:
            return {}
        out: dict[str, Any] = {"lifecycle": state}
        record = self.core.states.view().get(mac) if state != "unknown" else None
        if record is not None:
            out.update(lifecycle_since=record.since, lifecycle_by=record.by)
        return out

    def lifecycle_doc(self) -> dict[str, Any]:
        status = self.core.states.status()
        return {"now": self.clock(), "machines": self.core.lifecycle_rows(),
                "store": {"ok": status.ok, "loaded": status.loaded, "reason": status.reason}}

    def lifecycle_machine(self, mac: str):
        """One machine's state and its transitions, newest first."""
        row = next((r for r in self.core.lifecycle_rows() if r["mac"] == mac), None)
        d = self.core.states.history(mac, 100)
        d.addCallback(lambda history: {"mac": mac, "row": row,
                                       "history": [_transition_doc(t) for t in history]})
        return d

    def lifecycle_act(self, doc: dict[str, Any], who: str, source: str):
        """An operator's action on the machines `doc` selects; a Deferred of what changed."""
        from twisted.internet import defer

        targets = {"reprovision": "provisioning", "done": "provisioned", "failed": "failed"}
        action = doc.get("action")
        if action not in targets:
            raise ValueError('"action" is one of "reprovision", "done", "failed"')
        rows = self.core.lifecycle_rows()
        if "macs" in doc:
            if not isinstance(doc["macs"], list) or not doc["macs"]:
                raise ValueError('"macs" is a list of MAC addresses')
            macs = [normalize_mac(str(m)) for m in doc["macs"]]
        elif "profile" in doc:
            macs = [str(r["mac"]) for r in rows if r["profile"] == doc["profile"]]
        elif "state" in doc:
            macs = [str(r["mac"]) for r in rows if r["state"] == doc["state"]]
        else:
            raise ValueError('select machines with "macs", "profile" or "state"')
        by = f"operator {who}"
        log.info("operator action", action=action, machines=",".join(macs) or "none", by=who, client=source)
        calls = [self.core.set_state(mac, targets[action], by, source) for mac in macs]

        def done(results):
            out: dict[str, Any] = {"action": action, "changed": [], "errors": []}
            for mac, (ok, value) in zip(macs, results, strict=True):
                if ok:
                    out["changed"].append({"mac": mac, "state": value.state})
                else:
                    out["errors"].append({"mac": mac, "error": str(value.value)})
                    log.error("operator action not stored", action=action, mac=mac, by=who, error=str(value.value))
            return out

        return defer.DeferredList(calls, consumeErrors=True).addCallback(done)

    def health_doc(self) -> dict[str, Any]:
        catalog = self.core.catalog
        health = self.health()
        return {
            "now": self.clock(),
            "status": health.get("status"),
            "summary": health.get("summary"),
            "problems": health.get("problems", []),
            "errors": [details.error_doc(e) for e in catalog.errors],
            "held": [{"name": h.name, "mac": h.mac, "reason": h.reason} for h in catalog.held.values()],
            "stale": [{"name": name, "cause": str(cause)} for name, cause in catalog.stale.items()],
            "images": self.images(),
            "cache": self.cache(),
            "unattributed": len(self.timeline.unattributed()),
            "last_reload": health.get("last_reload"),
            "uptime": health.get("uptime"),
        }
