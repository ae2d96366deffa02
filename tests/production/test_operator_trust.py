"""What an operator relies on, against a real daemon: a broken file never boots the wrong thing
(held machines get nothing on any port), /healthz and `netbootd status` tell the truth, and a
reload logs what changed, not every outstanding error again.

DHCP uses EDK2's real 4011 REQUEST from ../shared/captures sent from loopback (the MAC rewritten
per test); TFTP uses tftpy's client; HTTP httpx."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
import tftpy

from tests.conftest import wait_for
from tests.helpers import need_capture, request_4011

HELD = "52:54:00:77:00:10"  # the MAC in the capture
GOOD = "52:54:00:77:00:11"
BROKEN = '[boot]\nkernel = "vmlinuz"\ncmdline = "x={{ hostnmae }}"\n'


# each machine asks from an address of its own (as on a real segment)
ADDRESS = {HELD: "127.0.0.2", GOOD: "127.0.0.3"}


def ask_4011(daemon, mac: str, timeout: float = 2.0) -> dpkt.dhcp.DHCP | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ADDRESS.get(mac, "127.0.0.1"), 0))
        s.settimeout(timeout)
        s.sendto(request_4011(mac), ("127.0.0.1", daemon.proxy_port))
        try:
            return dpkt.dhcp.DHCP(s.recvfrom(2048)[0])
        except TimeoutError:
            return None


def netbootd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netbootd", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def site(daemon_factory):
    need_capture()
    if not Path("/usr/lib/ipxe/snponly.efi").exists():
        pytest.skip("Debian's ipxe package is not installed (/usr/lib/ipxe/snponly.efi)")
    d = daemon_factory(dhcp=True, tftp=True, top_settings='advertise = "127.0.0.1"\n')
    (d.files / "vmlinuz").write_bytes(b"k" * 1000)
    # the default is what must never reach a held machine: at a real site, an installer
    (d.machines / "default.toml").write_text('[boot]\nchain = "https://installer.example/wipe-disks.ipxe"\n')
    (d.machines / f"{GOOD.replace(':', '-')}.toml").write_text('[boot]\nkernel = "vmlinuz"\ncmdline = "good"\n')
    return d


def test_held_machine_gets_nothing_anywhere_and_health_says_why(site, tmp_path):
    held_file = site.machines / f"{HELD.replace(':', '-')}.toml"
    held_file.write_text(BROKEN)
    site.start()
    # DHCP: the held machine gets no answer on 4011; the good one does
    assert ask_4011(site, HELD) is None
    good = ask_4011(site, GOOD)
    assert good is not None and good.file.rstrip(b"\0") == b"snponly.efi"
    # TFTP: nothing for the held machine's address (the one DHCP saw it ask from); the good one gets its file
    with pytest.raises(tftpy.TftpException, match="Access violation"):
        tftpy.TftpClient("127.0.0.1", site.tftp_port, localip=ADDRESS[HELD]).download(
            "snponly.efi", str(tmp_path / "x"), timeout=3)
    tftpy.TftpClient("127.0.0.1", site.tftp_port, localip=ADDRESS[GOOD]).download(
        "snponly.efi", str(tmp_path / "y"), timeout=3)
    # HTTP: 404 naming the file and line
    r = site.get(f"/ipxe?mac={HELD}&arch=efi64")
    assert r.status_code == 404 and f"held: {held_file}:3: boot.cmdline: 'hostnmae' is undefined" in r.text
    assert "wipe-disks" not in r.text
    # the timeline
    events = site.ui_get(f"/machines/{HELD}").json()["events"]
    assert any(e["stage"] == "held" and e["error"].startswith(f"{held_file}:3:") for e in events), events
    # /healthz: degraded, with the problems named and the machines they touch
    health = site.get("/healthz").json()
    assert health["status"] == "degraded" and health["held"] == ["52-54-00-77-00-10"]
    kinds = {(p["kind"], tuple(p["machines"])) for p in health["problems"]}
    assert ("held", ("52-54-00-77-00-10",)) in kinds and ("config_error", ("52-54-00-77-00-10",)) in kinds, health
    assert 'netbootd_problems{kind="held"} 1.0' in site.get("/metrics").text
    # explain and status say the same
    out = netbootd("explain", HELD, "--config", str(site.config)).stdout
    assert f"config    HELD: {held_file}:3: boot.cmdline" in out and "never the default" in out
    out = netbootd("status", "--url", site.ui_url).stdout
    assert "netbootd degraded" in out and "held" in out and str(held_file) in out

    # fixing the file: it boots, health is ok again
    before = site.log().count("configuration reloaded")
    held_file.write_text('[boot]\nkernel = "vmlinuz"\ncmdline = "fixed"\n')
    wait_for(lambda: site.log().count("configuration reloaded") > before)
    assert site.get(f"/ipxe?mac={HELD}&arch=efi64").status_code == 200
    assert ask_4011(site, HELD) is not None
    health = site.get("/healthz").json()
    assert health["status"] == "ok" and health["problems"] == [] and 'netbootd_problems{kind="held"} 0.0' in site.get(
        "/metrics").text


def test_restart_with_a_broken_file_keeps_serving_the_last_good_version(site):
    path = site.machines / f"{HELD.replace(':', '-')}.toml"
    path.write_text('[boot]\nkernel = "vmlinuz"\ncmdline = "generation-1"\n')
    site.start()
    assert "generation-1" in site.get(f"/ipxe?mac={HELD}&arch=efi64").text
    site.stop()
    path.write_text(BROKEN)
    site.start()
    assert "generation-1" in site.get(f"/ipxe?mac={HELD}&arch=efi64").text
    problems = site.get("/healthz").json()["problems"]
    assert [p["kind"] for p in problems] == ["config_error"]
    assert "serving the last good version of 52-54-00-77-00-10" in problems[0]["message"]
    out = netbootd("explain", HELD, "--config", str(site.config)).stdout
    assert "this is its last good version" in out and "generation-1" in out


def test_reload_logs_changes_not_every_outstanding_error(site):
    (site.machines / "52-54-00-77-00-12.toml").write_text(BROKEN)
    site.start()
    assert site.log().count("config error") == 1
    for _ in range(3):
        before = site.log().count("configuration reloaded")
        site.signal(signal.SIGHUP)
        wait_for(lambda: site.log().count("configuration reloaded") > before)  # noqa: B023
    assert site.log().count("config error") == 1, site.log()
    # an editor's save: the log names the machine file, not the editor's temp file
    before = site.log().count("configuration reloaded")
    tmp = site.machines / ".52-54-00-77-00-11.toml.swp"
    tmp.write_text('[boot]\nkernel = "vmlinuz"\ncmdline = "edited"\n')
    tmp.rename(site.machines / "52-54-00-77-00-11.toml")
    wait_for(lambda: site.log().count("configuration reloaded") > before)
    line = site.log().splitlines()[-1]
    assert "52-54-00-77-00-11.toml changed" in line and ".swp" not in line, line
    # fixing the broken one: one line says so
    (site.machines / "52-54-00-77-00-12.toml").write_text('[boot]\nlocal = true\n')
    wait_for(lambda: "config error fixed" in site.log())
    assert site.log().count("config error") == 2  # the error, and "config error fixed"


def test_missing_loader_binary_is_a_problem(daemon_factory):
    d = daemon_factory(extra_settings='[ipxe]\nbios = "nosuch.kpxe"\n')
    d.start()
    problems = d.get("/healthz").json()["problems"]
    assert [(p["kind"], p["machines"]) for p in problems] == [("loader_missing", ["every bios machine"])]
    assert "nosuch.kpxe" in problems[0]["what"] and "ipxe.bios" in problems[0]["message"]


def test_unresolvable_image_is_a_problem_naming_its_machines(daemon_factory):
    with socket.socket() as s:  # a port nothing listens on: the registry is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = daemon_factory(extra_settings=f'[registry]\nallowed = ["127.0.0.1:{port}"]\ninsecure = ["127.0.0.1:{port}"]\n')
    for n in (1, 2):
        (d.machines / f"52-54-00-00-00-0{n}.toml").write_text(f'[boot]\nimage = "127.0.0.1:{port}/os/img:v1"\n')
    d.start()

    def problem():
        found = [p for p in d.get("/healthz").json()["problems"] if p["kind"] == "image_unresolved"]
        return found[0] if found else None

    p = wait_for(problem, timeout=20)
    assert p["what"] == f"127.0.0.1:{port}/os/img:v1" and p["machines"] == ["52-54-00-00-00-01", "52-54-00-00-00-02"]
    assert p["message"].startswith("unreachable:")
    line = wait_for(lambda: [x for x in d.log().splitlines() if "image not resolvable" in x])[0]
    assert "machines=52-54-00-00-00-01,52-54-00-00-00-02" in line and "kind=unreachable" in line
    assert "registry.allowed" in line


def test_missing_shim_is_a_problem_for_grub_machines(daemon_factory, tmp_path):
    d = daemon_factory(extra_settings=f'[grub]\nefi64_shim = "{tmp_path}/nosuch-shim.efi"\n')
    (d.machines / "52-54-00-77-00-20.toml").write_text('secure_boot = true\n[boot]\nlocal = true\n')
    d.start()
    problems = [p for p in d.get("/healthz").json()["problems"] if p["kind"] == "loader_missing"]
    assert [(p["what"], p["machines"]) for p in problems] == [(f"{tmp_path}/nosuch-shim.efi", ["52-54-00-77-00-20"])]
    assert "shim-signed" in problems[0]["message"]
