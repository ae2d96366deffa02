"""The embedded state store: a real SQLite file in a temporary state_dir, the real reactor."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from netbootd.config.settings import Settings
from netbootd.state import (
    Conflict,
    Record,
    State,
    StateStoreError,
    StoreUnavailable,
    open_store,
)
from netbootd.state.sqlite import FILE_NAME, SqliteStore
from tests.state.conftest import eventually

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:ab:cd:ef"


async def started(state_dir, **kwargs) -> SqliteStore:
    store = SqliteStore(reactor, state_dir, **kwargs)
    await store.start()
    return store


@pytest_twisted.ensureDeferred
async def test_transitions_survive_a_new_store_on_the_same_file(tmp_path):
    store = open_store(Settings(state_dir=tmp_path / "state"))
    assert isinstance(store, SqliteStore)
    await store.start()
    assert store.status().ok and store.status().loaded and store.view() == {}
    first = await store.transition("52-54-00-12-34-56", State.PROVISIONING, "operator alice", "", note="new rack")
    done = await store.transition(MAC, "provisioned", "done_url", "10.0.0.7")
    assert done.mac == MAC and done.state is State.PROVISIONED and done.by == "done_url" and done.source == "10.0.0.7"
    assert done.seq > first.seq
    assert store.view() == {MAC: done}
    # The file is in WAL mode with synchronous=FULL: a commit is on the disk when the Deferred fires.
    assert await store._db.submit(lambda: store._conn.execute("PRAGMA synchronous").fetchone()[0]) == 2
    assert await store._db.submit(lambda: store._conn.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    await store.stop()

    again = await started(tmp_path / "state")
    assert again.view() == {MAC: done}
    history = await again.history(MAC)
    assert [(t.state, t.previous, t.by, t.note) for t in history] == [
        (State.PROVISIONED, State.PROVISIONING, "done_url", ""),
        (State.PROVISIONING, None, "operator alice", "new rack"),
    ]
    assert [t.seq for t in history] == [done.seq, first.seq]
    assert (await again.history(MAC, limit=1))[0].state is State.PROVISIONED
    await again.stop()


@pytest_twisted.ensureDeferred
async def test_the_same_state_again_is_a_success_without_a_change(tmp_path):
    store = await started(tmp_path)
    changes = []
    store.on_change(lambda mac, record: changes.append((mac, record)))
    done = await store.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.7")
    repeat = await store.transition(MAC, State.PROVISIONED, "done_url", "10.0.0.8", expect=State.PROVISIONING)
    assert repeat == done  # the first record, not a new one: an installer's retry changes nothing
    assert len(await store.history(MAC)) == 1
    assert changes == [(MAC, done)]
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_compare_and_set(tmp_path):
    store = await started(tmp_path)
    with pytest.raises(Conflict) as info:
        await store.transition(MAC, State.PROVISIONED, "done_url", "", expect=State.PROVISIONING)
    assert info.value.current is None and str(info.value) == f"{MAC} is no record, not provisioning"
    assert store.view() == {} and await store.history(MAC) == []

    # The done URL of a machine that was never written down: provisioning, or no record yet.
    done = await store.transition(MAC, State.PROVISIONED, "done_url", "", expect=(None, State.PROVISIONING))
    with pytest.raises(Conflict) as info:
        await store.transition(MAC, State.FAILED, "ignition", "", expect="provisioning")
    assert info.value.current == done
    assert store.view() == {MAC: done}
    failed = await store.transition(MAC, State.FAILED, "ignition", "", expect=[State.PROVISIONED])
    assert store.view()[MAC] == failed
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_forget_keeps_the_history_and_the_view_is_a_snapshot(tmp_path):
    store = await started(tmp_path)
    changes = []
    store.on_change(lambda mac, record: changes.append((mac, record and record.state)))
    await store.transition(MAC, State.FAILED, "ignition", "10.0.0.7", note="disk not found")
    before = store.view()
    await store.transition(OTHER, State.PROVISIONING, "operator bob", "")
    assert set(before) == {MAC}  # what a reader holds does not change under it
    old = await store.forget(MAC, "operator bob", note="decommissioned")
    assert old is not None and old.state is State.FAILED
    assert await store.forget(MAC, "operator bob") is None
    assert set(store.view()) == {OTHER}
    assert [(t.state, t.previous, t.note) for t in await store.history(MAC)] == [
        (None, State.FAILED, "decommissioned"), (State.FAILED, None, "disk not found")]
    assert changes == [(MAC, State.FAILED), (OTHER, State.PROVISIONING), (MAC, None)]
    await store.stop()
    again = await started(tmp_path)
    assert set(again.view()) == {OTHER}
    await again.stop()


@pytest_twisted.ensureDeferred
async def test_bad_input_fails_the_deferred(tmp_path):
    store = await started(tmp_path)
    with pytest.raises(ValueError, match="not a MAC address"):
        await store.transition("nonsense", State.FAILED, "x", "")
    with pytest.raises(ValueError):
        await store.transition(MAC, "installed", "x", "")
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_locked_database_refuses_the_change_and_the_view_stays_true(tmp_path):
    """Another process holds the file's write lock (a backup, sqlite3 by hand): the transition
    errbacks StoreUnavailable, nothing is in the view, the status says why; then it works again."""
    store = await started(tmp_path, busy_timeout=0.3)
    await store.transition(MAC, State.PROVISIONING, "operator alice", "")
    holder = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable, match="database is locked"):
        await store.transition(MAC, State.PROVISIONED, "done_url", "")
    assert store.view()[MAC].state is State.PROVISIONING
    status = store.status()
    assert not status.ok and "database is locked" in status.reason and str(tmp_path / FILE_NAME) in status.reason
    holder.execute("ROLLBACK")
    holder.close()
    done = await store.transition(MAC, State.PROVISIONED, "done_url", "")
    assert store.status().ok and store.view()[MAC] == done
    assert [t.state for t in await store.history(MAC)] == [State.PROVISIONED, State.PROVISIONING]
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_database_answers_503_and_a_late_commit_still_reaches_the_view(tmp_path):
    store = await started(tmp_path, busy_timeout=5.0, operation_timeout=0.3)
    holder = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.0, lambda: (holder.execute("ROLLBACK"), holder.close()))
    release.start()
    with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
        await store.transition(MAC, State.PROVISIONED, "done_url", "")
    assert MAC not in store.view()
    await eventually(lambda: MAC in store.view(), timeout=5)
    assert store.status().ok
    # The installer's retry of that call: the same state, a success.
    assert await store.transition(MAC, State.PROVISIONED, "done_url", "") == store.view()[MAC]
    release.join()
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    path = tmp_path / FILE_NAME
    path.write_bytes(b"this is not what netbootd wrote\n" * 200)
    store = SqliteStore(reactor, tmp_path)
    with pytest.raises(StateStoreError) as info:
        await store.start()
    message = str(info.value)
    assert str(path) in message and "damaged or not an SQLite database" in message
    assert "restore it from a backup" in message.lower() and "provisioned again" in message
    assert not store.status().ok and not store.status().loaded
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_file_from_a_newer_netbootd_is_refused(tmp_path):
    (await started(tmp_path)).stop()
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StateStoreError, match="schema version 99, written by a newer netbootd"):
        await SqliteStore(reactor, tmp_path).start()


@pytest_twisted.ensureDeferred
async def test_a_state_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StateStoreError) as info:
        await SqliteStore(reactor, tmp_path / "file" / "state").start()
    assert str(info.value).startswith(f"cannot create state_dir {tmp_path / 'file' / 'state'}: Not a directory")


UNWRITABLE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from twisted.internet import defer, task
    from netbootd.state.model import StateStoreError
    from netbootd.state.sqlite import SqliteStore

    async def main(reactor):
        store = SqliteStore(reactor, Path(sys.argv[1]))
        try:
            await store.start()
            print("started")
        except StateStoreError as exc:
            print(exc)
        await store.stop()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
""")


@pytest.mark.root  # setpriv to nobody: root can write anywhere
def test_an_unwritable_state_dir_is_a_clear_error(tmp_path):
    """As a user who may not write in state_dir (root may write anywhere: the store runs as nobody
    then, in a directory outside pytest's, whose parents are closed to other users)."""
    as_user: list[str] = []
    with tempfile.TemporaryDirectory(prefix="netbootd-state-") as top:
        state_dir = Path(top) / "state"
        state_dir.mkdir()
        if os.geteuid() == 0:
            Path(top).chmod(0o755)
            as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        else:
            state_dir.chmod(0o555)
        out = subprocess.run([*as_user, sys.executable, "-c", UNWRITABLE, str(state_dir)], capture_output=True,
                             text=True, cwd="/", env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=60)
    assert out.returncode == 0, out.stderr
    path = state_dir / FILE_NAME
    assert out.stdout.startswith(f"cannot open the state database {path}: unable to open database file"), out.stdout
    assert f"make {state_dir} and {path} writable by that user" in out.stdout


def test_records_are_frozen():
    record = Record(MAC, State.PROVISIONED, 1.0, "done_url", "", 1)
    with pytest.raises(AttributeError):
        record.state = State.FAILED  # type: ignore[misc]
