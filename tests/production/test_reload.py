"""`systemctl reload` (SIGHUP) rereads netbootd.toml: a real daemon, real signals, real DHCP
answers on loopback (EDK2's captured REQUEST to 4011) and its log. Live settings apply at once and
the reload line names them; settings that need a restart keep their running value and are named;
a broken file changes nothing and says where it is broken. `check --diff-running` tells beforehand."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import dpkt
import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.helpers import need_capture, request_4011

KNOWN = "52:54:00:77:25:01"


@pytest.fixture
def daemon(daemon_factory):
    need_capture()
    d = daemon_factory(top_settings='advertise = "10.25.0.1"\n', dhcp=True,
                       extra_settings='[log]\nlevel = "info"\n')
    (d.machines / f"{KNOWN.replace(':', '-')}.toml").write_text('[boot]\nchain = "http://boot.example/x.ipxe"\n')
    return d.start()


def _answer(daemon, mac: str) -> dpkt.dhcp.DHCP | None:
    """The daemon's answer on 4011 to EDK2's REQUEST from `mac`, None when it stays silent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind(("127.0.0.1", 0))
        s.sendto(request_4011(mac), ("127.0.0.1", daemon.proxy_port))
        try:
            return dpkt.dhcp.DHCP(s.recvfrom(2048)[0])
        except TimeoutError:
            return None


def _release(daemon, mac: str) -> None:
    """The same REQUEST made a DHCPRELEASE: 4011 does not answer one, and says so at debug level only."""
    packet = dpkt.dhcp.DHCP(request_4011(mac))
    packet.opts = [(code, bytes([dpkt.dhcp.DHCPRELEASE]) if code == dpkt.dhcp.DHCP_OPT_MSGTYPE else data)
                   for code, data in packet.opts]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(bytes(packet), ("127.0.0.1", daemon.proxy_port))


def _siaddr(reply: dpkt.dhcp.DHCP) -> str:
    return socket.inet_ntoa(reply.siaddr.to_bytes(4, "big"))


def _edit(daemon, old: str, new: str) -> None:
    text = daemon.config.read_text()
    assert old in text, text
    daemon.config.write_text(text.replace(old, new, 1))


def _reload(daemon) -> str:
    """SIGHUP, then the daemon's log from that reload on, once its reload line is written."""
    start = len(daemon.log())
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log()[start:], timeout=20)
    return daemon.log()[start:]


def _diff_running(daemon) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netbootd", "check", "--diff-running", "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=60)


def test_live_settings_apply_on_sighup_and_the_reload_names_them(daemon):
    assert _siaddr(_answer(daemon, KNOWN)) == "10.25.0.1"
    _release(daemon, KNOWN)
    assert _answer(daemon, KNOWN) is not None  # answered after the release: the release was read
    assert "not answered: msgtype" not in daemon.log()  # logged at debug only, so not at info
    assert _diff_running(daemon).returncode == 0

    _edit(daemon, 'advertise = "10.25.0.1"', 'advertise = "10.25.0.2"')
    _edit(daemon, 'level = "info"', 'level = "debug"')
    diff = _diff_running(daemon)  # what a reload would do, before it is done
    assert diff.returncode == 1, diff
    assert "reload   advertise: '10.25.0.1' → '10.25.0.2'" in diff.stdout, diff.stdout
    assert "reload   log.level: 'info' → 'debug'" in diff.stdout
    assert "2 setting(s) a reload" in diff.stdout and "0 that need a restart" in diff.stdout

    log = _reload(daemon)
    assert re.search(r"configuration reloaded trigger=SIGHUP .*changed=\"?advertise,log\.level", log), log
    assert "needs a restart" not in log and "need a restart" not in log
    assert "dashboard credentials reloaded" not in log  # no ui.auth_file: nothing was reloaded
    # the new address is in the daemon's next real answer, and debug lines now reach the log
    assert _siaddr(_answer(daemon, KNOWN)) == "10.25.0.2"
    _release(daemon, KNOWN)
    wait_for(lambda: re.search(rf" debug dhcp not answered: msgtype .*mac={KNOWN}", daemon.log()), timeout=10)
    assert _diff_running(daemon).returncode == 0
    settings = httpx.get(daemon.ui_url + "/api/settings", timeout=10).json()
    assert settings["settings"]["advertise"] == "10.25.0.2" and settings["needs_restart"] == {}


def test_a_port_change_waits_for_a_restart_and_the_old_port_keeps_answering(daemon):
    new_port = free_port()
    _edit(daemon, f"port = {daemon.http_port}", f"port = {new_port}")
    _edit(daemon, 'advertise = "10.25.0.1"', 'advertise = "10.25.0.3"')
    diff = _diff_running(daemon)
    assert f"restart  http.port: {daemon.http_port} → {new_port}" in diff.stdout, diff.stdout
    assert "1 setting(s) a reload" in diff.stdout and "1 that need a restart" in diff.stdout

    log = _reload(daemon)
    assert re.search(r"warn service settings changed that need a restart.* needs_restart=http\.port", log), log
    assert re.search(r"configuration reloaded .*changed=advertise$", log, re.M), log  # applied: only the live one
    assert daemon.get("/healthz").status_code == 200  # the old port serves on
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{new_port}/healthz", timeout=2)
    assert _siaddr(_answer(daemon, KNOWN)) == "10.25.0.3"
    running = httpx.get(daemon.ui_url + "/api/settings", timeout=10).json()
    assert running["settings"]["http.port"] == daemon.http_port and running["needs_restart"] == {"http.port": new_port}
    assert _diff_running(daemon).stdout.count("\n  ") == 1  # the port only: the rest is applied


def test_a_broken_settings_file_changes_nothing_and_says_where(daemon):
    _edit(daemon, 'advertise = "10.25.0.1"', 'advertise = "10.25.0.4"')
    _edit(daemon, 'level = "info"', 'level = "loud"')
    line = daemon.config.read_text().splitlines().index('level = "loud"') + 1
    log = _reload(daemon)
    assert re.search(rf"error service settings file has errors: nothing changed, the running settings stay "
                     rf"file={re.escape(str(daemon.config))} line={line} key=log.level", log), log
    assert "changed=nothing" in log
    assert _siaddr(_answer(daemon, KNOWN)) == "10.25.0.1"  # the valid advertise line was not applied either
    # not TOML at all: the same, with the line
    daemon.config.write_text(daemon.config.read_text().replace('level = "loud"', 'level = "debug'))
    log = _reload(daemon)
    assert re.search(rf"settings file has errors.* file={re.escape(str(daemon.config))} line={line} ", log), log
    assert daemon.proc.poll() is None and _siaddr(_answer(daemon, KNOWN)) == "10.25.0.1"
    out = _diff_running(daemon)
    assert out.returncode == 1 and f"{daemon.config}:{line}" in out.stdout


def test_a_new_loader_binary_is_offered_after_a_reload(daemon):
    """[ipxe] is live: the loaders are made again from the reread settings, and the next real answer
    offers the new binary (the file need not exist for the offer: the firmware asks for it next)."""
    assert _answer(daemon, KNOWN).file.rstrip(b"\0") == b"snponly.efi"
    _edit(daemon, '[log]\n', '[ipxe]\nefi64 = "ipxe.efi"\n[log]\n')
    log = _reload(daemon)
    assert re.search(r"changed=ipxe\.efi64$", log, re.M), log
    assert _answer(daemon, KNOWN).file.rstrip(b"\0") == b"ipxe.efi"


def test_a_new_http_rate_limit_applies_after_a_reload(daemon):
    assert all(daemon.get("/ipxe").status_code == 200 for _ in range(10))  # 50/s, burst 200: no 429
    _edit(daemon, "[ui]\n", "rate_limit = 0.1\nrate_burst = 2\n[ui]\n")  # the end of [http]
    log = _reload(daemon)
    assert re.search(r"changed=\"?http\.rate_limit,http\.rate_burst", log), log
    codes = [daemon.get("/ipxe").status_code for _ in range(5)]
    assert codes[:2] == [200, 200] and 429 in codes[2:], codes
