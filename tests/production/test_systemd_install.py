"""deploy/systemd/install.sh installs for real: the venv at /opt/netbootd, /etc/netbootd, the
credentials and the unit, at their real paths but inside a private mount namespace whose /etc, /opt,
/srv, /var/lib, /var/cache and /run are overlays on temporary directories (the host's files are
never changed), and a network namespace of its own. There, systemd-analyze verifies the installed
unit and rates its sandbox, and the unit's ExecStart runs as systemd would run it for DynamicUser=
(PID 1 here is not systemd, so the unit itself cannot be started): an unprivileged uid with only
CAP_NET_BIND_SERVICE, the credentials the unit's LoadCredential= lines name in
$CREDENTIALS_DIRECTORY (mode 0400, owned by that uid), StateDirectory=/CacheDirectory= owned by it,
and NOTIFY_SOCKET for Type=notify. pip installs netbootd's dependencies through the host's pip
configuration (in the host's network namespace), as a person running install.sh would."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd.core.signing import key_id
from tests.conftest import wait_for
from tests.production.namespace import Namespace

pytestmark = [
    pytest.mark.xdist_group("systemd-install"),  # one install for the module, on one worker
    pytest.mark.netns,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount and network namespaces, setpriv)"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (apt-get install systemd)"),
    pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("nsenter") is None,
                       reason="setpriv/nsenter missing (util-linux)"),
]

REPO = Path(__file__).resolve().parents[2]
OVERLAID = ("etc", "opt", "srv", "var/lib", "var/cache", "run")
UNIT = "/etc/systemd/system/netbootd.service"
MAC = "52-54-00-00-25-01"
# A uid in systemd's DynamicUser= range (61184-65519) that no account uses.
DYNAMIC_UIDS = range(61184, 65520)


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Namespace, str]]:
    base = Path(tempfile.mkdtemp(prefix="netbootd-systemd-"))
    ns = Namespace(base, OVERLAID)
    try:
        # a copy of the sources (what the Containerfile copies too): pip builds in the tree it is given,
        # and two test workers must not build in the same one
        source = base / "src"
        shutil.copytree(REPO / "netbootd", source / "netbootd", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source / name)
        out = ns.run("bash", str(REPO / "deploy/systemd/install.sh"), str(source), cwd=REPO, net=False)
        yield ns, out.stdout
    finally:
        ns.close()
        shutil.rmtree(base, ignore_errors=True)


def _unit_lines(ns: Namespace, key: str) -> list[str]:
    text = ns.path(UNIT).read_text()
    return [m.group(1) for m in re.finditer(rf"^{key}=(.*)$", text, re.M)]


def test_install_lays_out_venv_config_credentials_and_unit(installed):
    ns, _ = installed
    exec_start = shlex.split(_unit_lines(ns, "ExecStart")[0])
    assert exec_start[0] == "/opt/netbootd/bin/netbootd"
    assert os.access(ns.path(exec_start[0]), os.X_OK)
    assert ns.path("/etc/netbootd/netbootd.toml").read_text() == (REPO / "deploy/systemd/netbootd.toml").read_text()
    assert list(ns.path("/etc/netbootd/machines").iterdir()) == [], "the machines directory must start empty"
    creds = ns.path("/etc/netbootd/credentials")
    assert creds.stat().st_mode & 0o777 == 0o700
    for name in ("signing.key", "ui-auth"):
        st = (creds / name).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), name
    assert len((creds / "signing.key").read_bytes()) == 32
    # every credential the unit loads is one install.sh made, and one the settings file names
    settings = ns.path("/etc/netbootd/netbootd.toml").read_text()
    for line in _unit_lines(ns, "LoadCredential"):
        name, source = line.split(":", 1)
        assert ns.path(source).is_file(), line
        assert f'"/run/credentials/netbootd.service/{name}"' in settings, name


def test_installed_unit_verifies_and_exposure_at_most_2(installed):
    ns, _ = installed
    out = ns.run("systemd-analyze", "verify", UNIT, check=False)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "netbootd.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    out = ns.run("systemd-analyze", "security", "--offline=yes", "--no-pager", UNIT, check=False)
    match = re.search(r"Overall exposure level for netbootd.service: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    print(f"systemd-analyze security --offline=yes: exposure {match.group(1)}")
    assert float(match.group(1)) <= 2.0, out.stdout


def test_check_of_the_installed_settings_before_the_first_start(installed):
    """The credentials exist only while the service runs: check says so and checks the rest."""
    ns, _ = installed
    ns.path("/srv/netbootd/files/vmlinuz").write_bytes(b"kernel")
    ns.path(f"/etc/netbootd/machines/{MAC}.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    check = ["/opt/netbootd/bin/netbootd", "check", "--config", "/etc/netbootd/netbootd.toml"]
    out = ns.run(*check, check=False)
    assert out.returncode == 0 and "OK: 1 machine file" in out.stdout, out.stdout + out.stderr
    for setting in ("http.signing_key_file", "ui.auth_file"):
        assert f"{setting} /run/credentials/netbootd.service/" in out.stderr, out.stderr
    # a kernel missing from files_root (/srv/netbootd/files, from the settings) is an error
    ns.path("/srv/netbootd/files/vmlinuz").unlink()
    out = ns.run(*check, check=False)
    assert out.returncode == 1 and "vmlinuz" in out.stdout, out.stdout + out.stderr
    # inside the service ($CREDENTIALS_DIRECTORY set), a missing credential is an error
    out = ns.run("env", "CREDENTIALS_DIRECTORY=/run/credentials/netbootd.service", *check, check=False)
    assert out.returncode == 1 and "signing.key does not exist" in out.stdout + out.stderr, out.stdout + out.stderr
    ns.path(f"/etc/netbootd/machines/{MAC}.toml").unlink()


def _dynamic_uid() -> int:
    for uid in DYNAMIC_UIDS:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in the DynamicUser= range")


def _as_systemd_would(ns: Namespace, uid: int) -> dict[str, str]:
    """What systemd does before ExecStart for this unit: StateDirectory=/CacheDirectory= owned by the
    dynamic user, the LoadCredential= files copied into the credentials directory (0400, that uid)."""
    for key, parent in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache")):
        for name in _unit_lines(ns, key):
            d = ns.path(f"{parent}/{name}")
            d.mkdir(mode=0o755, exist_ok=True)  # the host may have one: the overlay keeps it unchanged
            os.chown(d, uid, uid)
    creds = ns.path("/run/credentials/netbootd.service")
    creds.mkdir(parents=True)
    for line in _unit_lines(ns, "LoadCredential"):
        name, source = line.split(":", 1)
        target = creds / name
        target.write_bytes(ns.path(source).read_bytes())
        os.chown(target, uid, uid)
        target.chmod(0o400)
    os.chown(creds, uid, uid)
    creds.chmod(0o500)
    return {"CREDENTIALS_DIRECTORY": "/run/credentials/netbootd.service"}


def test_execstart_as_the_units_dynamic_user(installed, tmp_path):
    ns, _ = installed
    uid = _dynamic_uid()
    env = _as_systemd_would(ns, uid)
    # one machine and its kernel, as an operator adds them after install.sh
    ns.path(f"/etc/netbootd/machines/{MAC}.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0"\n')
    ns.path("/srv/netbootd/files/vmlinuz").write_bytes(b"kernel")
    # Type=notify: the socket systemd would listen on (reachable by the unprivileged uid)
    notify_dir = Path(tempfile.mkdtemp(prefix="netbootd-notify-"))
    notify_dir.chmod(0o711)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_dir / "notify"))
    (notify_dir / "notify").chmod(0o777)
    notify.settimeout(1.0)
    env["NOTIFY_SOCKET"] = str(notify_dir / "notify")

    exec_start = shlex.split(_unit_lines(ns, "ExecStart")[0])
    caps = "-all,+net_bind_service"  # CapabilityBoundingSet= and AmbientCapabilities= of the unit
    assert _unit_lines(ns, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    log = tmp_path / "netbootd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [*ns.prefix(), "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={caps}",
             f"--ambient-caps={caps}", f"--bounding-set={caps}", "--no-new-privs",
             "env", "-i", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in env.items()), *exec_start],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        messages: list[str] = []

        def ready() -> bool:
            assert daemon.poll() is None, f"netbootd exited {daemon.returncode}:\n{log.read_text()}"
            try:
                messages.extend(notify.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
            return "READY=1" in messages

        wait_for(ready, timeout=60, interval=0.1)
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
        assert re.search(r"^CapEff:\s+0*400$", status, re.M), status  # CAP_NET_BIND_SERVICE (bit 10) only

        code, body = ns.curl("http://127.0.0.1/healthz")
        assert code == "200", body
        code, body = ns.curl(f"http://127.0.0.1/ipxe?mac={MAC}&arch=efi64")
        assert code == "200" and "/files/vmlinuz" in body, body
        # the URL-signing key is the credential's: the log names that key's fingerprint
        key = ns.path("/etc/netbootd/credentials/signing.key").read_bytes()
        assert key_id(key) in log.read_text(), log.read_text()
        # the dashboard's credentials come from the ui-auth credential
        token = ns.path("/etc/netbootd/credentials/ui-auth").read_text().split("\n")[1].strip()
        assert ns.curl("http://127.0.0.1:9180/")[0] == "401"
        assert ns.curl("http://127.0.0.1:9180/", "-H", f"Authorization: Bearer {token}")[0] == "200"
        # its state is written where StateDirectory= put it, as the dynamic user
        owned = [p for p in ns.path("/var/lib/netbootd").iterdir() if p.stat().st_uid == uid]
        assert owned, list(ns.path("/var/lib/netbootd").iterdir())
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise
        notify.close()
        shutil.rmtree(notify_dir, ignore_errors=True)
        shutil.rmtree(ns.path("/run/credentials"))  # systemd removes them when the service stops
    assert rc == 0, log.read_text()
