"""What is wrong right now, for `/healthz`, `netbootd status` and the `netbootd_problems` gauge.

A problem names what is wrong and which machines it touches, so an operator can tell "one
typo in a machine file" from "every BIOS machine fails" at a glance:

    {"kind": "held", "what": "52-54-00-12-34-56.toml", "machines": ["52-54-00-12-34-56"],
     "message": "held: .../52-54-00-12-34-56.toml:3: boot.kernel: ..."}

Kinds: config_error (a file with errors; its machines serve their last good version or are held),
held (a machine that gets nothing until its file is fixed), image_unresolved (a configured OCI image
that cannot be resolved: registry unreachable, not allowed, no such tag, credentials), loader_missing
(a configured iPXE/loader binary that is not on disk: each loader module reports its own). Pure
functions of the catalog, the settings and the image watch; the service calls them on every reload
and resolution.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from prometheus_client import Gauge

from netbootd.config.machines import Catalog
from netbootd.imageref import ImageRef
from netbootd.logs import get_logger

log = get_logger("netbootd.images")

KINDS = ("config_error", "held", "image_unresolved", "loader_missing", "state_store")
problems_gauge = Gauge("netbootd_problems", "Problems /healthz reports, by kind", ["kind"])

# Image resolution failures: the first few are logged as they happen, then at most one line per image
# per this many seconds (an offline boot host would otherwise log the same failure forever).
IMAGE_LOG_FIRST = 3
IMAGE_LOG_EVERY = 600.0
IMAGE_RETRY_FIRST = 5.0
IMAGE_RETRY_MAX = 300.0


def problem(kind: str, what: str, machines: Iterable[str], message: str) -> dict[str, Any]:
    return {"kind": kind, "what": what, "machines": sorted(set(machines)), "message": message}


# ------------------------------------------------------------------------ configuration


def config_problems(catalog: Catalog) -> list[dict[str, Any]]:
    """Files with errors (and the machines each touches), and held machines."""
    by_file: dict[Path, list] = defaultdict(list)
    for err in catalog.errors:
        by_file[err.file].append(err)
    affected: dict[Path, set[str]] = defaultdict(set)
    for name, cause in catalog.stale.items():
        affected[cause.file].add(name)  # type: ignore[attr-defined]
    for held in catalog.held.values():
        affected[held.error.file].add(held.name)  # type: ignore[attr-defined]
    for machine in catalog.files.values():
        affected[machine.source].add(machine.name)
    out = []
    for file, errors in by_file.items():
        names = affected.get(file, set())
        if file.parent.name == "profiles":  # a profile: every machine built on it
            names = names | {m.name for m in catalog.files.values() if m.profile == file.stem}
        state = []
        stale = sorted(n for n in names if n in catalog.stale)
        holding = sorted(h.name for h in catalog.held.values() if h.name in names)
        if stale:
            state.append(f"serving the last good version of {', '.join(stale)}")
        if holding:
            state.append(f"holding {', '.join(holding)} (no answer until fixed)")
        suffix = f" — {'; '.join(state)}" if state else ""
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        out.append(problem("config_error", str(file), names, f"{first}{more}{suffix}"))
    for held in catalog.held.values():
        out.append(problem("held", f"{held.name}.toml", [held.name], held.reason))
    return out


# ------------------------------------------------------------------------ OCI images


@attrs.define
class ImageState:
    ref: str
    machines: set[str] = attrs.field(factory=set)
    ok: bool = True
    digest: str = ""
    error: str = ""
    kind: str = ""
    failures: int = 0
    last_logged: float = float("-inf")


class ImageWatch:
    """Resolution state per configured image: logs only what changed (a new failure, a recovery,
    a moved tag), the first few failures of an image and then one line per 10 minutes, and says
    which machines are affected and what to check."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.images: dict[str, ImageState] = {}

    def configured(self, pairs: Iterable[tuple[str, ImageRef, str | None]]) -> None:
        """The images the catalog uses now (after a reload): forget the others."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for name, ref, _arch in pairs:
            wanted[str(ref)].add(name)
        for key in list(self.images):
            if key not in wanted:
                del self.images[key]
        for key, names in wanted.items():
            self.images.setdefault(key, ImageState(key)).machines = names

    def resolved(self, ref: str, digest: str, layers: str) -> None:
        state = self.images.setdefault(ref, ImageState(ref))
        if not state.ok and state.failures:
            log.info("image resolvable again", image=ref, digest=digest, layers=layers,
                     machines=",".join(sorted(state.machines)), after_failures=state.failures)
        elif state.digest != digest:
            log.info("image resolved", image=ref, digest=digest, layers=layers, machines=",".join(sorted(state.machines)))
        state.ok, state.digest, state.error, state.kind, state.failures = True, digest, "", "", 0
        state.last_logged = float("-inf")

    def failed(self, ref: str, registry: str, error: str, kind: str) -> None:
        state = self.images.setdefault(ref, ImageState(ref))
        changed = state.ok or state.error != error
        state.ok, state.error, state.kind = False, error, kind
        state.failures += 1
        now = self.clock()
        if not (changed or state.failures <= IMAGE_LOG_FIRST or now - state.last_logged >= IMAGE_LOG_EVERY):
            return
        state.last_logged = now
        later = "" if state.failures < IMAGE_LOG_FIRST else f"; next report in {IMAGE_LOG_EVERY / 60:.0f} min unless it changes"
        log.warn(
            "image not resolvable: its machines cannot boot it yet",
            kind=kind,
            check=hint_for(kind, registry),
            image=ref,
            machines=",".join(sorted(state.machines)),
            error=error,
            attempts=state.failures,
            retrying=f"with backoff up to {IMAGE_RETRY_MAX:.0f} s{later}",
        )

    def problems(self) -> list[dict[str, Any]]:
        return [
            problem("image_unresolved", s.ref, s.machines, f"{s.kind}: {s.error}")
            for s in self.images.values()
            if not s.ok
        ]

    def failing(self) -> bool:
        return any(not s.ok for s in self.images.values())


def hint_for(kind: str, registry: str) -> str:
    return {
        "not allowed": f"registry.allowed (it must list {registry})",
        "no such image or tag": "the image name and tag in the machine file",
        "credentials": f"registry.auth_file (credentials for {registry})",
    }.get(kind, f"the network path to {registry} (proxy, DNS, firewall), registry.insecure for a plain-HTTP "
               f"registry, and registry.allowed")


# ------------------------------------------------------------------------ lifecycle

lifecycle_gauge = Gauge("netbootd_lifecycle_machines", "Machines that provision once, by lifecycle state", ["state"])
LIFECYCLE_STATES = ("provisioning", "provisioned", "failed", "unknown")


def lifecycle_summary(rows: Iterable[dict[str, Any]], ok: bool, loaded: bool, reason: str) -> dict[str, Any]:
    """/healthz's lifecycle part: machines by state, and whether the state store answers."""
    counts = dict.fromkeys(LIFECYCLE_STATES, 0)
    for row in rows:
        if row.get("once") or row.get("state"):
            counts[str(row["state"])] = counts.get(str(row["state"]), 0) + 1
    for state, n in counts.items():
        lifecycle_gauge.labels(state).set(n)
    return {"states": counts, "store": {"ok": ok, "loaded": loaded, "reason": reason}}


def store_problems(summary: dict[str, Any], once_machines: list[str]) -> list[dict[str, Any]]:
    store = summary["store"]
    if store["ok"]:
        return []
    held = "" if store["loaded"] else "; machines that provision once are held until it is read"
    return [problem("state_store", "state store", once_machines,
                    f"the state store is unavailable: {store['reason']} (nothing reinstalls: machines get their last "
                    f"known state{held}; lifecycle reports get 503 and are retried)")]


def set_gauges(problems: list[dict[str, Any]]) -> None:
    counts = dict.fromkeys(KINDS, 0)
    for p in problems:
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    for kind, n in counts.items():
        problems_gauge.labels(kind).set(n)
