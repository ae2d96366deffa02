"""Run by test_memory.py in a fresh process (its own logging and reactor): garbage into the DHCP
and TFTP protocol objects, with tracemalloc; prints JSON with the traced memory after a warm-up
and at the end. Usage: python -m tests.fuzz.memory_probe dhcp|tftp PACKETS"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tempfile
import tracemalloc
from pathlib import Path

from netbootd.logs import start_logging
from tests.fuzz.conftest import EXAMPLE_CONFIG, corpus

SEEDS = {"dhcp": corpus("dhcp"), "tftp": corpus("tftp")}


def garbage(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.random()
    if kind < 0.2:
        return rng.randbytes(rng.randrange(0, 1600))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 6)):
        pos = rng.randrange(0, max(len(data), 1))
        op = rng.randrange(4)
        if op == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 30))
        elif op == 2:
            del data[pos : pos + rng.randrange(1, 30)]
        elif len(data) >= 34:  # another MAC: new machines for the boot timeline
            data[28:34] = rng.randbytes(6)
    return bytes(data)


class Discard:
    """Where the protocol's answers go: nowhere (a real port-67 socket would broadcast them)."""

    def write(self, data, addr):
        pass

    def sendFrom(self, data, addr, ifindex=0, source=""):
        pass

    def getHost(self):
        return None


def checkpoint(i: int, packets: int, result: dict) -> None:
    """Tracing starts after the first quarter (the warm-up: caches and bounded tables fill);
    memory still held is read at one half and at the end. Bounded: the second reading is no
    larger than the first, give or take noise."""
    if i == packets // 4:
        tracemalloc.start()
    elif i == packets // 2:
        gc.collect()  # what a reference cycle holds is garbage, not a leak
        result["half"] = tracemalloc.get_traced_memory()[0]


def measure(step, packets: int) -> dict:
    result: dict = {"packets": packets}
    for i in range(packets):
        checkpoint(i, packets, result)
        step(i)
    gc.collect()
    result["end"], result["peak"] = tracemalloc.get_traced_memory()
    if os.environ.get("MEMORY_PROBE_TOP"):
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
            print(stat, file=sys.stderr)
    return result


def dhcp(packets: int) -> dict:
    from netbootd.config.catalog import build_catalog
    from netbootd.config.machinesdir import load_machines
    from netbootd.config.settingsfile import load_settings
    from netbootd.core.decide import BootCore
    from netbootd.dhcp.answer import DhcpController
    from netbootd.dhcp.protocol import DhcpProtocol, InterfaceAddresses, PacketInfo

    class OneInterface(InterfaceAddresses):
        def lookup(self, ifindex):
            return ("eth0", "192.0.2.1")

    settings = load_settings(EXAMPLE_CONFIG / "netbootd.toml")
    core = BootCore(settings, build_catalog(load_machines(settings)))
    # Bounded tables, made small so that they fill within the warm-up: the boot timeline (4096
    # machines) and the classification cache (4096 kinds of firmware, cleared when full).
    from netbootd.dhcp import classify

    core.timeline.max_machines = 256
    classify._CACHE_MAX = 64
    protocols = [DhcpProtocol(DhcpController(core), proxy=proxy, addresses=OneInterface()) for proxy in (False, True)]
    for p in protocols:
        p.makeConnection(Discard())
    info = PacketInfo(3, "255.255.255.255", "192.0.2.1")
    rng = random.Random(8)

    def step(i: int) -> None:
        protocols[i % 2].packetReceived(garbage(rng, SEEDS["dhcp"]), (f"10.1.{i % 200}.{i % 250}", 68), info, False)

    return measure(step, packets)


def tftp(packets: int) -> dict:
    from twisted.internet import reactor

    from netbootd.config.settings import Settings, TftpSettings
    from netbootd.tftp.files import TftpFiles
    from netbootd.tftp.server import TftpServer

    root = Path(tempfile.mkdtemp())
    (root / "one.bin").write_bytes(os.urandom(3000))
    settings = Settings(tftp=TftpSettings(port=0, listen="127.0.0.1", root=root, ipxe_dir=root, timeout=0.05, retries=1))
    server = TftpServer(reactor, settings.tftp, TftpFiles(settings))
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    rng = random.Random(9)
    requests = [b"\x00\x01one.bin\x00octet\x00", b"\x00\x01one.bin\x00octet\x00blksize\x008\x00windowsize\x004\x00"]
    result: dict = {"packets": packets}
    sent = {"n": 0}

    def chunk() -> None:
        """200 packets, then the reactor runs the sessions' timers; the first quarter is the warm-up."""
        for _ in range(200):
            i = sent["n"]
            checkpoint(i, packets, result)
            data = rng.choice(requests) if i % 10 == 0 else garbage(rng, SEEDS["tftp"])
            # 500 client addresses on loopback: nobody listens there, so transfers end at once
            server.datagramReceived(data, (f"127.0.{1 + i % 2}.{1 + i % 250}", 40000 + i % 1000))
            sent["n"] += 1
        reactor.callLater(0.01 if sent["n"] < packets else 1.0, chunk if sent["n"] < packets else finish)

    def finish() -> None:
        gc.collect()
        result["end"], result["peak"] = tracemalloc.get_traced_memory()
        result["sessions"] = len(server.sessions)
        if os.environ.get("MEMORY_PROBE_TOP"):
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
                print(stat, file=sys.stderr)
        port.stopListening()
        reactor.stop()

    reactor.callWhenRunning(chunk)
    reactor.run()
    return result


if __name__ == "__main__":
    start_logging("json", "info", open(os.devnull, "w"))  # as the daemon does, to nowhere
    target, count = sys.argv[1], int(sys.argv[2])
    print(json.dumps({"dhcp": dhcp, "tftp": tftp}[target](count)))
