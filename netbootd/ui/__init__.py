"""The operator's dashboard: the fleet's boots at a glance, on a management listener.

Read-only. It reads what the daemon already knows — the core's boot timeline and catalog, the
health problems, the image cache — and never the boot network: it listens on ui.listen
(127.0.0.1:9180 by default), a Twisted Site of its own, never on the boot network's HTTP port.
The service wires it (netbootd.service); nothing here decides a boot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from netbootd.config.preflight import ui_credentials
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore
from netbootd.ui import details
from netbootd.ui.auth import Authenticator, Credentials
from netbootd.ui.fleet import Fleet, WatchedTimeline, machine_row
from netbootd.ui.live import Hub

__all__ = ["Dashboard", "WatchedTimeline"]


class Dashboard:
    def __init__(self, core: BootCore, timeline: WatchedTimeline, settings: Settings, reactor, *,
                 health: Callable[[], dict[str, Any]],
                 problems: Callable[[], object], images: Callable[[], list[dict[str, Any]]],
                 cache: Callable[[], dict[str, Any] | None], credentials: Credentials | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.core = core  # read-only here: the catalog, and image layers for explanations
        self.timeline = timeline  # the one the edges record into (watched: it says which machines changed)
        self.settings = settings
        self.reactor = reactor
        self.health = health
        self.images = images
        self.cache = cache
        self.clock = clock
        self.auth = Authenticator(credentials)
        self.fleet = Fleet(timeline, lambda: self.core.catalog, clock)
        self.hub = Hub(self.fleet, health, problems, reactor, clock)

    def site(self):
        from netbootd.ui.app import make_ui_site

        return make_ui_site(self, self.auth)

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
        row = machine_row(mac, seen, catalog)
        if row is None:
            return defer.succeed(None)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._machine_doc,
                                         mac, catalog, seen, row)

    def _machine_doc(self, mac: str, catalog, seen: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
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
                                            details.arch_order(row)),
            "server": server,
            # without `advertise` each machine is sent the address its request reached: unknown here
            "server_note": "" if self.settings.advertise else (
                f"URLs show {server} (a documentation address): advertise is not set, so each machine is "
                "sent the address of this host its request reached"),
        }

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
