"""Shared fixtures of the DHCPv6 tests: the captured firmware datagrams committed under fixtures/."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from netbootd.dhcp6 import codec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LAB_FIXTURES = FIXTURES / "lab6"  # netbootd's IPv6-only lab (tests/dhcp6/capture_lab.py)
_NAME = re.compile(r"^(?P<capture>[\w-]+)\.(?P<frame>\d+)\.(?P<sport>\d+)-(?P<dport>\d+)\.(?P<kind>[\w-]+)\.bin$")

MAC = "52:54:00:99:00:41"  # the machine of every DHCPv6 capture
CLIENT_DUID = {  # its DUID-LLT per capture (EDK2 makes a new one each boot: the time differs)
    "proxy6-uefi-pxe-4011": bytes.fromhex("0001000131e729d3525400990041"),
    "proxy6-uefi-http-boot": bytes.fromhex("0001000131e729ff525400990041"),
    "full6-uefi-pxe-shim-grub": bytes.fromhex("0001000131e728c1525400990041"),
}


@attrs.frozen
class Fixture:
    name: str
    capture: str
    frame: int
    sport: int
    dport: int
    kind: str
    payload: bytes

    @property
    def from_client(self) -> bool:
        # 4011 ↔ 4011 carries both directions: EDK2's REQUEST and the proxy's REPLY.
        return self.dport == codec.SERVER_PORT or (self.dport == codec.BOOT_SERVER_PORT and self.kind == "request")

    @property
    def accept(self) -> frozenset[int]:
        """What the receiving side's port takes (the `accept=` of codec.decode)."""
        if not self.from_client:
            return codec.FROM_SERVER
        return codec.TO_BOOT_SERVER if self.dport == codec.BOOT_SERVER_PORT else codec.TO_SERVER

    def decode(self) -> codec.Message | codec.Relay:
        return codec.decode(self.payload, accept=self.accept)


def fixtures(directory: Path = FIXTURES) -> list[Fixture]:
    """The shared captures' fixtures (or, `directory=LAB_FIXTURES`, those of netbootd's own lab)."""
    out = []
    for path in sorted(directory.glob("*.bin")):
        m = _NAME.match(path.name)
        assert m, f"fixture name not understood: {path.name}"
        out.append(
            Fixture(
                path.name,
                m["capture"],
                int(m["frame"]),
                int(m["sport"]),
                int(m["dport"]),
                m["kind"],
                path.read_bytes(),
            )
        )
    return out


def fixture(capture: str, frame: int) -> Fixture:
    directory = LAB_FIXTURES if capture.startswith("lab6-") else FIXTURES
    (found,) = [f for f in fixtures(directory) if f.capture == capture and f.frame == frame]
    return found


def client_messages() -> list[Fixture]:
    return [f for f in fixtures() if f.from_client]


def fixture_id(f: Fixture) -> str:
    return f"{f.capture}#{f.frame}-{f.kind}"
