"""netbootd.testing.netns.Topology, the one place tests, benchmarks and the lab make network namespaces:
names that carry the PID, links made inside the namespaces, and a close that removes only its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netbootd.testing.netns import NetnsError, Topology
from tests.helpers import NETNS

pytestmark = NETNS

ECHO = """import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("fd99::1", 9999))
print("listening", flush=True)
print("got", s.recv(64).decode(), flush=True)
"""


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links(ns: str | None = None) -> set[str]:
    """The links of namespace `ns` (None: this process's)."""
    where = ["-n", ns] if ns else []
    out = subprocess.run(["ip", *where, "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_a_pair_of_namespaces_linked_and_removed(tmp_path):
    with Topology("nbt") as net:
        a, b = net.namespace("a"), net.namespace("b")
        assert a.name.startswith(f"nbt{os.getpid()}x") and a.name.endswith("a") and b.name == a.name[:-1] + "b"
        net.veth(a, "va", b, "vb", mac="02:00:00:00:00:0a")
        a.address("va", "10.99.0.1/24")
        a.address("va", "fd99::1/64")
        b.address("vb", "10.99.0.2/24")
        b.address("vb", "fd99::2/64")
        assert links(a.name) == {"lo", "va"} and links(b.name) == {"lo", "vb"}
        assert not {"va", "vb"} & links()  # made inside their namespaces, never in this one
        assert a.run("cat", "/sys/class/net/va/address").stdout.strip() == "02:00:00:00:00:0a"
        assert "UP" in a.ip("-o", "link", "show", "lo")
        # no duplicate address detection: the IPv6 address can be bound at once (a tentative one cannot)
        echo = a.start("echo", [sys.executable, "-c", ECHO], tmp_path / "echo.log")
        echo.wait_for("listening")
        b.run(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)"
                                    ".sendto(b'across', ('fd99::1', 9999))")
        echo.wait_for("got across")
        sleeper = a.start("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                          tmp_path / "sleeper.log")
        sleeper.wait_for("^up$")
        assert {a.name, b.name} <= namespaces()
    assert not sleeper.running()  # stopped by its PID on close
    assert not {a.name, b.name} & namespaces()


def test_a_failed_ip_command_says_what_ip_said():
    with Topology("nbt") as net:
        ns = net.namespace()
        with pytest.raises(NetnsError, match=r"^ip -n nbt\S+ link set nosuch0 up: .*nosuch0"):
            ns.up("nosuch0")
    assert ns.name not in namespaces()


def test_a_bridge_with_ports():
    with Topology("nbt") as net:
        lan, host = net.namespace("l"), net.namespace("h")
        lan.bridge("br0", mac="02:77:00:00:00:01")
        net.veth(lan, "vh", host, "nb0", master="br0")
        assert "master br0" in lan.ip("-o", "link", "show", "vh")
        assert "02:77:00:00:00:01" in lan.ip("-o", "link", "show", "br0")
