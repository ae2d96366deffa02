"""Helpers more than one test package uses (fixtures stay in conftest.py): the captured EDK2 4011
REQUEST, whether this host has IPv6 loopback, a UDP port another program holds, and the marks of
tests that make network namespaces."""

from __future__ import annotations

import functools
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dpkt
import pytest

from tests.conftest import SHARED

# NETBOOTD_SHARED: the shared/ directory when it is not beside the checkout (a worktree elsewhere)
EDK2_PXE_CAPTURE = Path(os.environ.get("NETBOOTD_SHARED", SHARED)) / "captures" / "proxy-uefi-edk2-pxe.pcap"

# tests that make network namespaces (netbootd.testing.netns.Topology)
NETNS = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]


def need_capture() -> None:
    if not EDK2_PXE_CAPTURE.exists():
        pytest.skip(f"captures not found at {EDK2_PXE_CAPTURE} (the repo expects ../shared beside it)")


def captured_udp(capture: Path = EDK2_PXE_CAPTURE) -> Iterator[dpkt.udp.UDP]:
    """The UDP datagrams of a capture, in order."""
    with open(capture, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(frame).data.data
            if isinstance(udp, dpkt.udp.UDP):
                yield udp


@functools.cache  # read once: the dashboard tests send it thousands of times
def _edk2_request_4011() -> bytes:
    udp = next((udp for udp in captured_udp() if udp.dport == 4011), None)
    assert udp is not None, "no 4011 request in the capture"
    return bytes(udp.data)


def request_4011(mac: str) -> bytes:
    """EDK2's real REQUEST to the boot server (UDP 4011), byte for byte, but for its chaddr: `mac`."""
    packet = bytearray(_edk2_request_4011())
    packet[28:34] = bytes.fromhex(mac.replace(":", ""))  # chaddr: another machine, same firmware
    return bytes(packet)


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (a container may have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@contextmanager
def held_udp_port(address: str = "0.0.0.0") -> Iterator[int]:
    """A UDP port on `address` held as a plain server holds it (without SO_REUSEADDR): its number."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((address, 0))
        yield holder.getsockname()[1]
