"""Provision once: the states a `[lifecycle] once = true` machine moves through, and who moves it.

    provisioning ──done_url / done_on──▶ provisioned ──reprovision──▶ provisioning
         │                                                   ▲
         └──failed_url──▶ failed ───────reprovision──────────┘

A machine with no record is `provisioning`. The records live in a state store (netbootd.state:
SQLite, or PostgreSQL shared by every netbootd answering the same machines); the core reads the
store's in-memory view on every decision and never waits on the database. A transition is
answered only once the store has it on disk: a callback that cannot be stored fails (503) so the
installer retries, and is never acknowledged and then lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet import defer

PROVISIONING, PROVISIONED, FAILED = "provisioning", "provisioned", "failed"
STATES = (PROVISIONING, PROVISIONED, FAILED)


class Record(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def since(self) -> float: ...

    @property
    def by(self) -> str: ...

    @property
    def source(self) -> str: ...


class StoreStatus(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def loaded(self) -> bool:
        """The view was read in full at least once."""
        ...

    @property
    def reason(self) -> str: ...


class StateStore(Protocol):
    """What the core needs of a state store (netbootd.state provides SQLite and PostgreSQL ones)."""

    def view(self) -> Mapping[str, Record]: ...

    def status(self) -> StoreStatus: ...

    def transition(self, mac: str, state: str, by: str, source: str, note: str = "",
                   expect: str | None = None) -> defer.Deferred: ...

    def history(self, mac: str, limit: int = 50) -> defer.Deferred: ...


class StoreUnavailable(Exception):
    """The store cannot take a transition now; nothing changed (answer 503: retry)."""


# ------------------------------------------------------------------------ an in-process store


@attrs.frozen
class MemoryRecord:
    state: str
    since: float
    by: str
    source: str
    seq: int = 0


@attrs.frozen
class MemoryStatus:
    ok: bool = True
    loaded: bool = True
    reason: str = ""


class MemoryStore:
    """States kept in this process only: `netbootd explain`, and cores built without a store.
    The daemon always runs on netbootd.state's durable stores."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, MemoryRecord] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._clock = clock

    def view(self) -> Mapping[str, MemoryRecord]:
        return self._records

    def status(self) -> MemoryStatus:
        return MemoryStatus()

    def transition(self, mac: str, state: str, by: str, source: str, note: str = "",
                   expect: str | None = None) -> defer.Deferred:
        current = self._records.get(mac)
        if expect is not None and (current.state if current else PROVISIONING) != expect:
            return defer.fail(StateConflict(mac, current.state if current else PROVISIONING, expect))
        if current is not None and current.state == state:
            return defer.succeed(current)
        record = MemoryRecord(state, self._clock(), by, source, (current.seq + 1) if current else 1)
        self._records[mac] = record
        self._history.setdefault(mac, []).append(
            {"mac": mac, "state": state, "previous": current.state if current else "", "at": record.since,
             "by": by, "source": source, "note": note})
        return defer.succeed(record)

    def history(self, mac: str, limit: int = 50) -> defer.Deferred:
        return defer.succeed(list(reversed(self._history.get(mac, [])))[:limit])


class StateConflict(Exception):
    def __init__(self, mac: str, actual: str, expected: str) -> None:
        super().__init__(f"{mac} is {actual}, not {expected}")
        self.actual = actual


# ------------------------------------------------------------------------ the rules


def state_of(store: StateStore, mac: str | None) -> str:
    """A `once` machine's state now ("unknown" while the store was never read)."""
    if not store.status().loaded:
        return "unknown"
    record = store.view().get(mac) if mac else None
    return record.state if record is not None else PROVISIONING


def may_report(state: str, reported: str) -> str | None:
    """Why an installer's report `reported` (done or failed) is refused in `state`, or None.
    A repeat is fine (idempotent); a report after an operator moved the machine on is not."""
    if state == reported or state == PROVISIONING:
        return None
    return (f"the machine is {state}, so a {'done' if reported == PROVISIONED else 'failed'} report changes "
            "nothing (reprovision it first: netbootd reprovision MAC)")
