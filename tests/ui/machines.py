"""Scripted machines for the dashboard tests: each step is what firmware and iPXE send.

DHCP: EDK2's real 4011 REQUEST from ../shared/captures with the MAC rewritten, sent from the
machine's own loopback address (127.0.0.x), as tests/production/test_timeline.py does; TFTP with
tftpy's client; the script, files and beacon with httpx, from the same address.
"""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt
import httpx
import pytest
import tftpy

from tests.helpers import need_capture, request_4011

IPXE_EFI = Path("/usr/lib/ipxe/snponly.efi")


def need_captures() -> None:
    need_capture()
    if not IPXE_EFI.exists():
        pytest.skip(f"Debian's ipxe package is not installed ({IPXE_EFI})")


class ScriptedMachine:
    def __init__(self, daemon, mac: str, address: str) -> None:
        self.daemon, self.mac, self.address = daemon, mac, address
        self.dashed = mac.replace(":", "-")

    def dhcp(self, expect_answer: bool = True) -> dpkt.dhcp.DHCP | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.address, 0))
            s.settimeout(3 if expect_answer else 1)
            s.sendto(request_4011(self.mac), ("127.0.0.1", self.daemon.proxy_port))
            try:
                reply = dpkt.dhcp.DHCP(s.recvfrom(2048)[0])
            except TimeoutError:
                assert not expect_answer, f"{self.mac}: no DHCP answer on 4011"
                return None
        assert expect_answer, f"{self.mac}: answered, but must not be"
        return reply

    def tftp(self, name: str, out: Path) -> None:
        tftpy.TftpClient("127.0.0.1", self.daemon.tftp_port, localip=self.address).download(name, str(out), timeout=5)

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=self.address), timeout=10) as client:
            return client.get(self.daemon.url + path)

    def script(self) -> str:
        r = self.get(f"/ipxe?mac={self.dashed}&arch=efi64")
        assert r.status_code == 200, r.text
        return r.text

    def beacon(self, stage: str = "loaded") -> None:
        assert self.get(f"/beacon?mac={self.dashed}&stage={stage}").status_code == 200
