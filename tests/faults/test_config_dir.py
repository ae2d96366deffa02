"""The machines directory removed, replaced or made unreadable under a running daemon: it keeps
serving the last good configuration, /healthz says why, and it comes back when restored."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for

MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02"]


def _configure(d: Daemon) -> None:
    (d.files / "vmlinuz").write_bytes(b"k")
    for n, mac in enumerate(MACS):
        (d.machines / f"{mac.replace(':', '-')}.toml").write_text(
            f'[vars]\nhostname = "node-{n}"\n[boot]\nkernel = "vmlinuz"\ncmdline = "host={{{{ hostname }}}}"\n'
        )
    (d.machines / "default.toml").write_text("[boot]\nlocal = true\n")


def _health(d: Daemon) -> dict:
    return d.get("/healthz").json()


def _scripts(d: Daemon) -> list[str]:
    return [d.get(f"/ipxe?mac={mac}&arch=efi64").text for mac in MACS]


def _assert_serving(d: Daemon, scripts: list[str]) -> None:
    assert _scripts(d) == scripts
    assert d.get("/files/vmlinuz").content == b"k"


def _degraded_with(d: Daemon, words: str):
    def check():
        health = _health(d)
        return health["status"] == "degraded" and any(words in e for e in health["config_errors"]) and health

    return wait_for(check, timeout=10)


def _healthy(d: Daemon, machines: int):
    return wait_for(lambda: (h := _health(d))["status"] == "ok" and h["machines"] == machines and h, timeout=10)


def test_machines_directory_renamed_away_and_back(daemon_factory):
    d = daemon_factory()
    _configure(d)
    d.start()
    good = _scripts(d)
    assert all("host=node-" in s for s in good)
    away = d.root / "machines.moved"

    d.machines.rename(away)
    health = _degraded_with(d, "machines directory does not exist")
    assert health["machines"] == 3  # the last good configuration, still counted
    _assert_serving(d, good)
    d.signal(signal.SIGHUP)  # a reload while it is gone changes nothing
    wait_for(lambda: "configuration reloaded trigger=SIGHUP" in d.log(), timeout=10)
    _assert_serving(d, good)

    # edited while away, then put back: picked up without a signal
    (away / "52-54-00-00-00-03.toml").write_text('[boot]\nchain = "http://x/y"\n')
    away.rename(d.machines)
    _healthy(d, machines=4)
    _assert_serving(d, good)
    assert "http://x/y" in d.get("/ipxe?mac=52:54:00:00:00:03").text
    assert "Traceback" not in d.log()


def test_machines_directory_replaced_by_a_file_then_deleted_then_restored(daemon_factory):
    d = daemon_factory()
    _configure(d)
    d.start()
    good = _scripts(d)
    backup = d.root / "backup"
    shutil.copytree(d.machines, backup)

    shutil.rmtree(d.machines)
    d.machines.write_text("not a directory\n")
    _degraded_with(d, "machines directory unreadable")
    _assert_serving(d, good)

    d.machines.unlink()
    d.signal(signal.SIGHUP)
    _degraded_with(d, "does not exist")
    _assert_serving(d, good)

    shutil.copytree(backup, d.machines)
    _healthy(d, machines=3)
    _assert_serving(d, good)
    assert d.proc.poll() is None
    assert "Traceback" not in d.log()


def test_deleting_a_subdirectory_keeps_hot_reload_working(daemon_factory):
    """Twisted's INotify stops reading after any watched directory is deleted: removing an
    unused profiles/ once made the daemon deaf to every later edit (until a SIGHUP)."""
    d = daemon_factory()
    _configure(d)
    d.start()
    shutil.rmtree(d.machines / "profiles")
    # that deletion seen first, on its own (the bug: no event was read after it)
    wait_for(lambda: 'trigger="directory profiles removed"' in d.log(), timeout=10)
    (d.machines / "52-54-00-00-00-09.toml").write_text('[boot]\nchain = "http://x/new"\n')
    _healthy(d, machines=4)
    (d.machines / "profiles").mkdir()
    (d.machines / "profiles" / "p.toml").write_text("[boot]\nlocal = true\n")
    (d.machines / "52-54-00-00-00-09.toml").write_text('profile = "p"\n')
    wait_for(lambda: d.get("/ipxe?mac=52:54:00:00:00:09").text.rstrip().endswith("exit 1"), timeout=10)
    assert "Unhandled" not in d.log() and "Traceback" not in d.log()


AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def _can_run_as_nobody(path) -> bool:
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", f"import netbootd, os; os.listdir({str(path)!r})"],
        capture_output=True,
    )
    return probe.returncode == 0


class NobodyDaemon(Daemon):
    """The daemon run as `nobody` (setpriv), so that file permissions bind it (root ignores them)."""

    run_as = AS_NOBODY


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_machines_directory_made_unreadable():
    # Not under tmp_path: pytest's temporary directories are private to root.
    base = Path(tempfile.mkdtemp(prefix="netbootd-nobody-"))
    try:
        os.chmod(base, 0o755)
        if not _can_run_as_nobody(base):
            pytest.skip(f"user nobody cannot run {sys.executable} with netbootd or reach {base}")
        d = NobodyDaemon(base / "d")
        _configure(d)
        for root, dirs, files in os.walk(d.root):
            for name in [*dirs, *files, "."]:
                os.chown(os.path.join(root, name), 65534, 65534)
        d.start()
        try:
            good = _scripts(d)
            os.chmod(d.machines, 0)
            _degraded_with(d, "machines directory unreadable")
            _assert_serving(d, good)
            os.chmod(d.machines, 0o755)
            _healthy(d, machines=3)
            _assert_serving(d, good)
            assert "Traceback" not in d.log()
        finally:
            os.chmod(d.machines, 0o755)
            d.stop()
    finally:
        shutil.rmtree(base)
