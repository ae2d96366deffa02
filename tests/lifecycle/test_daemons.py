"""The lifecycle through real daemons: signed callbacks over HTTP, state kept across restarts
(SQLite), shared by two netbootd (PostgreSQL, Debian's server started by the test), and what each
fault does: PostgreSQL stopped mid-run, wrong credentials, a corrupt SQLite file, forged URLs, a
flood of callbacks while DHCP keeps answering."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import wait_for
from tests.helpers import need_capture, request_4011

ONCE = "52:54:00:42:00:01"
OTHER = "52:54:00:42:00:02"
IGNORED = "52:54:00:42:00:03"
MACHINE = """
[lifecycle]
once = true
[boot]
kernel = "vmlinuz"
cmdline = 'nbd_done={{ done_url }} nbd_failed={{ failed_url }}'
"""


def setup(d) -> None:
    (d.files / "vmlinuz").write_bytes(b"k")
    for mac in (ONCE, OTHER):
        (d.machines / f"{mac.replace(':', '-')}.toml").write_text(MACHINE)
    (d.machines / f"{IGNORED.replace(':', '-')}.toml").write_text("[boot]\nignore = true\n")


def script(d, mac: str) -> str:
    r = d.get(f"/ipxe?mac={mac}&arch=efi64")
    return r.text if r.status_code == 200 else f"HTTP {r.status_code}: {r.text}"


def installing(d, mac: str) -> bool:
    return "kernel --name kernel" in script(d, mac)


def local(d, mac: str) -> bool:
    return "booting from local disk" in script(d, mac)


def callback_url(d, mac: str, outcome: str) -> str:
    word = next(w for w in script(d, mac).split() if w.startswith(f"nbd_{outcome}="))
    return word.split("=", 1)[1]


def state_of(d, mac: str) -> str:
    rows = httpx.get(d.ui_url + "/api/lifecycle", timeout=10).json()["machines"]
    return next((r["state"] for r in rows if r["mac"] == mac), "")


def test_sqlite_state_survives_a_restart_and_forged_urls_change_nothing(daemon_factory):
    d = daemon_factory()
    setup(d)
    d.start()
    done = callback_url(d, ONCE, "done")
    # forged, expired, other machine's and unknown machines' URLs: 403, nothing stored
    q = {k: v[0] for k, v in parse_qs(urlsplit(done).query).items()}
    base = f"{d.url}/lifecycle/done"
    for bad in ({**q, "sig": q["sig"][:-3] + "abc"}, {**q, "exp": "1000"}, {**q, "mac": OTHER.replace(":", "-")},
                {**q, "mac": "52-54-00-42-00-99"}):
        assert httpx.get(base, params=bad, timeout=10).status_code == 403
    assert httpx.post(callback_url(d, OTHER, "done").replace("/done?", "/nonsense?"), timeout=10).status_code in (403, 404)
    assert state_of(d, ONCE) == "provisioning" and installing(d, ONCE)
    # the real one, by POST with a body (a kickstart %post): stored, then answered
    r = httpx.post(done, data={"status": "done"}, timeout=10)
    assert r.status_code == 200 and "provisioned" in r.text, r.text
    assert local(d, ONCE) and installing(d, OTHER)
    assert httpx.get(done, timeout=10).status_code == 200  # again: idempotent
    events = d.ui_get(f"/machines/{ONCE}").json()["events"]
    assert [e["by"] for e in events if e["stage"] == "lifecycle"] == ["done_url"]
    d.stop()
    d.start()  # the same state_dir: SQLite kept it
    assert local(d, ONCE) and installing(d, OTHER)
    assert "lifecycle" in d.get("/healthz").json() and d.get("/healthz").json()["lifecycle"]["states"]["provisioned"] == 1
    status = subprocess.run([sys.executable, "-m", "netbootd", "status", "--url", d.ui_url], capture_output=True, text=True,
                            timeout=60)
    assert "provision once: 1 provisioning, 1 provisioned" in status.stdout, status.stdout + status.stderr
    explain = subprocess.run([sys.executable, "-m", "netbootd", "explain", ONCE, "--config", str(d.config)],
                             capture_output=True, text=True, timeout=60, cwd=d.root)
    assert "lifecycle once: provisioned" in explain.stdout and "by done_url" in explain.stdout, explain.stdout


def test_callbacks_for_ignored_machines_and_machines_without_a_lifecycle(daemon_factory, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    d = daemon_factory()
    d.config.write_text(d.config.read_text().replace("[http]\n", f'[http]\nsigning_key_file = "{key}"\n', 1))
    setup(d)
    (d.machines / "52-54-00-42-00-04.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    d.start()
    from netbootd.core.signing import UrlSigner

    signer = UrlSigner(key.read_bytes(), 600)
    for mac, status in ((IGNORED, 404), ("52:54:00:42:00:04", 409), ("52:54:00:42:00:99", 404)):
        exp, sig = signer.sign("done", mac)
        r = httpx.get(f"{d.url}/lifecycle/done", params={"mac": mac, "exp": exp, "sig": sig}, timeout=10)
        assert r.status_code == status, (mac, r.status_code, r.text)


def test_a_flood_of_callbacks_is_limited_and_dhcp_keeps_answering(daemon_factory):
    need_capture()
    d = daemon_factory(dhcp=True, top_settings='advertise = "127.0.0.1"\n')
    setup(d)
    d.start()
    done = callback_url(d, ONCE, "done")
    forged = done.replace("sig=", "sig=0")
    codes: list[int] = []

    def flood() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(600):
                codes.append(client.get(forged).status_code)

    t = threading.Thread(target=flood)
    t.start()
    import socket

    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        for _ in range(20):
            s.sendto(request_4011(ONCE), ("127.0.0.1", d.proxy_port))
            try:
                s.recvfrom(2048)
                answered += 1
            except TimeoutError:
                pass
    t.join()
    assert answered == 20, f"DHCP answered {answered} of 20 during the flood"
    assert 429 in codes and set(codes) <= {403, 429}, sorted(set(codes))
    assert state_of(d, ONCE) == "provisioning"


def test_a_corrupt_sqlite_file_stops_the_daemon_naming_it(daemon_factory):
    d = daemon_factory()
    setup(d)
    (d.root / "state").mkdir()
    (d.root / "state" / "state.sqlite3").write_bytes(b"this is not a database" * 100)
    proc = subprocess.run([sys.executable, "-m", "netbootd", "serve", "--config", str(d.config)], cwd=d.root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "state.sqlite3" in proc.stderr and "state store" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------ PostgreSQL, two daemons


def shared(daemon_factory, postgres, database: str, password_file=None):
    pw = password_file or postgres.password_file
    settings = f'[state]\nurl = "{postgres.url(database)}"\npassword_file = "{pw}"\n'
    pair = []
    for _ in range(2):
        d = daemon_factory(extra_settings=settings)
        setup(d)
        pair.append(d)
    # one signing key for both (an HA pair): a URL either hands out works on the other
    key = pair[0].root / "signing.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    for d in pair:
        d.config.write_text(d.config.read_text().replace("[http]\n", f'[http]\nsigning_key_file = "{key}"\n', 1))
    return pair


@pytest.mark.postgres
def test_two_netbootd_share_the_state_through_postgresql(daemon_factory, postgres):
    a, b = shared(daemon_factory, postgres, postgres.database())
    a.start()
    b.start()
    assert installing(a, ONCE) and installing(b, ONCE)
    done = callback_url(a, ONCE, "done")
    assert httpx.get(done, timeout=10).status_code == 200
    began = time.monotonic()
    wait_for(lambda: local(b, ONCE), timeout=5)
    delay = time.monotonic() - began
    print(f"\nB answered {ONCE} with its local boot {delay * 1000:.0f} ms after A stored done")
    events = b.ui_get(f"/machines/{ONCE}").json()["events"]
    assert any(e["stage"] == "lifecycle" and e["state"] == "provisioned" for e in events)

    # PostgreSQL stops mid-run: nothing reinstalls, reports are refused (503), nothing stored is lost
    other_done = callback_url(b, OTHER, "done")
    postgres.server.stop()
    try:
        wait_for(lambda: b.get("/healthz").json()["lifecycle"]["store"]["ok"] is False, timeout=15)
        for d in (a, b):
            assert local(d, ONCE), "a provisioned machine was offered its installer while the store was down"
            assert installing(d, OTHER)  # its last known state
            kinds = [p["kind"] for p in d.get("/healthz").json()["problems"]]
            assert "state_store" in kinds
        r = httpx.get(other_done, timeout=30)
        assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.text)
    finally:
        postgres.server.start()
    for d in (a, b):
        wait_for(lambda d=d: d.get("/healthz").json()["lifecycle"]["store"]["ok"], timeout=40)
    assert httpx.get(other_done, timeout=10).status_code == 200  # the installer's retry
    wait_for(lambda: local(a, OTHER) and local(b, OTHER), timeout=5)
    assert local(a, ONCE) and local(b, ONCE)
    # the operator reprovisions through B; A installs it again
    r = httpx.post(b.ui_url + "/api/lifecycle", json={"action": "reprovision", "macs": [ONCE]}, timeout=10)
    assert r.status_code == 200 and r.json()["changed"] == [{"mac": ONCE, "state": "provisioning"}]
    wait_for(lambda: installing(a, ONCE), timeout=5)


@pytest.mark.postgres
def test_wrong_postgresql_credentials_refuse_to_start(daemon_factory, postgres, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    d, _ = shared(daemon_factory, postgres, postgres.database(), wrong)
    proc = subprocess.run([sys.executable, "-m", "netbootd", "serve", "--config", str(d.config)], cwd=d.root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "state.password_file" in proc.stderr, proc.stderr
    assert not any(p.name == "state.sqlite3" for p in d.root.rglob("*"))  # no silent fallback to SQLite
