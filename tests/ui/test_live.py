"""The dashboard's server side against a real daemon: the live stream's coalescing and its bound on
a client that does not read, the management listener (auth, Host check, /metrics, bind errors,
off), and the assets shipped by a non-editable install."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from netbootd.ui.auth import hash_password
from tests.conftest import REPO, free_port, wait_for
from tests.ui.machines import ScriptedMachine, need_captures

ASSETS = {"index.html", "machine.html", "health.html", "common.js", "fleet.js", "machine.js", "health.js", "app.css"}


def ui_setting(daemon, line: str) -> None:
    """A line in the test daemon's [ui] table (tests/conftest.py writes it before [dhcp])."""
    listen = f'listen = "127.0.0.1:{daemon.ui_port}"\n'
    daemon.config.write_text(daemon.config.read_text().replace(listen, listen + line + "\n"))


def macs(n: int, base: int = 0) -> list[str]:
    return [f"52:54:00:78:{(base + i) >> 8:02x}:{(base + i) & 0xFF:02x}" for i in range(n)]


def events_from(raw: bytes) -> list[tuple[str, dict]]:
    """Complete Server-Sent Events in `raw` (comments and retry lines skipped)."""
    out = []
    for block in raw.split(b"\n\n"):
        lines = block.decode().splitlines()
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if name and data is not None:
            try:
                out.append((name, json.loads(data)))
            except ValueError:
                break  # the last, incomplete one
    return out


class RawStream:
    """GET /api/events over a plain socket, read only when the test says so."""

    def __init__(self, daemon, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", daemon.ui_port))
        self.sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.raw = b""

    def read_for(self, seconds: float) -> None:
        self.sock.settimeout(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                break
            self.raw += chunk

    def events(self) -> list[tuple[str, dict]]:
        body = self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""
        # chunked transfer encoding: drop the chunk-size lines
        text = re.sub(rb"\r\n[0-9a-f]+\r\n", b"", b"\r\n" + body)
        return events_from(text)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def site(daemon_factory):
    need_captures()
    d = daemon_factory(dhcp=True, tftp=True, top_settings='advertise = "127.0.0.1"\n')
    (d.machines / "default.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    (d.files / "vmlinuz").write_bytes(b"k" * 1000)
    return d


def test_a_storm_of_events_reaches_the_dashboard_in_few_coalesced_diffs(site):
    daemon = site.start()
    stream = RawStream(daemon)
    stream.read_for(0.5)
    assert [name for name, _ in stream.events()] == ["snapshot"]
    burst = macs(400)
    for mac in burst:  # 400 machines' DHCP, as fast as this client can send them
        ScriptedMachine(daemon, mac, "127.0.0.2").dhcp()

    def all_seen():
        stream.read_for(0.3)
        seen = {row["mac"] for name, doc in stream.events() if name == "diff" for row in doc["rows"]}
        return seen >= set(burst)

    wait_for(all_seen, timeout=20)
    diffs = [doc for name, doc in stream.events() if name == "diff"]
    # one message per tick for the whole fleet, not one per event: far fewer diffs than events
    assert len(diffs) * 10 <= len(burst), len(diffs)
    rows = {row["mac"]: row for doc in diffs for row in doc["rows"]}
    assert rows[burst[0]]["stage"] == "dhcp" and rows[burst[0]]["unknown"] is True
    assert rows[burst[0]]["firmware"] == "efi-pxe"
    stream.close()


def test_a_client_that_stops_reading_is_resynced_not_buffered(site):
    """A dashboard that stops reading (a laptop lid closed, a stuck proxy) must not make netbootd
    buffer every diff for it: once its connection's buffers are full, diffs for it are dropped,
    and when it reads again it gets one fresh snapshot with everything it missed."""
    daemon = site.start()
    stream = RawStream(daemon, rcvbuf=4096)
    stream.read_for(0.5)
    assert [name for name, _ in stream.events()] == ["snapshot"]
    rounds = 6
    burst = macs(2000)
    for _ in range(rounds):  # every round changes every row (its last event, its event count) ...
        for mac in burst:
            ScriptedMachine(daemon, mac, "127.0.0.2").dhcp()
        time.sleep(1.5)  # ... and has its own diffs (ticks are spaced out after a costly one)
    time.sleep(1)  # a few ticks for the last round, while the client still reads nothing

    def final_rows() -> dict:
        """Every row as the client knows it now: the resync snapshot, then the diffs after it."""
        names = [name for name, _ in stream.events()]
        if names.count("snapshot") < 2:
            return {}
        events = stream.events()
        rows = {row["mac"]: row for row in events[names.index("snapshot", 1)][1]["machines"]}
        for name, doc in events[names.index("snapshot", 1) + 1:]:
            if name == "diff":
                rows.update({row["mac"]: row for row in doc["rows"]})
        return rows

    def caught_up() -> bool:
        # it reads again until it has caught up: the server spaces its ticks out after costly ones
        # (netbootd.ui.live.MAX_DUTY), so how long the last diffs take depends on the machine's load
        stream.read_for(0.5)
        rows = final_rows()
        return all(rows.get(mac, {}).get("events") == rounds for mac in burst)

    wait_for(caught_up, timeout=60, interval=0)
    events = stream.events()
    names = [name for name, _ in events]
    assert names.count("snapshot") >= 2, names[:20]  # the first, then a resync
    resync = names.index("snapshot", 1)
    final = {row["mac"]: row for row in events[resync][1]["machines"]}
    for name, doc in events[resync + 1:]:
        if name == "diff":
            final.update({row["mac"]: row for row in doc["rows"]})
    assert all(final[mac]["events"] == rounds for mac in burst)  # nothing missed in the end
    # what it was sent: far less than every round's diffs (at least two rounds' worth were dropped)
    round_bytes = len(json.dumps([final[mac] for mac in burst]))
    written = sum(len(json.dumps(doc)) for _, doc in events)
    assert written < (rounds - 2) * round_bytes, (written, round_bytes)
    stream.close()


def test_auth_file_basic_and_bearer(daemon_factory, tmp_path):
    auth = tmp_path / "ui-auth"
    auth.write_text(f"# operators\nalice:s3cret-pass\nbob:{hash_password('hunter22', iterations=1000)}\n")
    auth.chmod(0o600)
    d = daemon_factory()
    ui_setting(d, f'auth_file = "{auth}"')
    d.start()
    r = httpx.get(d.ui_url + "/api/fleet")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic realm=")
    assert httpx.get(d.ui_url + "/", auth=("alice", "wrong")).status_code == 401
    assert httpx.get(d.ui_url + "/", auth=("mallory", "s3cret-pass")).status_code == 401
    assert httpx.get(d.ui_url + "/", auth=("alice", "s3cret-pass")).status_code == 200
    assert httpx.get(d.ui_url + "/api/fleet", auth=("bob", "hunter22")).json()["machines"] == []
    assert httpx.get(d.ui_url + "/metrics", auth=("bob", "hunter22")).status_code == 200
    assert httpx.get(d.ui_url + "/metrics").status_code == 401
    # with credentials, a name in Host is fine (behind a reverse proxy)
    assert httpx.get(d.ui_url + "/", auth=("alice", "s3cret-pass"), headers={"host": "boot-ui.example"}).status_code == 200
    # a token file instead, read again on SIGHUP: the users are gone, the token works
    token = base64.b64encode(os.urandom(24)).decode()
    auth.write_text(token + "\n")
    d.signal(__import__("signal").SIGHUP)
    wait_for(lambda: httpx.get(d.ui_url + "/", headers={"authorization": f"Bearer {token}"}).status_code == 200,
             timeout=10)
    assert "dashboard credentials reloaded" in d.log()
    r = httpx.get(d.ui_url + "/", auth=("alice", "s3cret-pass"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer realm=")
    assert httpx.get(d.ui_url + "/", headers={"authorization": "Bearer " + "x" * 32}).status_code == 401
    assert "s3cret" not in d.log() and token not in d.log()


def test_auth_file_readable_by_others_is_refused_at_start(daemon_factory, tmp_path):
    auth = tmp_path / "ui-auth"
    auth.write_text("alice:s3cret-pass\n")
    auth.chmod(0o644)
    d = daemon_factory()
    ui_setting(d, f'auth_file = "{auth}"')
    out = subprocess.run([sys.executable, "-m", "netbootd", "serve", "--config", str(d.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2  # the settings file is wrong: named with its line
    assert re.search(r"netbootd.toml:\d+: ui.auth_file: ", out.stderr), out.stderr
    assert f"ui.auth_file {auth} is readable by other users (mode 0644)" in out.stderr
    assert f"chmod 600 {auth}" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_without_auth_only_addresses_in_host(site):
    """No credentials: a page on another site that makes its own name resolve to 127.0.0.1 (DNS
    rebinding) must not read the dashboard from the operator's browser."""
    daemon = site.start()
    assert httpx.get(daemon.ui_url + "/api/fleet").status_code == 200
    assert httpx.get(daemon.ui_url + "/", headers={"host": f"localhost:{daemon.ui_port}"}).status_code == 200
    r = httpx.get(daemon.ui_url + "/api/fleet", headers={"host": "attacker.example"})
    assert r.status_code == 421 and "ui.auth_file" in r.text
    r = httpx.get(daemon.ui_url + "/")
    assert "default-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"


def test_metrics_on_the_management_listener_and_the_old_path_behind_a_setting(daemon_factory):
    kept = daemon_factory().start()
    assert "netbootd_problems" in httpx.get(kept.ui_url + "/metrics").text
    assert httpx.get(kept.url + "/metrics").status_code == 200  # this release: still there by default
    moved = daemon_factory()
    ui_setting(moved, "metrics_on_http_port = false")
    moved.start()
    r = httpx.get(moved.url + "/metrics")
    assert r.status_code == 404 and f"http://127.0.0.1:{moved.ui_port}/metrics" in r.text
    assert httpx.get(moved.ui_url + "/metrics").status_code == 200


def test_the_boot_port_serves_no_dashboard(site):
    daemon = site.start()
    for path in ("/api/fleet", "/api/events", "/static/fleet.js", "/health"):
        assert httpx.get(daemon.url + path).status_code == 404, path


def test_dashboard_off(daemon_factory):
    d = daemon_factory()
    d.config.write_text(d.config.read_text().replace(f'listen = "127.0.0.1:{d.ui_port}"', 'listen = ""'))
    d.start()
    with pytest.raises(httpx.ConnectError):
        httpx.get(d.ui_url + "/")
    assert httpx.get(d.url + "/metrics").status_code == 200
    assert "ui=off" in d.log()


def test_bind_errors_say_what_to_do(daemon_factory):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        # exit 1: cannot start; exit 2: the settings file is wrong (named with its line, as `check` does)
        for listen, says, code in ((f"127.0.0.1:{port}", f"cannot bind TCP port {port}: another program holds it", 1),
                                   (f"192.0.2.77:{free_port()}", "the listen address is not on this host (check ui.listen", 1),
                                   ("localhost", 'expected HOST:PORT such as "127.0.0.1:9180"', 2),
                                   ("ui.example:9180", "is not an IP address", 2)):
            d = daemon_factory()
            d.config.write_text(d.config.read_text().replace(f'listen = "127.0.0.1:{d.ui_port}"', f'listen = "{listen}"'))
            out = subprocess.run([sys.executable, "-m", "netbootd", "serve", "--config", str(d.config)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == code, out.stderr
            assert says in out.stderr, out.stderr
            assert "ui.listen" in out.stderr, out.stderr
    finally:
        holder.close()


def test_a_non_editable_install_ships_the_pages(tmp_path):
    """`pip install .` (a wheel, not the checkout): the assets are in it, and load from it."""
    wheels = tmp_path / "wheels"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                          "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next(wheels.glob("netbootd-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"netbootd/ui/static/{name}" for name in ASSETS} <= names, sorted(n for n in names if "/ui/" in n)
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    probe = ("import json, netbootd.ui.app as a; assert 'site' in a.__file__, a.__file__; "
             "print(json.dumps(sorted(a.load_static())))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) == ASSETS
    # and nothing references anything off the host: no CDN, no external URL in what a browser loads
    for name in ASSETS:
        text = (Path(REPO) / "netbootd" / "ui" / "static" / name).read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "http://" not in text and "https://" not in text, name


def test_check_names_a_bad_listen_and_auth_file(daemon_factory, tmp_path):
    """`netbootd check` (a CI pipeline's gate) catches what `serve` would refuse, with file, line and key."""
    auth = tmp_path / "ui-auth"
    auth.write_text("alice:s3cret-pass\n")
    auth.chmod(0o644)
    d = daemon_factory()
    ui_setting(d, f'auth_file = "{auth}"')
    d.config.write_text(d.config.read_text().replace(f'listen = "127.0.0.1:{d.ui_port}"', 'listen = "localhost"'))
    out = subprocess.run([sys.executable, "-m", "netbootd", "check", "--config", str(d.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout
    text = out.stdout + out.stderr
    assert re.search(rf"{re.escape(str(d.config))}:\d+: ui\.listen.*expected HOST:PORT", text), text
    # the auth file is only read when the dashboard is on
    d.config.write_text(d.config.read_text().replace('listen = "localhost"', f'listen = "127.0.0.1:{d.ui_port}"'))
    out = subprocess.run([sys.executable, "-m", "netbootd", "check", "--config", str(d.config)],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and re.search(r":\d+: ui\.auth_file.*readable by other users", text), text
    assert "s3cret" not in text


def test_explain_says_when_its_server_address_is_only_an_example(daemon_factory):
    """Without `advertise` a machine is sent the address its request reached, which the dashboard
    cannot know: its explain text uses a documentation address and says so; with it, no note."""
    plain = daemon_factory()
    (plain.files / "vmlinuz").write_bytes(b"k")
    (plain.machines / "52-54-00-78-00-01.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    plain.start()
    doc = httpx.get(plain.ui_url + "/api/machine/52-54-00-78-00-01").json()
    assert "advertise is not set" in doc["server_note"] and "192.0.2.1" in doc["server_note"]
    assert any("192.0.2.1" in line for lines in doc["explain"].values() for line in lines)
    advertised = daemon_factory(top_settings='advertise = "127.0.0.1"\n')
    (advertised.files / "vmlinuz").write_bytes(b"k")
    (advertised.machines / "52-54-00-78-00-01.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    advertised.start()
    doc = httpx.get(advertised.ui_url + "/api/machine/52-54-00-78-00-01").json()
    assert doc["server_note"] == ""
    assert not any("192.0.2.1" in line for lines in doc["explain"].values() for line in lines)
