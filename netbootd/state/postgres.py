"""The shared store: one PostgreSQL database for every netbootd that answers the same machines.

Two connections per node, each on a thread of its own:
- the writer (the store's DbThread): transitions, forgets, history. A transition takes a
  per-machine advisory lock, reads, decides, writes, and NOTIFYs in the same transaction, so the
  notification exists exactly when the change does.
- the listener: LISTENs, then reads the whole table into the view, then waits for notifications
  and reads the machines they name. On any failure it marks the store unavailable (the view is
  kept), reconnects with backoff and reads everything again: a notification may have been missed.

The listener owns the status: the store is ok when it is connected and its view is current."""

from __future__ import annotations

import getpass
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict
from twisted.internet import defer
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
    StoreUnavailable,
    Transition,
    decide,
)
from netbootd.state.worker import within

T = TypeVar("T")

CHANNEL = "netbootd_state"
# Advisory lock keys (two int4): migrations, and one lock per machine (hashtext of its MAC).
LOCK_MIGRATIONS = (0x6E62, 1)
LOCK_MACHINE = 0x6E63

# Version n is MIGRATIONS[n - 1], run once under LOCK_MIGRATIONS (nodes starting together wait for
# one another). Add a migration by appending; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the current record of each machine, and its history
        """CREATE TABLE machines (
            mac text PRIMARY KEY,
            state text,             -- NULL: forgotten; the row keeps its seq
            since double precision NOT NULL,
            actor text NOT NULL,
            source text NOT NULL,
            seq bigint NOT NULL
        )""",
        """CREATE TABLE history (
            seq bigserial PRIMARY KEY,
            mac text NOT NULL,
            state text,
            previous text,
            since double precision NOT NULL,
            actor text NOT NULL,
            source text NOT NULL,
            note text NOT NULL
        )""",
        "CREATE INDEX history_by_mac ON history (mac, seq)",
    ),
)

POLL = 1.0  # the listener's longest wait for a notification: how soon it notices stop() or a kick
HEARTBEAT = 5.0  # a query when nothing was heard for this long: a dead connection is noticed
BACKOFF = (1.0, 30.0)  # first and longest wait between reconnection attempts (doubling)
STATEMENT_TIMEOUT_MS = 10_000
LOCK_TIMEOUT = "5s"  # a transition waits this long for another node's change of the same machine

# Connection failures that are the database being away, not this configuration being wrong.
_TRANSIENT = ("Connection refused", "timeout expired", "could not translate host name", "No route to host",
              "Network is unreachable", "server closed the connection", "the database system is",
              "too many clients", "Connection reset", "No such file or directory", "terminating connection",
              "connection timed out", "Connection timed out", "could not receive data", "could not send data",
              "SSL SYSCALL error", "EOF detected")
# SQLSTATE classes of the same: connection exception, operator intervention, insufficient resources.
_TRANSIENT_CLASSES = ("08", "57", "53")


@attrs.frozen
class PgConfig:
    url: str
    password: str | None = attrs.field(default=None, repr=False)
    password_file: Path | None = None  # named in messages
    sslmode: str = ""
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None
    connect_timeout: int = 5

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "application_name": "netbootd",
            # a peer that vanished without a word (a partition) is noticed within seconds, not hours
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 20_000,
        }
        if self.password is not None:
            params["password"] = self.password
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, key)
            if value:
                params[key] = str(value)
        return params

    def role(self) -> str:
        return str(conninfo_to_dict(self.url).get("user") or getpass.getuser())

    def where(self) -> str:
        info = conninfo_to_dict(self.url)
        return f"PostgreSQL {info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or self.role()}"


class _Kicked(Exception):
    """The writer lost its connection: the listener reconnects and reads everything again."""


class PostgresStore(BaseStore):
    def __init__(self, reactor: Any, config: PgConfig, *, backoff: tuple[float, float] = BACKOFF,
                 **kwargs: Any) -> None:
        super().__init__(reactor, config.where(), **kwargs)
        self.config = config
        self.backoff = backoff
        self._conn: psycopg.Connection[Any] | None = None  # the writer's, on the DbThread
        self._down: tuple[float, str] | None = None  # the writer's last failed connection: (until, reason)
        self._stopping = threading.Event()
        self._kick = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="netbootd-state-listener", daemon=True)
        self._started = False
        self._first: Deferred[None] = Deferred()  # the listener's first attempt: start()'s answer
        self._listener_done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """Fires once the view is loaded; or, when the database cannot be reached, at once with the
        status unavailable (loaded False) while the listener keeps trying. Errbacks StateStoreError
        when the database refuses this configuration (credentials, database, TLS, privileges)."""
        self._started = True
        self._listener.start()
        return self._first

    def stop(self) -> Deferred[None]:
        """Fires when both threads have finished, or after STOP_TIMEOUT if the database hangs."""
        self._stopping.set()
        self._db.submit(self._close_sync)
        waits = [self._db.stop(STOP_TIMEOUT)]
        if self._started:
            waits.append(self._listener_done)
        return within(defer.gatherResults(waits, consumeErrors=True), STOP_TIMEOUT, self.reactor)

    def _op_failed(self, reason: str) -> None:
        super()._op_failed(reason)
        self._kick.set()  # the listener says when the database is back, with a fresh view

    # -- the reactor thread's side of the listener

    def _loaded(self, rows: list[Row]) -> None:
        self._down = None  # the database answers: the writer may try again at once
        self._apply(rows, complete=True)
        self._set_status(True, loaded=True)
        if not self._first.called:
            self._first.callback(None)

    def _unavailable(self, reason: str) -> None:
        self._set_status(False, reason)
        if not self._first.called:
            self._first.callback(None)

    def _refused(self, error: StateStoreError) -> None:
        self._set_status(False, str(error))
        if not self._first.called:
            self._first.errback(error)

    # -- connections, on either thread

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.config.url, autocommit=True, **self.config.params())
        try:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _problem(self, exc: BaseException) -> tuple[bool, str]:
        """(transient, the reason in an operator's words) for a failure to use the database."""
        text = str(exc).strip()
        detail = _detail(text) or repr(exc)
        sqlstate = getattr(exc, "sqlstate", None) or ""
        role = self.config.role()
        if "password authentication failed" in text:
            where = (f"state.password_file {self.config.password_file}" if self.config.password_file
                     else "state.password_file is not set")
            return False, (f'{self.where} refused the password of role "{role}" ({where}): put that '
                           "role's password in state.password_file, or the role in state.url")
        if "no password supplied" in text or "fe_sendauth" in text:
            return False, (f'{self.where} asks a password of role "{role}" and none was given: '
                           "set state.password_file")
        connecting = isinstance(exc, psycopg.OperationalError) and not sqlstate
        if connecting and "does not exist" in text:
            return False, f"{self.where}: {detail} (state.url)"
        if "pg_hba.conf" in text:
            return False, (f"{self.where} lets no connection of role \"{role}\" in from this host: "
                           f"{detail} (the server's pg_hba.conf, or state.sslmode)")
        if any(word in text for word in ("certificate", "sslmode", "SSL error", "private key", "sslkey", "sslcert")):
            return False, (f"TLS to {self.where}: {detail} (state.sslmode, state.sslrootcert, "
                           "state.sslcert, state.sslkey)")
        # A connection that failed without a word from the server is the server being away.
        transient = connecting or sqlstate[:2] in _TRANSIENT_CLASSES or any(word in text for word in _TRANSIENT)
        if transient:
            return True, f"cannot reach {self.where}: {detail}"
        return False, f"{self.where}: {detail} (sqlstate {sqlstate or '?'})"

    # -- the listener thread

    def _listen(self) -> None:
        delay = self.backoff[0]
        migrated = False
        first = True  # start() waits for this attempt; a refusal then ends the store
        while not self._stopping.is_set():
            if not first:
                self._stopping.wait(delay)
                delay = min(max(delay * 2, self.backoff[0]), self.backoff[1])
                if self._stopping.is_set():
                    break
            conn = None
            try:
                conn = self._connect()
                if not migrated:
                    self._migrate(conn)
                    migrated = True
                self._kick.clear()
                conn.execute(f"LISTEN {CHANNEL}")
                rows = self._load(conn, None)  # after LISTEN: a change from now on is heard of too
                self.reactor.callFromThread(self._loaded, rows)
                delay = self.backoff[0]
                self._serve(conn)
            except _Kicked:
                delay = 0.0  # again at once: the database may well be there
            except StateStoreError as exc:
                self.reactor.callFromThread(self._refused, exc)
                if first:
                    break
            except (psycopg.Error, OSError) as exc:
                transient, reason = self._problem(exc)
                if not transient and first:
                    self.reactor.callFromThread(self._refused, StateStoreError(reason))
                    break
                self.reactor.callFromThread(self._unavailable, reason)
            except Exception as exc:  # a bug: keep the listener alive, say what it was
                failure = Failure()
                self.reactor.callFromThread(self._unavailable, f"state listener failed: {exc!r}")
                self.reactor.callFromThread(log.failure, "state store: listener failed", failure)
            finally:
                first = False
                if conn is not None:
                    conn.close()
        self.reactor.callFromThread(self._listener_done.callback, None)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        quiet_since = time.monotonic()
        while not self._stopping.is_set():
            if self._kick.is_set():
                raise _Kicked()
            macs = {n.payload for n in conn.notifies(timeout=POLL, stop_after=1)}
            if macs:
                macs |= {n.payload for n in conn.notifies(timeout=0)}  # what else has arrived: one query
                rows = self._load(conn, macs)
                self.reactor.callFromThread(self._apply, rows)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= HEARTBEAT:
                conn.execute("SELECT 1")
                quiet_since = time.monotonic()

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_MIGRATIONS)
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                             "applied_at double precision NOT NULL, applied_by text NOT NULL)")
                row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                current = row[0] if row else 0
                if current > len(MIGRATIONS):
                    raise StateStoreError(
                        f"the state database {self.where} has schema version {current}, written by a newer "
                        f"netbootd; this one knows versions up to {len(MIGRATIONS)}: upgrade this netbootd")
                for version in range(current + 1, len(MIGRATIONS) + 1):
                    for statement in MIGRATIONS[version - 1]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)",
                                 (version, self.clock(), f"netbootd pid {os.getpid()} on {socket.gethostname()}"))
                    self.reactor.callFromThread(log.info, "state database migrated to schema version {version}",
                                                version=version, where=self.where)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StateStoreError(
                f'role "{self.config.role()}" may not create netbootd\'s tables in {self.where} ({exc}): make it '
                "the database's owner, or grant it CREATE on the schema") from None

    def _load(self, conn: psycopg.Connection[Any], macs: Iterable[str] | None) -> list[Row]:
        query = SELECT_MACHINES
        if macs is None:
            return rows_of(conn.execute(query).fetchall())
        return rows_of(conn.execute(query + " WHERE mac = ANY(%s)", (list(macs),)).fetchall())

    # -- the writer (DbThread)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _with_conn(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work` on the writer's connection. A connection that has died since its last use is
        replaced once: work that had committed before the answer was lost is found done, and an
        idempotent transition is then a no-op. After a failed connection attempt, calls within
        connect_timeout fail at once with its reason: a queue of calls that piled up while the
        database hung is answered, not worked through one connect_timeout each."""
        for attempt in (1, 2):
            fresh = self._conn is None
            if fresh and self._down is not None and time.monotonic() < self._down[0]:
                raise StoreUnavailable(self._down[1])
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    self._down = None
                return work(self._conn)
            except psycopg.Error as exc:
                broken = self._conn is None or self._conn.broken or self._conn.closed
                if not broken:  # the connection is well: the database refused this statement
                    raise StoreUnavailable(f"{self.where} did not take the change: {_detail(str(exc))}") from None
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if not fresh and attempt == 1:
                    continue
                reason = self._problem(exc)[1]
                self._down = (time.monotonic() + self.config.connect_timeout, reason)
                raise StoreUnavailable(reason) from None
        raise AssertionError("unreachable")

    def _current(self, conn: psycopg.Connection[Any], mac: str) -> Record | None:
        row = conn.execute("SELECT state, since, actor, source, seq FROM machines WHERE mac = %s", (mac,)).fetchone()
        if row is None or row[0] is None:
            return None
        return Record(mac, State(row[0]), row[1], row[2], row[3], row[4])

    def _lock(self, conn: psycopg.Connection[Any], mac: str) -> None:
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_MACHINE, mac))

    def _record_change(self, conn: psycopg.Connection[Any], mac: str, state: State | None, previous: State | None,
                       now: float, by: str, source: str, note: str) -> int:
        row = conn.execute(
            "INSERT INTO history (mac, state, previous, since, actor, source, note) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING seq",
            (mac, state and state.value, previous and previous.value, now, by, source, note)).fetchone()
        assert row is not None
        seq: int = row[0]
        conn.execute(
            "INSERT INTO machines (mac, state, since, actor, source, seq) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (mac) DO UPDATE SET state = excluded.state, since = excluded.since, actor = excluded.actor, "
            "source = excluded.source, seq = excluded.seq",
            (mac, state and state.value, now, by, source, seq))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, mac))  # delivered at COMMIT, with the change
        return seq

    def _transition_sync(self, mac: str, state: State, by: str, source: str, note: str, expect: Expect,
                         now: float) -> tuple[Record, bool]:
        def work(conn: psycopg.Connection[Any]) -> tuple[Record, bool]:
            with conn.transaction():
                self._lock(conn, mac)
                current = self._current(conn, mac)
                decision = decide(current, state, expect)
                if decision is Decision.NOOP:
                    assert current is not None
                    return current, False
                if decision is Decision.CONFLICT:
                    raise Conflict(mac, expect, current)
                seq = self._record_change(conn, mac, state, current.state if current else None, now, by, source, note)
            return Record(mac, state, now, by, source, seq), True  # after the COMMIT returned

        return self._with_conn(work)

    def _forget_sync(self, mac: str, by: str, source: str, note: str, now: float) -> tuple[Record | None, int]:
        def work(conn: psycopg.Connection[Any]) -> tuple[Record | None, int]:
            with conn.transaction():
                self._lock(conn, mac)
                current = self._current(conn, mac)
                if current is None:
                    return None, 0
                seq = self._record_change(conn, mac, None, current.state, now, by, source, note)
            return current, seq

        return self._with_conn(work)

    def _history_sync(self, mac: str, limit: int) -> list[Transition]:
        def work(conn: psycopg.Connection[Any]) -> list[Transition]:
            rows = conn.execute(
                "SELECT state, previous, since, actor, source, note, seq FROM history WHERE mac = %s "
                "ORDER BY seq DESC LIMIT %s", (mac, limit)).fetchall()
            return [Transition(mac, State(s) if s else None, State(p) if p else None, since, actor, source, note, seq)
                    for s, p, since, actor, source, note, seq in rows]

        return self._with_conn(work)


_LIBPQ_PREFIX = re.compile(r'^(?:connection failed: )?(?:connection to server (?:at|on) .*?(?:port \d+ )?failed: )?')


def _detail(text: str) -> str:
    """libpq's words without its preamble: "connection failed: connection to server at "10.0.0.5",
    port 5432 failed: FATAL:  password authentication failed for user "netbootd"" → the last part."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = _LIBPQ_PREFIX.sub("", first.strip())
    return first.removeprefix("FATAL:").strip()
