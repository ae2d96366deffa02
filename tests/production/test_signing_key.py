"""http.signing_key_file: netbootd reads the shared URL-signing key at start and refuses, before
it listens, a key file that is missing, too short or open to other users, saying which file,
what is wrong and how to make a good one. Real daemons (`python -m netbootd serve`) and the real
`netbootd check`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from netbootd.config.settingsfile import load_settings
from tests.conftest import Daemon

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
MAC = "52-54-00-12-34-56"
IGN = '{"ignition": {"version": "3.4.0"}, "marker": "ha-secret"}'
MAKE_KEY = "head -c 32 /dev/urandom"


def write_key(path: Path, size: int = 32, mode: int = 0o600) -> Path:
    path.write_bytes(os.urandom(size))
    path.chmod(mode)
    return path


def use_key(d: Daemon, key: Path) -> Daemon:
    """Point the daemon's netbootd.toml at `key` (the Daemon helper writes [http] itself)."""
    text = d.config.read_text()
    assert text.count("[http]\n") == 1
    d.config.write_text(text.replace("[http]\n", f'[http]\nsigning_key_file = "{key}"\n'))
    return d


def machine_with_ignition(d: Daemon) -> None:
    (d.machines / f"{MAC}.toml").write_text(
        '[boot]\nkernel = "http://x/k"\ncmdline = "ign={{ ignition_url }}"\n'
        f"[ignition]\ninline = '{IGN}'\n"
    )


def serve_fails(d: Daemon) -> subprocess.CompletedProcess:
    """`netbootd serve` that must exit on its own (it never gets to listen)."""
    out = subprocess.run(
        [sys.executable, "-m", "netbootd", "serve", "--config", str(d.config)],
        capture_output=True, text=True, timeout=30, cwd=d.root,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout + out.stderr
    assert "listening" not in out.stdout + out.stderr
    return out


def check(d: Daemon) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netbootd", "check", str(d.root)], capture_output=True, text=True, timeout=60
    )


def signed_ignition_url(d: Daemon) -> str:
    script = d.get(f"/ipxe?mac={MAC}&arch=bios").text
    match = re.search(r" ign=(http://\S+&exp=\d+&sig=[0-9a-f]+)", script)
    assert match, script
    return match.group(1)


@pytest.mark.parametrize(
    ("size", "mode", "expect"),
    [
        (16, 0o600, ["holds 16 bytes", "at least 32 random bytes", MAKE_KEY, "chmod 600"]),
        (0, 0o600, ["holds 0 bytes", MAKE_KEY]),
        (32, 0o644, ["readable by other users (mode 0644)", "chmod 600", "defaultMode: 0400"]),
        (32, 0o604, ["readable by other users (mode 0604)", "chmod 600"]),
        (32, 0o602, ["writable by other users (mode 0602)", "chmod 600"]),
        (32, 0o620, ["writable by its group (mode 0620)", "chmod 600"]),
    ],
    ids=["short", "empty", "world-readable", "other-read-only", "other-write-only", "group-writable"],
)
def test_serve_refuses_an_unfit_key(daemon_factory, size, mode, expect):
    d = daemon_factory()
    key = write_key(d.root / "signing.key", size, mode)
    use_key(d, key)
    out = serve_fails(d)
    assert out.returncode == 2
    assert "the settings file has errors" in out.stderr
    assert re.search(rf"{re.escape(str(d.config))}:\d+: http.signing_key_file: signing key file {re.escape(str(key))} ",
                     out.stderr), out.stderr  # file, line, key, and the key file named
    for text in expect:
        assert text in out.stderr, out.stderr
    # `netbootd check` reports it as an error of the settings file
    c = check(d)
    assert c.returncode == 1 and "error(s) in the settings file" in c.stderr
    assert "http.signing_key_file:" in c.stdout and expect[0] in c.stdout


def test_serve_refuses_a_missing_key_file(daemon_factory):
    d = daemon_factory()
    use_key(d, d.root / "nosuch.key")
    out = serve_fails(d)
    assert f"signing key file {d.root / 'nosuch.key'} does not exist" in out.stderr
    assert f"{MAKE_KEY} > {d.root / 'nosuch.key'} && chmod 600 {d.root / 'nosuch.key'}" in out.stderr
    assert "http.signing_key_file" in check(d).stdout


def test_serve_refuses_a_directory_and_a_fifo(daemon_factory):
    d = daemon_factory()
    (d.root / "keydir").mkdir(mode=0o700)
    use_key(d, d.root / "keydir")
    assert "is not a regular file" in serve_fails(d).stderr
    d = daemon_factory()
    os.mkfifo(d.root / "keyfifo", 0o600)  # opening a FIFO for reading would block the start
    use_key(d, d.root / "keyfifo")
    assert "is not a regular file" in serve_fails(d).stderr


def test_relative_path_is_relative_to_the_settings_file(daemon_factory):
    d = daemon_factory()
    key = write_key(d.root / "signing.key")
    d.config.write_text(d.config.read_text().replace("[http]\n", '[http]\nsigning_key_file = "signing.key"\n'))
    assert load_settings(d.config).http.signing_key_file == key


def test_good_key_starts_and_is_never_logged(daemon_factory):
    d = daemon_factory()
    key = write_key(d.root / "signing.key", 48, 0o600)
    use_key(d, key)
    machine_with_ignition(d)
    assert check(d).returncode == 0
    d.start()
    url = signed_ignition_url(d)
    r = httpx.get(url)
    assert r.status_code == 200 and r.json()["marker"] == "ha-secret"
    d.stop()
    log = d.log()
    assert re.search(rf"URL signing key loaded.*path={re.escape(str(key))}.*key_id=[0-9a-f]{{12}}", log), log
    secret = key.read_bytes()
    assert secret.hex() not in log and secret.hex().upper() not in log
    assert secret not in d.log_path.read_bytes()
    assert not (d.root / "state" / "url-signing.key").exists()  # the file's key, not a host key


def test_group_readable_key_is_accepted(daemon_factory):
    """0440/0640: the group is the operator's choice (Kubernetes adds group read for fsGroup)."""
    d = daemon_factory()
    use_key(d, write_key(d.root / "signing.key", 32, 0o440))
    d.start()
    assert d.get("/healthz").status_code == 200


def test_secret_volume_layout_follows_symlinks(daemon_factory):
    """A Kubernetes Secret volume: signing.key -> ..data/signing.key, ..data -> ..<timestamp>/.
    The mode that counts is the target's (defaultMode), not the symlink's 0777."""
    d = daemon_factory()
    vol = d.root / "secret"
    stamp = vol / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    target = write_key(stamp / "signing.key", 32, 0o644)  # the default defaultMode: 0644
    (vol / "..data").symlink_to(stamp.name)
    (vol / "signing.key").symlink_to("..data/signing.key")
    use_key(d, vol / "signing.key")
    out = serve_fails(d)
    assert "readable by other users (mode 0644)" in out.stderr and "defaultMode: 0400" in out.stderr
    target.chmod(0o400)
    machine_with_ignition(d)
    d.start()
    assert httpx.get(signed_ignition_url(d)).status_code == 200


def test_kubernetes_daemonset_mounts_the_key_where_the_settings_expect_it():
    configured = Path(tomllib.loads((K8S / "netbootd.toml").read_text())["http"]["signing_key_file"])
    ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert Path(mounts["signing-key"]["mountPath"]) == configured.parent
    assert "subPath" not in mounts["signing-key"]
    secret = volumes["signing-key"]["secret"]
    assert secret["defaultMode"] == 0o400  # netbootd refuses the default 0644
    # made in the same apply (secretGenerator), so the pods need not start without it
    assert secret["secretName"] == "netbootd-signing-key" and not secret.get("optional", False)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {"name": "netbootd-signing-key", "files": ["signing.key"]} in kustomization["secretGenerator"]


def test_explain_needs_no_key(daemon_factory):
    """explain signs nothing the daemon will verify: an operator who cannot read the key (or a
    checkout without it) still sees what a machine would get."""
    d = daemon_factory()
    use_key(d, d.root / "nosuch.key")
    machine_with_ignition(d)
    out = subprocess.run(
        [sys.executable, "-m", "netbootd", "explain", MAC, "--config", str(d.config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ign=http://" in out.stdout
