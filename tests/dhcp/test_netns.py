"""Real sockets in network namespaces the tests create: netbootd's DHCP edge runs in a subprocess
inside a "server" namespace, PXE clients / relays in a "client" namespace, joined by a veth pair.

    client ns  nbc0 (no address, or 10.77.0.145 / relay 10.78.0.1)  <--veth-->  nbs0 10.77.0.2  server ns

Nothing here touches the host's own interfaces; every process started is stopped by its PID and
the namespaces are deleted when the test ends (netbootd.testing.netns.Topology).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from netbootd.testing.netns import Proc, Topology
from tests.helpers import NETNS

HERE = Path(__file__).resolve().parent
SERVER = HERE / "netns_server.py"
CLIENT = HERE / "netns_client.py"
SERVER_IP = "10.77.0.2"
CLIENT_IP = "10.77.0.145"
RELAY_IP = "10.78.0.1"  # giaddr: a routed subnet behind the client namespace

pytestmark = NETNS


class Pair:
    """The server and client namespaces, joined by a veth pair."""

    srv_if, cli_if = "nbs0", "nbc0"

    def __init__(self, net: Topology) -> None:
        self.srv, self.cli = net.namespace("s"), net.namespace("c")
        net.veth(self.srv, self.srv_if, self.cli, self.cli_if)
        self.srv.address(self.srv_if, f"{SERVER_IP}/24")

    def client_addresses(self) -> None:
        self.cli.address(self.cli_if, f"{CLIENT_IP}/24")
        self.cli.address(self.cli_if, f"{RELAY_IP}/24")
        self.srv.ip("route", "add", "10.78.0.0/24", "via", CLIENT_IP)

    def client(self, *args: str, expect: int = 1) -> list[dict]:
        out = self.cli.run(sys.executable, str(CLIENT), *args, "--expect", str(expect), check=False)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def topo():
    with Topology("nbd") as net:  # stops what the test started in it, deletes the namespaces
        yield Pair(net)


@pytest.fixture
def machines(tmp_path):
    d = tmp_path / "machines"
    (d / "profiles").mkdir(parents=True)
    (d / "default.toml").write_text('[boot]\nchain = "http://boot.example/menu.ipxe"\n')
    (d / "52-54-00-99-99-99.toml").write_text("[boot]\nignore = true\n")
    return d


def start_netbootd(topo: Pair, machines: Path, tmp_path: Path, *extra: str) -> Proc:
    proc = topo.srv.start("netbootd", [sys.executable, str(SERVER), "--machines", str(machines), *extra],
                          tmp_path / "netbootd.log")
    proc.wait_for("READY")
    return proc


@pytest.fixture
def netbootd(topo, machines, tmp_path):
    proc = start_netbootd(topo, machines, tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def test_addressless_client_gets_broadcast_offer(topo, netbootd):
    (offer,) = topo.client("discover", "--iface", topo.cli_if, "--arch", "0", "--mac", "52:54:00:00:00:31")
    assert (offer["src"], offer["sport"], offer["dst"], offer["dport"]) == (
        SERVER_IP,
        67,
        "255.255.255.255",
        68,
    )
    assert offer["eth_dst"] == "ffffffffffff"
    assert offer["yiaddr"] == "0.0.0.0"
    assert offer["siaddr"] == SERVER_IP  # the receiving interface's address
    assert offer["file"] == "undionly.kpxe"
    assert offer["chaddr"] == "525400000031"
    assert offer["flags"] & 0x8000
    assert offer["options"]["53"] == "02"
    assert offer["options"]["54"] == "0a4d0002"
    assert bytes.fromhex(offer["options"]["60"]) == b"PXEClient"
    assert offer["options"]["97"] == "00" + bytes(range(16)).hex()
    assert offer["options"]["43"] == "060108ff"
    assert offer["len"] >= 300
    assert "answered" in netbootd.text()


def test_efi_offer_then_4011_ack(topo, netbootd):
    (offer,) = topo.client("discover", "--iface", topo.cli_if, "--arch", "7")
    assert offer["file"] == "" and offer["siaddr"] == SERVER_IP
    topo.client_addresses()  # the firmware now has its lease from the site's DHCP server
    (ack,) = topo.client("proxy", "--server", SERVER_IP, "--bind", CLIENT_IP, "--arch", "7")
    assert (ack["src"], ack["sport"]) == (SERVER_IP, 4011)
    assert ack["options"]["53"] == "05"
    assert (ack["siaddr"], ack["sname"], ack["file"]) == (SERVER_IP, SERVER_IP, "snponly.efi")
    assert ack["options"]["54"] == "0a4d0002"


def test_relayed_request_is_answered_to_giaddr(topo, netbootd):
    topo.client_addresses()
    (offer,) = topo.client("relay", "--server", SERVER_IP, "--bind", RELAY_IP, "--arch", "0")
    assert (offer["src"], offer["sport"], offer["dst"], offer["dport"]) == (SERVER_IP, 67, RELAY_IP, 67)
    assert offer["giaddr"] == RELAY_IP
    assert offer["file"] == "undionly.kpxe"
    assert offer["siaddr"] == SERVER_IP


def test_ignored_machine_gets_nothing(topo, netbootd):
    replies = topo.client("discover", "--iface", topo.cli_if, "--mac", "52:54:00:99:99:99", "--wait", "2")
    assert replies == []
    assert "boot.ignore" in netbootd.text()


def test_interfaces_setting_filters(topo, machines, tmp_path):
    proc = start_netbootd(topo, machines, tmp_path, "--interfaces", "nonexistent0")
    try:
        assert topo.client("discover", "--iface", topo.cli_if, "--wait", "2") == []
    finally:
        proc.stop()


def start_beside_dnsmasq(topo: Pair, machines: Path, tmp_path: Path, first: str, *extra: str) -> list[Proc]:
    """netbootd and an address-only dnsmasq (`--bind-interfaces`) on the server namespace's one
    address (10.77.0.2), `first` started first; the caller stops them (reversed)."""
    dnsmasq_argv = [
        shutil.which("dnsmasq") or "dnsmasq",
        "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--no-ping",
        f"--interface={topo.srv_if}", "--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h",
        f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        "--user=root", "--group=root", "--log-facility=-", "--log-dhcp",
    ]  # fmt: skip
    procs: list[Proc] = []
    try:
        for which in (first, "dnsmasq" if first == "netbootd" else "netbootd"):
            if which == "netbootd":
                procs.append(start_netbootd(topo, machines, tmp_path, *extra))
            else:
                procs.append(topo.srv.start("dnsmasq", dnsmasq_argv, tmp_path / "dnsmasq.log"))
                procs[-1].wait_for("DHCP, IP range")  # logged once its DHCP socket is bound
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    return procs


needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed")


@needs_dnsmasq
@pytest.mark.parametrize("first", ["netbootd", "dnsmasq"])
def test_coexists_with_dnsmasq_bind_interfaces(topo, machines, tmp_path, first):
    procs = start_beside_dnsmasq(topo, machines, tmp_path, first)
    try:
        replies = topo.client("discover", "--iface", topo.cli_if, "--arch", "0", expect=2)
        by_yiaddr = {r["yiaddr"] != "0.0.0.0": r for r in replies}
        assert set(by_yiaddr) == {True, False}, replies
        lease, proxy = by_yiaddr[True], by_yiaddr[False]
        assert lease["yiaddr"].startswith("10.77.0.") and lease["options"]["53"] == "02"
        assert "60" not in lease["options"] and lease["file"] == ""  # address only
        assert proxy["file"] == "undionly.kpxe" and bytes.fromhex(proxy["options"]["60"]) == b"PXEClient"
        assert proxy["siaddr"] == SERVER_IP
    finally:
        for p in reversed(procs):
            p.stop()


@needs_dnsmasq
@pytest.mark.parametrize("first", ["netbootd", "dnsmasq"])
@pytest.mark.parametrize("arch", [7, 0])
def test_request_for_the_shared_address_is_left_to_dnsmasq(topo, machines, tmp_path, first, arch):
    """netbootd and dnsmasq on ONE address: the client's REQUEST names it (option 54) for dnsmasq's
    lease. Only dnsmasq may ACK: EDK2 takes the first ACK with that server id and DECLINEs one
    without the offered address (PXE-E07). Every answer to the REQUEST is captured up to netbootd's
    answer to a later DISCOVER (netns_client.py `lease`), so an ACK from netbootd cannot slip by."""
    procs = start_beside_dnsmasq(topo, machines, tmp_path, first, "--log-level", "debug")
    try:
        answers = topo.client("lease", "--iface", topo.cli_if, "--arch", str(arch), "--wait", "20")
    finally:
        for p in reversed(procs):
            p.stop()
    offers = {a["yiaddr"] == "0.0.0.0": a for a in answers if a["to"] == "discover"}
    lease, proxy = offers[False], offers[True]
    assert lease["options"]["54"] == proxy["options"]["54"] == "0a4d0002", "not one shared address"
    acks = [a for a in answers if a["to"] == "request"]
    assert [(a["src"], a["options"]["53"], a["yiaddr"]) for a in acks] == [(SERVER_IP, "05", lease["yiaddr"])], acks
    assert any(a["to"] == "barrier" and a["yiaddr"] == "0.0.0.0" for a in answers)  # netbootd was alive and in order
    log = procs[-1 if first == "dnsmasq" else 0].text()
    assert "request-for-dhcp-server" in log and "server_id=10.77.0.2" in log, log


def test_second_address_advertised_and_used_as_source(topo, machines, tmp_path):
    """A host that also runs the site's DHCP server: the boot server is a second address."""
    topo.srv.address(topo.srv_if, "10.77.0.3/24")  # secondary
    proc = start_netbootd(topo, machines, tmp_path, "--advertise", "10.77.0.3")
    try:
        (offer,) = topo.client("discover", "--iface", topo.cli_if, "--arch", "0")
        assert (offer["src"], offer["siaddr"], offer["options"]["54"]) == ("10.77.0.3", "10.77.0.3", "0a4d0003")
    finally:
        proc.stop()
    proc = start_netbootd(topo, machines, tmp_path)  # no advertise: the interface's primary address
    try:
        (offer,) = topo.client("discover", "--iface", topo.cli_if, "--arch", "0")
        assert (offer["src"], offer["siaddr"]) == (SERVER_IP, SERVER_IP)
    finally:
        proc.stop()
