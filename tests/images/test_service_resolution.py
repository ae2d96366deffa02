"""The daemon resolves configured images in the background: HTTP-boot firmware is then offered the
image's UKI layer, and `netbootd check --resolve` shows each machine's layers."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import wait_for
from tests.images.conftest import registry_settings


def test_check_resolve(registry, tmp_path):
    reg, _ = registry
    conf = tmp_path / "conf"
    (conf / "machines").mkdir(parents=True)
    (conf / "files").mkdir()
    (conf / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\n' + registry_settings(reg.host))
    (conf / "machines" / "52-54-00-00-00-01.toml").write_text(f'[boot]\nimage = "{reg.host}/boot/nosquash:v1"\n')
    (conf / "machines" / "52-54-00-00-00-02.toml").write_text(f'[boot]\nimage = "{reg.host}/boot/uki:v1"\n')
    out = subprocess.run([sys.executable, "-m", "netbootd", "check", str(conf), "--resolve"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "52-54-00-00-00-01: " in out.stdout and "kernel sha256:" in out.stdout and "initramfs" in out.stdout
    assert "52-54-00-00-00-02: " in out.stdout and "uki sha256:" in out.stdout
    (conf / "machines" / "52-54-00-00-00-03.toml").write_text(f'[boot]\nimage = "{reg.host}/boot/nosuch:v1"\n')
    out = subprocess.run([sys.executable, "-m", "netbootd", "check", str(conf), "--resolve"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "52-54-00-00-00-03: " in out.stdout and "ERROR" in out.stdout


def test_daemon_offers_the_uki_and_drops_missing_squashfs(registry, daemon_factory):
    reg, _ = registry
    d = daemon_factory(extra_settings=registry_settings(reg.host))
    (d.machines / "52-54-00-00-00-01.toml").write_text(
        f'[boot]\nimage = "{reg.host}/boot/nosquash:v1"\ncmdline = "root=live:{{{{ squashfs_url }}}} x=1"\n'
    )
    (d.machines / "52-54-00-00-00-02.toml").write_text(f'[boot]\nimage = "{reg.host}/boot/uki:v1"\n')
    d.start()
    wait_for(lambda: "image resolved" in d.log() and d.log().count("image resolved") >= 2, timeout=20)
    script = d.get("/ipxe/52-54-00-00-00-01").text
    assert "root=live: x=1" in script  # the image has no squashfs layer
    script = d.get("/ipxe?mac=52-54-00-00-00-02&arch=efi64").text
    assert "chain --autofree" in script and "image.uki" in script
    r = d.get("/httpboot", headers={"X-Forwarded-For": "52:54:00:00:00:02"})
    assert r.status_code == 200 and "layerName=application%2Fvnd.ironcore.image.uki" in r.json()["UKIURL"]
    uki = d.get(r.json()["UKIURL"].split(str(d.http_port), 1)[1])
    assert uki.status_code == 200 and uki.content[:2] == b"MZ"


def test_registry_that_comes_up_later_is_picked_up(fresh_registry, daemon_factory):
    """netbootd started while the registry is down learns the image's layers once it is back:
    from its own retries (5 s backoff), and from any /image request that resolves it."""
    from tests.images import harness as h

    push = h.Pusher(fresh_registry.url)
    push.image("boot/ukionly", "v1", [(h.UKI, b"MZ" + bytes(1000))])
    push.close()
    fresh_registry.stop()
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host))
    (d.machines / "52-54-00-00-00-02.toml").write_text(f'[boot]\nimage = "{fresh_registry.host}/boot/ukionly:v1"\n')
    d.start()
    wait_for(lambda: "image not resolvable" in d.log(), timeout=20)
    assert d.get("/httpboot", headers={"X-Forwarded-For": "52:54:00:00:00:02"}).status_code == 500
    fresh_registry.start()

    def uki_offered():
        r = d.get("/httpboot", headers={"X-Forwarded-For": "52:54:00:00:00:02"})
        return r.status_code == 200 and "image.uki" in r.json()["UKIURL"]

    wait_for(uki_offered, timeout=30, interval=0.5)
    assert "chain --autofree" in d.get("/ipxe?mac=52-54-00-00-00-02&arch=efi64").text
