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

from twisted.internet import defer

from netbootd.state.model import Conflict, Decision, Record, State, StoreStatus, StoreUnavailable, Transition, decide
from netbootd.state.store import ChangeCallback, StateStore

PROVISIONING, PROVISIONED, FAILED = State.PROVISIONING.value, State.PROVISIONED.value, State.FAILED.value
STATES = (PROVISIONING, PROVISIONED, FAILED)

__all__ = ["FAILED", "PROVISIONED", "PROVISIONING", "MemoryStore", "StateStore", "StoreUnavailable", "may_report",
           "state_of"]


class MemoryStore:
    """States kept in this process only (the same rules as netbootd.state's stores): `netbootd
    explain`, and cores built without a store. The daemon always runs on a durable store."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, Record] = {}
        self._history: dict[str, list[Transition]] = {}
        self._callbacks: list[ChangeCallback] = []
        self._clock = clock
        self._seq = 0

    def view(self) -> Mapping[str, Record]:
        return self._records

    def status(self) -> StoreStatus:
        return StoreStatus.up("memory (this process only)")

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def transition(self, mac: str, state: State | str, by: str, source: str, note: str = "",
                   expect=None) -> defer.Deferred:
        state = State(state)
        current = self._records.get(mac)
        verdict = decide(current, state, expect)  # the rule the durable stores apply
        if verdict is Decision.NOOP:
            return defer.succeed(current)
        if verdict is Decision.CONFLICT:
            return defer.fail(Conflict(mac, expect, current))
        self._seq += 1
        record = Record(mac, state, self._clock(), by, source, self._seq)
        self._records[mac] = record
        self._history.setdefault(mac, []).append(Transition(mac, state, current.state if current else None,
                                                            record.since, by, source, note, self._seq))
        for callback in self._callbacks:
            callback(mac, record)
        return defer.succeed(record)

    def history(self, mac: str, limit: int = 50) -> defer.Deferred:
        return defer.succeed(list(reversed(self._history.get(mac, [])))[:limit])

    def forget(self, mac: str, by: str, source: str = "", note: str = "") -> defer.Deferred:
        current = self._records.pop(mac, None)
        if current is not None:
            self._seq += 1
            self._history[mac].append(Transition(mac, None, current.state, self._clock(), by, source, note, self._seq))
            for callback in self._callbacks:
                callback(mac, None)
        return defer.succeed(current)

    def start(self) -> defer.Deferred:
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        return defer.succeed(None)


class SnapshotStore(MemoryStore):
    """Records as another store held them at one moment (the daemon's, read by `netbootd explain`
    or the dashboard's explanations): read-only."""

    def __init__(self, records: Mapping[str, Record], status: StoreStatus, note: str = "") -> None:
        super().__init__()
        self._records.update(records)
        self._now = status
        self.note = note  # how these states were learnt, when that is worth saying

    def status(self) -> StoreStatus:
        return self._now

    def transition(self, mac: str, state: State | str, by: str, source: str, note: str = "",
                   expect=None) -> defer.Deferred:
        return defer.fail(StoreUnavailable("a snapshot of the states changes nothing"))


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
