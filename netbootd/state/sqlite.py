"""The embedded store: one SQLite file, state_dir/state.sqlite3, for a netbootd of its own.

WAL with synchronous=FULL: a transition's Deferred fires only after its commit is on the disk,
so a state an installer was told it reached survives a power cut. The schema is versioned
(MIGRATIONS); a file written by a newer netbootd is refused rather than guessed at."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from netbootd.state.base import SELECT_MACHINES, STOP_TIMEOUT, BaseStore, Row, log, rows_of
from netbootd.state.model import (
    Conflict,
    Decision,
    Expect,
    Record,
    State,
    StateStoreError,
    StoreStatus,
    StoreUnavailable,
    Transition,
    decide,
)

FILE_NAME = "state.sqlite3"

# Version n is MIGRATIONS[n - 1], each run once in its own transaction. Add a migration by
# appending to this tuple; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the current record of each machine, and its history
        """CREATE TABLE machines (
            mac TEXT PRIMARY KEY,
            state TEXT,            -- NULL: forgotten; the row keeps its seq
            since REAL NOT NULL,
            actor TEXT NOT NULL,
            source TEXT NOT NULL,
            seq INTEGER NOT NULL
        )""",
        """CREATE TABLE history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            mac TEXT NOT NULL,
            state TEXT,
            previous TEXT,
            since REAL NOT NULL,
            actor TEXT NOT NULL,
            source TEXT NOT NULL,
            note TEXT NOT NULL
        )""",
        "CREATE INDEX history_by_mac ON history (mac, seq)",
    ),
)


def _state(text: str | None) -> State | None:
    return State(text) if text is not None else None


class SqliteStore(BaseStore):
    def __init__(self, reactor: Any, state_dir: Path, *, busy_timeout: float = 5.0, **kwargs: Any) -> None:
        self.path = state_dir / FILE_NAME
        super().__init__(reactor, f"SQLite {self.path}", **kwargs)
        self.state_dir = state_dir
        self.busy_timeout = busy_timeout  # another process holding the file (a backup, sqlite3 by hand)
        self._conn: sqlite3.Connection | None = None

    def start(self) -> Deferred[None]:
        def loaded(rows: list[Row]) -> None:
            self._apply(rows, complete=True)
            self._status = StoreStatus.up(self.where)

        def refused(failure: Failure) -> Failure:
            self._set_status(False, str(failure.value))
            return failure

        return self._db.submit(self._open_sync).addCallbacks(loaded, refused)

    def stop(self) -> Deferred[None]:
        self._db.submit(self._close_sync).addErrback(lambda f: log.failure("state store: closing failed", f))
        return self._db.stop(STOP_TIMEOUT)

    def _op_succeeded(self) -> None:
        # One writer, this process: whatever the file now holds, the view holds too.
        if not self._status.ok:
            self._set_status(True)

    # -- on the database thread

    def _open_sync(self) -> list[Row]:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateStoreError(
                f"cannot create state_dir {self.state_dir}: {exc.strerror or exc} (netbootd runs as uid {os.geteuid()}; "
                "it keeps machine lifecycle states there: create the directory, writable by that user)") from None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StateStoreError(self._damaged("; ".join(problems[:3])))
            self._migrate(conn)
            rows = self._load(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._unusable(exc) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return rows

    def _unusable(self, exc: sqlite3.Error) -> StateStoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StateStoreError(self._damaged(text))
        if not os.access(self.state_dir, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            text += f" (netbootd runs as uid {os.geteuid()}: make {self.state_dir} and {self.path} writable by that user)"
        return StateStoreError(f"cannot open the state database {self.path}: {text}")

    def _damaged(self, what: str) -> str:
        return (f"the state database {self.path} is damaged or not an SQLite database ({what}). Restore it from a "
                f"backup; or move it aside (mv {self.path} {self.path}.broken) to start with no lifecycle states, "
                f"and every machine with `once = true` is provisioned again at its next boot")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise StateStoreError(
                    f"the state database {self.path} has schema version {current}, written by a newer netbootd; this "
                    f"one knows versions up to {len(MIGRATIONS)}: run the newer netbootd, or restore a backup")
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, self.clock()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _load(self, conn: sqlite3.Connection) -> list[Row]:
        return rows_of(conn.execute(SELECT_MACHINES).fetchall())

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, change: Callable[[sqlite3.Connection], Any]) -> Any:
        """`change` in one IMMEDIATE transaction (taken before reading, so the read is the truth the
        write is decided on); any database error rolls it back and becomes StoreUnavailable."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the state store is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = change(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from None
        return result

    def _current(self, conn: sqlite3.Connection, mac: str) -> Record | None:
        row = conn.execute("SELECT state, since, actor, source, seq FROM machines WHERE mac = ?", (mac,)).fetchone()
        if row is None or row[0] is None:
            return None
        return Record(mac, State(row[0]), row[1], row[2], row[3], row[4])

    def _record_change(self, conn: sqlite3.Connection, mac: str, state: State | None, previous: State | None,
                       now: float, by: str, source: str, note: str) -> int:
        cursor = conn.execute(
            "INSERT INTO history (mac, state, previous, since, actor, source, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (mac, state, previous, now, by, source, note))
        seq = cursor.lastrowid
        assert seq is not None
        conn.execute(
            "INSERT INTO machines (mac, state, since, actor, source, seq) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (mac) DO UPDATE SET state = excluded.state, since = excluded.since, actor = excluded.actor, "
            "source = excluded.source, seq = excluded.seq",
            (mac, state, now, by, source, seq))
        return seq

    def _transition_sync(self, mac: str, state: State, by: str, source: str, note: str, expect: Expect,
                         now: float) -> tuple[Record, bool]:
        def change(conn: sqlite3.Connection) -> tuple[Record, bool]:
            current = self._current(conn, mac)
            decision = decide(current, state, expect)
            if decision is Decision.NOOP:
                assert current is not None
                return current, False
            if decision is Decision.CONFLICT:
                raise Conflict(mac, expect, current)
            seq = self._record_change(conn, mac, state, current.state if current else None, now, by, source, note)
            return Record(mac, state, now, by, source, seq), True

        result: tuple[Record, bool] = self._write(change)
        return result

    def _forget_sync(self, mac: str, by: str, source: str, note: str, now: float) -> tuple[Record | None, int]:
        def change(conn: sqlite3.Connection) -> tuple[Record | None, int]:
            current = self._current(conn, mac)
            if current is None:
                return None, 0
            return current, self._record_change(conn, mac, None, current.state, now, by, source, note)

        result: tuple[Record | None, int] = self._write(change)
        return result

    def _history_sync(self, mac: str, limit: int) -> list[Transition]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the state store is not open")
        try:
            rows = conn.execute(
                "SELECT state, previous, since, actor, source, note, seq FROM history WHERE mac = ? "
                "ORDER BY seq DESC LIMIT ?", (mac, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from None
        return [Transition(mac, _state(state), _state(previous), since, actor, source, note, seq)
                for state, previous, since, actor, source, note, seq in rows]
