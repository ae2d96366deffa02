"""What both databases share: the view (a snapshot swapped whole on the reactor thread), change
callbacks, the status, and the path of a change: database thread → commit → view → caller.

A backend provides the blocking half, run on its DbThread: _transition_sync, _forget_sync,
_history_sync, each raising StoreUnavailable (with a reason) when the database cannot answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from netbootd.logs import get_logger
from netbootd.state.model import (
    Expect,
    Record,
    State,
    StoreStatus,
    StoreUnavailable,
    Transition,
    normalize_mac,
)
from netbootd.state.store import ChangeCallback
from netbootd.state.worker import DbThread

T = TypeVar("T")

# A caller waits this long for the database, then gets StoreUnavailable (503, the installer
# retries); a change that commits later still reaches the view, and a retry of it is a no-op.
OPERATION_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# Long enough for any failure report an installer sends, short enough that one cannot bloat the database.
MAX_NOTE = 4000
MAX_FIELD = 200

NOT_STARTED = "not started"

# (mac, record or None when forgotten, seq)
Row = tuple[str, Record | None, int]
# Every machine's record, its columns in the order rows_of reads them (both databases)
SELECT_MACHINES = "SELECT mac, state, since, actor, source, seq FROM machines"


def rows_of(fetched: Iterable[tuple]) -> list[Row]:
    """Rows of SELECT_MACHINES as (mac, its record or None, seq)."""
    return [(mac, Record(mac, State(state), since, actor, source, seq) if state is not None else None, seq)
            for mac, state, since, actor, source, seq in fetched]

log = get_logger("netbootd.state")


class BaseStore:
    """StateStore's reactor-thread half; a subclass adds start(), stop() and the database calls."""

    def __init__(self, reactor: Any, where: str, *, clock: Callable[[], float] = time.time,
                 operation_timeout: float = OPERATION_TIMEOUT) -> None:
        self.reactor = reactor
        self.where = where
        self.clock = clock
        self.operation_timeout = operation_timeout
        self._db = DbThread(reactor, f"netbootd-state-{type(self).__name__}")
        self._records: dict[str, Record] = {}
        self._view: Mapping[str, Record] = MappingProxyType(self._records)
        self._seqs: dict[str, int] = {}  # newest seq applied per MAC, forgotten ones included
        self._callbacks: list[ChangeCallback] = []
        self._status = StoreStatus(False, NOT_STARTED, clock(), False, where)

    # -- the reactor thread's side

    def view(self) -> Mapping[str, Record]:
        return self._view

    def status(self) -> StoreStatus:
        return self._status

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def transition(self, mac: str, state: State | str, by: str, source: str, note: str = "",
                   expect: Expect = None) -> Deferred[Record]:
        try:
            mac = normalize_mac(mac)
            state = State(state)
            if isinstance(expect, str):  # a state's name, not a collection of letters
                expect = State(expect)
            elif expect is not None:
                expect = frozenset(State(s) if s is not None else None for s in expect)
        except ValueError as exc:
            return defer.fail(exc)
        d = self._db.submit(self._transition_sync, mac, state, by[:MAX_FIELD], source[:MAX_FIELD],
                            note[:MAX_NOTE], expect, self.clock())
        return self._answer(d.addCallback(self._committed))

    def forget(self, mac: str, by: str, source: str = "", note: str = "") -> Deferred[Record | None]:
        try:
            mac = normalize_mac(mac)
        except ValueError as exc:
            return defer.fail(exc)
        d = self._db.submit(self._forget_sync, mac, by[:MAX_FIELD], source[:MAX_FIELD], note[:MAX_NOTE], self.clock())
        return self._answer(d.addCallback(self._forgotten))

    def history(self, mac: str, limit: int = 50) -> Deferred[list[Transition]]:
        try:
            mac = normalize_mac(mac)
        except ValueError as exc:
            return defer.fail(exc)
        return self._answer(self._db.submit(self._history_sync, mac, max(0, limit)))

    def _committed(self, result: tuple[Record, bool]) -> Record:
        record, _changed = result
        self._apply([(record.mac, record, record.seq)])
        self._op_succeeded()
        return record

    def _forgotten(self, result: tuple[Record | None, int]) -> Record | None:
        old, seq = result
        if old is not None:
            self._apply([(old.mac, None, seq)])
        self._op_succeeded()
        return old

    def _answer(self, d: Deferred[T]) -> Deferred[T]:
        """The caller's Deferred: `d`'s result, or StoreUnavailable after operation_timeout. `d`
        itself runs to its end either way, so a late commit still reaches the view."""
        answer: Deferred[T] = Deferred()

        def late() -> None:
            if not answer.called:
                reason = f"the database did not answer within {self.operation_timeout:g} s"
                self._op_failed(reason)
                answer.errback(StoreUnavailable(reason))

        timer = self.reactor.callLater(self.operation_timeout, late)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and result.check(StoreUnavailable):
                self._op_failed(str(result.value))
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)  # type: ignore[arg-type]
            elif isinstance(result, Failure) and not result.check(StoreUnavailable):
                log.failure("state store: a late database call failed", result)

        d.addBoth(done)
        return answer

    def _apply(self, rows: Iterable[Row], *, complete: bool = False) -> None:
        """Puts committed rows in the view: a row older than what the view has of that machine is
        news already overtaken, and ignored. `complete`: the rows are the whole database (a full
        reload); machines it lacks leave the view."""
        records = dict(self._records)
        changed: list[tuple[str, Record | None]] = []
        seen = set()
        for mac, record, seq in rows:
            seen.add(mac)
            if seq <= self._seqs.get(mac, 0):
                continue
            self._seqs[mac] = seq
            old = records.pop(mac, None)
            if record is not None:
                records[mac] = record
            if old != record:
                changed.append((mac, record))
        if complete:
            for mac in set(self._seqs) - seen:
                del self._seqs[mac]
                if records.pop(mac, None) is not None:
                    changed.append((mac, None))
        if not changed:
            return
        self._records = records
        self._view = MappingProxyType(records)
        for mac, record in changed:
            for callback in self._callbacks:
                try:
                    callback(mac, record)
                except Exception:
                    log.failure("state store: a change callback failed", mac=mac)

    def _set_status(self, ok: bool, reason: str = "", loaded: bool | None = None) -> None:
        """Logs once when the database goes away and once when it is back, not at every retry."""
        old = self._status
        loaded = old.loaded if loaded is None else loaded
        if ok == old.ok and reason == old.reason and loaded == old.loaded:
            return
        now = self.clock()
        since = old.since if ok == old.ok else now
        self._status = StoreStatus(ok, reason, since, loaded, self.where)
        if (old.ok or old.reason == NOT_STARTED) and not ok:
            log.warn("state store unavailable: {reason}; serving the states it last read, changes refused until "
                          "it is back", reason=reason, where=self.where)
        elif ok and not old.ok and old.reason != NOT_STARTED:
            log.info("state store back after {seconds:.0f} s", seconds=now - old.since, where=self.where)

    def _op_succeeded(self) -> None:
        """A database call worked. The backend decides whether that says the store is well."""

    def _op_failed(self, reason: str) -> None:
        self._set_status(False, reason)

    # -- the database thread's side

    def _transition_sync(self, mac: str, state: State, by: str, source: str, note: str, expect: Expect,
                         now: float) -> tuple[Record, bool]:
        raise NotImplementedError

    def _forget_sync(self, mac: str, by: str, source: str, note: str, now: float) -> tuple[Record | None, int]:
        raise NotImplementedError

    def _history_sync(self, mac: str, limit: int) -> list[Transition]:
        raise NotImplementedError

