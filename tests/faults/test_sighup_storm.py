"""200 SIGHUPs (each a full reload) while machines fetch scripts and files over HTTP and TFTP:
no request fails, the daemon lives, and the configuration is intact afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

from twisted.internet.task import Clock

from netbootd.config.settings import Settings
from netbootd.service import HUP_COALESCE, Netbootd
from tests.conftest import wait_for
from tests.limits.conftest import http_settings, loopback_client, metric
from tests.limits.test_tftp_limits import _download

MACS = [f"52:54:00:00:01:{n:02x}" for n in range(8)]


def test_sighup_storm_during_traffic(daemon_factory):
    # No rate limits here: each client loops as fast as it can, far beyond any machine's pace.
    d = daemon_factory(tftp=True, extra_settings='root = "tftp"\nrate_limit = 0\n')
    http_settings(d, "rate_limit = 0")
    (d.files / "vmlinuz").write_bytes(os.urandom(200_000))
    (d.root / "tftp").mkdir()
    (d.root / "tftp" / "payload.bin").write_bytes(os.urandom(30_000))
    (d.machines / "profiles" / "worker.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ncmdline = "role={{ role }} host={{ hostname }}"\n[vars]\nrole = "worker"\n'
    )
    for n, mac in enumerate(MACS):
        (d.machines / f"{mac.replace(':', '-')}.toml").write_text(f'profile = "worker"\n[vars]\nhostname = "w{n}"\n')
    (d.machines / "default.toml").write_text("[boot]\nlocal = true\n")
    d.start()
    expected = {mac: d.get(f"/ipxe?mac={mac}&arch=efi64").text for mac in MACS}
    assert all(f"host=w{n}" in expected[mac] for n, mac in enumerate(MACS))
    kernel = (d.files / "vmlinuz").read_bytes()
    payload = (d.root / "tftp" / "payload.bin").read_bytes()
    reloads = metric(d, "netbootd_config_reloads_total", result="ok")

    stop = threading.Event()
    failures: list[str] = []
    done = {"http": 0, "tftp": 0}

    def http_client(n: int) -> None:
        with loopback_client(f"127.0.2.{n + 1}") as client:
            while not stop.is_set():
                mac = MACS[n % len(MACS)]
                try:
                    r = client.get(f"{d.url}/ipxe?mac={mac}&arch=efi64")
                    if r.status_code != 200 or r.text != expected[mac]:
                        failures.append(f"script {mac}: {r.status_code} {r.text[:100]!r}")
                    r = client.get(f"{d.url}/files/vmlinuz")
                    if r.status_code != 200 or r.content != kernel:
                        failures.append(f"kernel: {r.status_code} {len(r.content)}")
                    done["http"] += 2
                except Exception as exc:  # collected: an exception in a thread would be lost
                    failures.append(f"http {exc!r}")

    def tftp_client(n: int) -> None:
        while not stop.is_set():
            try:
                if _download(f"127.0.3.{n + 1}", d.tftp_port, "payload.bin") != payload:
                    failures.append("tftp: wrong content")
                done["tftp"] += 1
            except Exception as exc:
                failures.append(f"tftp {exc!r}")

    threads = [threading.Thread(target=http_client, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=tftp_client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            d.signal(signal.SIGHUP)
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert done["http"] > 0 and done["tftp"] > 0
    assert d.proc.poll() is None, d.log()[-2000:]
    # the reloads happened (signals that arrive together are delivered once) ...
    wait_for(lambda: metric(d, "netbootd_config_reloads_total", result="ok") > reloads, timeout=10)
    # ... and changed nothing
    health = d.get("/healthz").json()
    assert health["status"] == "ok" and health["machines"] == len(MACS) + 1
    assert {mac: d.get(f"/ipxe?mac={mac}&arch=efi64").text for mac in MACS} == expected
    assert metric(d, "netbootd_config_reloads_total", result="errors") == 0
    assert "Traceback" not in d.log()


def test_a_burst_of_sighups_is_one_reload(tmp_path):
    """Each reload blocks the reactor while it reads every file: a storm of 200 SIGHUPs once took
    every request's turn for seconds. Signals close together now make one reload, which still
    starts after the last of them."""
    (tmp_path / "machines").mkdir()
    settings = Settings(machines_dir=tmp_path / "machines", files_root=tmp_path, state_dir=tmp_path / "state")
    clock = Clock()
    daemon = Netbootd(settings, clock)
    reloads = []
    daemon.reload = reloads.append  # count the calls; reload itself is exercised by the daemon test above
    for _ in range(200):
        daemon.sighup()
    assert reloads == []
    clock.advance(HUP_COALESCE)
    assert reloads == ["SIGHUP"]
    daemon.sighup()
    clock.advance(HUP_COALESCE)
    assert reloads == ["SIGHUP", "SIGHUP"]
