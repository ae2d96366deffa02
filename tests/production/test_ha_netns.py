"""Active-active HA on one L2 segment: two netbootd, each a host of its own (a network namespace
with its own address), joined with a PXE client by a bridge; same machine files, same
http.signing_key_file.

    ns A  nb0 10.77.0.2 --veth-- va ┐
    ns B  nb0 10.77.0.3 --veth-- vb ├─ br0 (ns L)
    ns C  nc0 (10.77.0.145 later) ── vc ┘

Both answer the client's DHCP broadcast, each OFFER naming its own host; the machine's script
fetched from either works; the Ignition URL in A's script is accepted by B. Every process is
stopped by its PID and the namespaces are deleted when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from netbootd.testing.netns import Namespace, Proc, Topology
from tests.helpers import NETNS
from tests.production.test_signing_key import write_key

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "dhcp" / "netns_client.py"
HOSTS = {"a": "10.77.0.2", "b": "10.77.0.3"}
CLIENT_IP = "10.77.0.145"
HTTP_PORT = 8080
MAC = "52:54:00:77:00:20"
IGN = '{"ignition": {"version": "3.4.0"}, "marker": "ha-netns"}'

pytestmark = [
    *NETNS,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed"),
]


class Segment:
    """Namespaces L (the bridge), A, B (boot hosts) and C (the client)."""

    def __init__(self, net: Topology) -> None:
        self.lan = net.namespace("l")
        self.lan.bridge("br0")
        self.hosts: dict[str, Namespace] = {}
        for name, address in HOSTS.items():
            self.hosts[name] = host = net.namespace(name)
            net.veth(self.lan, f"v{name}", host, "nb0", master="br0")
            host.address("nb0", f"{address}/24")
        self.client = net.namespace("c")
        net.veth(self.lan, "vc", self.client, "nc0", master="br0")  # address-less, like firmware before its lease

    def discover(self, *args: str, expect: int) -> list[dict]:
        out = self.client.run(sys.executable, str(CLIENT), "discover", "--iface", "nc0", "--mac", MAC,
                              "--expect", str(expect), *args, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def curl(self, url: str) -> tuple[int, str]:
        """GET from the client's namespace (the test process cannot reach the segment)."""
        out = self.client.run("curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", url, check=False)
        assert out.returncode == 0, f"curl {url}: {out.stderr}"
        body, _, status = out.stdout.rpartition("\n")
        return int(status), body


def start_netbootd(host: Namespace, config: Path, log: Path) -> Proc:
    """`python -m netbootd serve` in a host's namespace (stopped by its PID when the test ends)."""
    proc = host.start(log.stem, [sys.executable, "-m", "netbootd", "serve", "--config", str(config)], log,
                      cwd=config.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.wait_for(r"\blistening\b")
    return proc


@pytest.fixture
def segment():
    with Topology("nbha") as net:  # stops what the test started in it, deletes the namespaces
        yield Segment(net)


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
    daemons: dict[str, Proc] = {}
    try:
        for name in HOSTS:
            daemons[name] = start_netbootd(segment.hosts[name], conf / f"{name}.toml", tmp_path / f"netbootd-{name}.log")
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

        segment.client.address("nc0", f"{CLIENT_IP}/24")  # its lease, from the site
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
        assert "ignition sent" in daemons["b"].text() and "ignition refused" in daemons["b"].text()
        for name, d in daemons.items():  # each host's log: it offered its own script URL, and the same key
            assert f"offered=\"ipxe-script http://{HOSTS[name]}:{HTTP_PORT}/ipxe?mac=" in d.text()
        key_ids = {m.group(1) for d in daemons.values() for m in re.finditer(r"key_id=(\w+)", d.text())}
        assert len(key_ids) == 1, key_ids
    finally:
        for d in daemons.values():
            d.stop()
