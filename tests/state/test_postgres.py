"""The shared state store on a real PostgreSQL server (Debian's, started for these tests on
127.0.0.1), reached over TCP with a password, as netbootd nodes reach it."""

from __future__ import annotations

import os
import re
import signal
import statistics

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from netbootd.config.settings import Settings, StateSettings
from netbootd.state import Conflict, State, StateStoreError, StoreUnavailable, open_store
from netbootd.state.postgres import PostgresStore
from tests.state.conftest import ROLE, Postgres, eventually

pytestmark = pytest.mark.postgres

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:ab:cd:ef"


def store_for(postgres: Postgres, database: str, **kwargs) -> PostgresStore:
    settings = Settings(state=StateSettings(url=postgres.url(database), password_file=postgres.password_file,
                                            connect_timeout=2))
    store = open_store(settings, reactor)
    assert isinstance(store, PostgresStore)
    for key, value in kwargs.items():
        setattr(store, key, value)
    return store


@pytest_twisted.ensureDeferred
async def test_a_change_on_one_node_is_in_the_others_view_within_a_second(postgres):
    database = postgres.database()
    a, b = store_for(postgres, database), store_for(postgres, database)
    await defer.gatherResults([a.start(), b.start()])
    assert a.status().ok and b.status().loaded and b.view() == {}
    heard: dict[str, float] = {}
    b.on_change(lambda mac, record: heard.setdefault(f"{mac} {record and record.state}", reactor.seconds()))

    delays = []
    for n, state in enumerate([State.PROVISIONING, State.PROVISIONED, State.FAILED, State.PROVISIONING] * 3):
        mac = f"52:54:00:00:00:{n:02x}"
        called = reactor.seconds()
        record = await a.transition(mac, state, "operator alice", "10.0.0.1")
        await eventually(lambda mac=mac, record=record: b.view().get(mac) == record, timeout=1.0, step=0.001)
        delays.append(heard[f"{mac} {state}"] - called)
    print(f"\nfrom transition() on one node to the change in the other's view (commit, NOTIFY, read): median "
          f"{statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms over {len(delays)} changes")
    assert max(delays) < 1.0

    # and back the other way, with a forget
    record = await b.transition(MAC, State.FAILED, "ignition", "10.0.0.9", note="no disk")
    await eventually(lambda: a.view().get(MAC) == record, timeout=1.0)
    await b.forget(MAC, "operator bob")
    await eventually(lambda: MAC not in a.view(), timeout=1.0)
    assert [(t.state, t.by) for t in await a.history(MAC)] == [(None, "operator bob"), (State.FAILED, "ignition")]
    await defer.gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_idempotent_and_compare_and_set(postgres):
    store = store_for(postgres, postgres.database())
    await store.start()
    done = await store.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.7", expect=(None, State.PROVISIONING))
    assert await store.transition(MAC, "provisioned", "done_url", "10.0.0.7", expect=State.PROVISIONING) == done
    with pytest.raises(Conflict):
        await store.transition(MAC, State.FAILED, "ignition", "", expect=State.PROVISIONING)
    assert store.view() == {MAC: done}
    assert [t.state for t in await store.history(MAC)] == [State.PROVISIONED]
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_an_outage_keeps_the_view_refuses_changes_and_both_nodes_recover(postgres):
    database = postgres.database()
    a = store_for(postgres, database, backoff=(0.2, 0.5))
    b = store_for(postgres, database, backoff=(0.2, 0.5))
    await defer.gatherResults([a.start(), b.start()])
    logged: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "netbootd.state":
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    before = await a.transition(MAC, State.PROVISIONING, "operator alice", "")
    await eventually(lambda: MAC in b.view(), timeout=1.0)

    postgres.server.stop()
    try:
        await eventually(lambda: not a.status().ok and not b.status().ok, timeout=5.0)
        for store in (a, b):
            status = store.status()
            assert status.loaded and "cannot reach PostgreSQL 127.0.0.1:" in status.reason, status
            assert store.view() == {MAC: before}  # the last states read, still served
        with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL"):
            await a.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.7")
        assert a.view() == {MAC: before} and b.view() == {MAC: before}
        # b stays away longer than a: it will miss a's next NOTIFY
        b.backoff = (4.0, 4.0)
        await task_sleep(0.6)
    finally:
        postgres.server.start()

    await eventually(lambda: a.status().ok, timeout=5.0)
    assert not b.status().ok
    changed = await a.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.7")
    await eventually(lambda: b.status().ok, timeout=10.0)  # its reload on reconnect brings the change
    assert b.view() == {MAC: changed} and a.view() == {MAC: changed}
    # nothing of the refused attempt was written
    assert [(t.state, t.source) for t in await b.history(MAC)] == [(State.PROVISIONED, "10.0.0.7"),
                                                                  (State.PROVISIONING, "")]
    # Once each when it went away and when it came back, however many attempts between.
    globalLogPublisher.removeObserver(observe)
    print("\n" + "\n".join(logged))
    assert [re.sub(r"[:\d].*", "", line) for line in logged] == ["state store unavailable"] * 2 + ["state store back after "] * 2
    await defer.gatherResults([a.stop(), b.stop()])


@pytest_twisted.ensureDeferred
async def test_a_hung_database_stalls_neither_the_reactor_nor_the_caller(postgres):
    """The writer's server process stops answering (SIGSTOP): the caller gets StoreUnavailable
    after operation_timeout, the reactor keeps ticking, the view claims nothing; when the server
    process resumes, the late commit reaches the view."""
    store = store_for(postgres, postgres.database(), operation_timeout=0.5)
    await store.start()
    await store.transition(OTHER, State.PROVISIONING, "operator alice", "")
    backend = await store._db.submit(lambda: store._conn.info.backend_pid)
    gaps = [0.0]
    last = [reactor.seconds()]

    def tick() -> None:
        now = reactor.seconds()
        gaps.append(now - last[0])
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.start(0.01)
    os.kill(backend, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.5 s"):
            await store.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.7")
        assert MAC not in store.view()
        await task_sleep(0.3)
    finally:
        os.kill(backend, signal.SIGCONT)
    ticker.stop()
    assert max(gaps) < 0.2, f"the reactor stalled {max(gaps):.3f} s"
    await eventually(lambda: MAC in store.view() and store.status().ok, timeout=5.0)
    assert [t.state for t in await store.history(MAC)] == [State.PROVISIONED]
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_refuses_to_start_naming_the_setting_and_the_role(postgres, tmp_path):
    wrong = tmp_path / "password"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    store = open_store(Settings(state=StateSettings(url=postgres.url(postgres.database()), password_file=wrong)),
                       reactor)
    with pytest.raises(StateStoreError) as info:
        await store.start()
    message = str(info.value)
    assert f'refused the password of role "{ROLE}"' in message and f"state.password_file {wrong}" in message
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_database_at_start_is_an_unavailable_store_not_a_refusal(postgres):
    from tests.state.pgserver import free_port

    url = f"postgresql://{ROLE}@127.0.0.1:{free_port()}/nothing"
    store = open_store(Settings(state=StateSettings(url=url, password_file=postgres.password_file)), reactor)
    await store.start()
    status = store.status()
    assert not status.ok and not status.loaded and status.reason.endswith("/nothing: Connection refused")
    with pytest.raises(StoreUnavailable):
        await store.transition(MAC, State.FAILED, "ignition", "")
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_nodes_starting_together_migrate_once(postgres):
    database = postgres.database()
    stores = [store_for(postgres, database) for _ in range(4)]
    await defer.gatherResults([s.start() for s in stores])
    assert all(s.status().ok for s in stores)
    rows = postgres.server.psql("SELECT version FROM schema_version ORDER BY version", database)
    assert rows.splitlines() == ["1"]
    await defer.gatherResults([s.stop() for s in stores])
    again = store_for(postgres, database)
    await again.start()
    assert postgres.server.psql("SELECT count(*) FROM schema_version", database) == "1"
    await again.stop()


async def task_sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)
