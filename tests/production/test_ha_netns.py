"""Active-active HA on one L2 segment: two netbootd, each a host of its own (a network namespace
with its own address), joined with a PXE client by a bridge; same machine files, same
http.signing_key_file.

    ns A  nb0 10.77.0.2 --veth-- va ┐
    ns B  nb0 10.77.0.3 --veth-- vb ├─ br0 (ns L)
    ns C  nc0 (10.77.0.145 later) ── vc ┘

Both answer the client's DHCP broadcast, each OFFER naming its own host; the machine's script
fetched from either works; the Ignition URL in A's script is accepted by B. Every process is
stopped by its PID and the namespaces are deleted in `finally`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.production.test_signing_key import write_key

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "dhcp" / "netns_client.py"
HOSTS = {"a": "10.77.0.2", "b": "10.77.0.3"}
CLIENT_IP = "10.77.0.145"
HTTP_PORT = 8080
MAC = "52:54:00:77:00:20"
IGN = '{"ignition": {"version": "3.4.0"}, "marker": "ha-netns"}'

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Segment:
    """Namespaces L (the bridge), A, B (boot hosts) and C (the client)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}x{int(time.monotonic() * 1000) % 1000}"
        self.lan, self.client = f"nbha-l{tag}", f"nbha-c{tag}"
        self.hosts = {name: f"nbha-{name}{tag}" for name in HOSTS}
        self.namespaces: list[str] = []

    def add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def attach(self, ns: str, inner: str, outer: str, address: str | None) -> None:
        ip("-n", self.lan, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        ip("-n", self.lan, "link", "set", outer, "master", "br0")
        ip("-n", self.lan, "link", "set", outer, "up")
        if address:
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")

    def up(self) -> None:
        self.add(self.lan)
        ip("-n", self.lan, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("-n", self.lan, "link", "set", "br0", "up")
        for name, address in HOSTS.items():
            self.add(self.hosts[name])
            self.attach(self.hosts[name], "nb0", f"v{name}", address)
        self.add(self.client)
        self.attach(self.client, "nc0", "vc", None)  # address-less, like firmware before its lease

    def down(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def discover(self, *args: str, expect: int) -> list[dict]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, str(CLIENT), "discover", "--iface", "nc0",
             "--mac", MAC, "--expect", str(expect), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def curl(self, url: str) -> tuple[int, str]:
        """GET from the client's namespace (the test process cannot reach the segment)."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.client, "curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, f"curl {url}: {out.stderr}"
        body, _, status = out.stdout.rpartition("\n")
        return int(status), body


class Netbootd:
    """`python -m netbootd serve` in a host's namespace; stopped by its PID."""

    def __init__(self, ns: str, config: Path, log: Path) -> None:
        self.log_path = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "netbootd", "serve", "--config", str(config)],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=config.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not re.search(r"\blistening\b", self.log()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"netbootd in {ns} did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this PID only
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture
def segment():
    seg = Segment()
    try:
        seg.up()
        yield seg
    finally:
        seg.down()


def config_dir(root: Path) -> Path:
    """One configuration directory both hosts read: the machines, the files, the key."""
    (root / "machines").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / "vmlinuz").write_bytes(b"kernel " * 1000)
    (root / "machines" / f"{MAC.replace(':', '-')}.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 ign={{ ignition_url }}"\n'
        f"[ignition]\ninline = '{IGN}'\n"
    )
    write_key(root / "signing.key")
    for name in HOSTS:
        (root / f"{name}.toml").write_text(
            textwrap.dedent(
                f"""\
                machines_dir = "machines"
                files_root = "files"
                state_dir = "state-{name}"
                cache_dir = "cache-{name}"
                [http]
                port = {HTTP_PORT}
                signing_key_file = "signing.key"
                [tftp]
                enabled = false
                [dhcp]
                port = 67
                proxy_port = 4011
                """
            )
        )
    return root


def test_pair_on_one_bridge(segment, tmp_path):
    conf = config_dir(tmp_path / "conf")
    daemons = {}
    try:
        for name in HOSTS:
            daemons[name] = Netbootd(segment.hosts[name], conf / f"{name}.toml", tmp_path / f"netbootd-{name}.log")
        # Both answer the broadcast; each OFFER names its own host (no advertise: the address of
        # the interface the DISCOVER came in on).
        pxe = segment.discover("--arch", "0", expect=2)
        assert sorted(o["src"] for o in pxe) == sorted(HOSTS.values()), pxe
        for offer in pxe:
            host = offer["src"]
            assert offer["siaddr"] == host and offer["options"]["54"] == bytes(map(int, host.split("."))).hex()
            assert offer["file"] == "undionly.kpxe" and offer["yiaddr"] == "0.0.0.0"
        ipxe = segment.discover("--arch", "0", "--user-class", "iPXE", expect=2)
        scripts = {o["src"]: o["file"] for o in ipxe}
        assert set(scripts) == set(HOSTS.values()), ipxe
        for host, url in scripts.items():
            assert url.startswith(f"http://{host}:{HTTP_PORT}/ipxe?mac="), url

        ip("-n", segment.client, "addr", "add", f"{CLIENT_IP}/24", "dev", "nc0")  # its lease, from the site
        ignition = {}
        for host, url in scripts.items():
            status, script = segment.curl(url)
            assert status == 200, script
            kernel = re.search(r"^kernel --name \S+ (\S+)", script, re.M)
            assert kernel and kernel.group(1) == f"http://{host}:{HTTP_PORT}/files/vmlinuz", script
            assert segment.curl(kernel.group(1)) == (200, (b"kernel " * 1000).decode())
            ign = re.search(r" ign=(http://\S+&exp=\d+&sig=[0-9a-f]{32})", script)
            assert ign and ign.group(1).startswith(f"http://{host}:{HTTP_PORT}/ignition?"), script
            ignition[host] = ign.group(1)
        # Each host's signed URL, sent to the other host: accepted.
        a, b = HOSTS["a"], HOSTS["b"]
        for signer, verifier in ((a, b), (b, a)):
            moved = ignition[signer].replace(f"//{signer}:", f"//{verifier}:")
            status, body = segment.curl(moved)
            assert status == 200 and '"marker": "ha-netns"' in body, (moved, status, body)
        # ...and a tampered one still is not.
        status, body = segment.curl(ignition[a].replace(f"//{a}:", f"//{b}:")[:-1] + "x")
        assert status == 403 and "bad signature" in body
        assert "ignition sent" in daemons["b"].log() and "ignition refused" in daemons["b"].log()
        for name, d in daemons.items():  # each host's log: it offered its own script URL, and the same key
            assert f"offered=\"ipxe-script http://{HOSTS[name]}:{HTTP_PORT}/ipxe?mac=" in d.log()
        key_ids = {m.group(1) for d in daemons.values() for m in re.finditer(r"key_id=(\w+)", d.log())}
        assert len(key_ids) == 1, key_ids
    finally:
        for d in daemons.values():
            d.stop()
