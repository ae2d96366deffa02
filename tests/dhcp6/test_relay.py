"""A relayed SOLICIT answered through a real relay: Debian's dnsmasq as a DHCPv6 relay agent
(--dhcp-relay) between a client's link and netbootd's, in network namespaces this test creates.

    client ns   c0 (link-local only)
                 |  veth
    relay ns    r0 fd78::1/64   dnsmasq --dhcp-relay=fd78::1,fd79::2   r1 fd79::1/64
                                                                         |  veth
    server ns                                            netbootd   s0 fd79::2/64 (route to fd78::/64 via fd79::1)

The client sends OVMF's captured PXE SOLICIT to ff02::1:2 on its link; the relay wraps it in a
RELAY-FORW (link address fd78::1) and unicasts it to netbootd, whose RELAY-REPL goes back to the
relay, which hands the ADVERTISE to the client. Nothing leaves the namespaces; every process is
stopped by its PID and the namespaces are deleted.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from netbootd.dhcp6 import codec
from netbootd.testing.netns import Namespace, Proc, Topology
from tests.dhcp6.conftest import fixture
from tests.helpers import NETNS

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "relay_client.py"
SOLICIT = fixture("proxy6-uefi-pxe-4011", 4)  # OVMF's PXE SOLICIT (vendor class PXEClient, arch 7)
MAC = "52:54:00:99:00:41"  # the machine of that capture

pytestmark = [
    *NETNS,
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed (apt-get install dnsmasq-base)"),
]


class Relayed:
    """The client, relay and server namespaces, linked as drawn above."""

    def __init__(self, net: Topology, tmp: Path) -> None:
        self.tmp = tmp
        self.cli, self.rel, self.srv = net.namespace("c"), net.namespace("r"), net.namespace("s")
        for ns in (self.cli, self.rel, self.srv):
            # the links' addresses usable at once (no duplicate address detection): a test link
            ns.sysctl("net.ipv6.conf.default.accept_dad", 0)
        net.veth(self.cli, "c0", self.rel, "r0", mac=MAC)  # the captured machine's NIC
        net.veth(self.rel, "r1", self.srv, "s0")
        self.rel.address("r0", "fd78::1/64")
        self.rel.address("r1", "fd79::1/64")
        self.srv.address("s0", "fd79::2/64")
        self.srv.ip("-6", "route", "add", "fd78::/64", "via", "fd79::1")

    def start(self, ns: Namespace, name: str, argv: list[str], ready: str) -> Proc:
        proc = ns.start(name, argv, self.tmp / f"{name}.log", cwd=self.tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        proc.wait_for(ready)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def topo(tmp_path):
    with Topology("nb6") as net:  # stops what the test started in it, deletes the namespaces
        yield Relayed(net, tmp_path)


def start_netbootd(topo: Relayed, tmp: Path) -> None:
    conf = tmp / "conf"  # not "netbootd": the processes run in tmp, where python -m would import it
    (conf / "machines").mkdir(parents=True)
    (conf / "files").mkdir()
    (conf / "files" / "vmlinuz").write_bytes(b"k")
    # that machine only (no default.toml): an answer means netbootd identified it through the relay
    (conf / "machines" / f"{MAC.replace(':', '-')}.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    (conf / "netbootd.toml").write_text(
        'machines_dir = "machines"\nfiles_root = "files"\nstate_dir = "state"\ncache_dir = "cache"\n'
        "[tftp]\nenabled = false\n[http]\nport = 8080\n[log]\nlevel = \"debug\"\n"
    )
    topo.start(topo.srv, "netbootd", [sys.executable, "-m", "netbootd", "serve", "--config", str(conf / "netbootd.toml")],
               "listening")


def test_solicit_answered_through_dnsmasq_relay(topo, tmp_path):
    start_netbootd(topo, tmp_path)
    topo.start(topo.rel, "relay", [
        "dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--log-facility=-", "--log-dhcp", "--port=0",
        "--interface=r0", "--interface=r1", "--dhcp-relay=fd78::1,fd79::2",
        f"--pid-file={tmp_path / 'relay.pid'}", "--user=root", "--group=root",
    ], "started")
    out = topo.cli.run(sys.executable, str(CLIENT), "c0", str(HERE / "fixtures" / SOLICIT.name), timeout=30)
    got = [line.split() for line in out.stdout.splitlines()]
    assert got, f"no answer reached the client\nrelay:\n{topo.log('relay')}\nnetbootd:\n{topo.log('netbootd')}"
    sent = SOLICIT.decode()
    for source, payload in got:
        assert source.startswith("fe80::"), source  # from the relay on the client's link
        answer = codec.decode(bytes.fromhex(payload), accept=codec.FROM_SERVER)
        assert isinstance(answer, codec.Message) and answer.msg_type == codec.ADVERTISE, answer
        assert answer.transaction_id == sent.transaction_id and answer.client_id == sent.client_id
        assert [code for code, _ in answer.options] == [1, 2, 16, 59], answer  # no IA_NA, status, preference
        assert answer.vendor_class() == (codec.PXE_CLIENT,)
        # the address the relay reached netbootd at: the client's link has no netbootd
        assert answer.bootfile_url == "tftp://[fd79::2]/snponly.efi", answer
    log = topo.log("netbootd")
    # identified by the MAC the relay saw (option 79, which dnsmasq adds), answered to the relay
    assert f"answered mac={MAC}" in log and "identity=option-79 relay=fd79::1" in log, log
