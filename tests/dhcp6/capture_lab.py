"""Capture real OVMF DHCPv6 datagrams in an IPv6-only lab (root, QEMU, OVMF, dnsmasq, tcpdump):

    python -m tests.dhcp6.capture_lab [--out tests/dhcp6/captures]

Boots one machine with OVMF PXE over IPv6 (uefi6) and one with OVMF HTTP boot over IPv6
(uefi-http6) against netbootd in `netbootd.testing.Lab(ipv6=True)`, each to the test guest's marker,
and writes the DHCPv6 datagrams of each boot (UDP 546, 547 and 4011 on the bridge: the firmware,
iPXE, the site's dnsmasq and netbootd) as `lab6-uefi-pxe.pcap` and `lab6-uefi-http-boot.pcap`.
Then `python -m tests.dhcp6.extract_fixtures --lab` turns them into fixtures/lab6/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOOTS = {  # capture name: (machine, firmware kind)
    "lab6-uefi-pxe": ("52:54:00:66:00:01", "uefi6"),
    "lab6-uefi-http-boot": ("52:54:00:66:00:02", "uefi-http6"),
}
DHCP6_FILTER = "udp and (port 546 or port 547 or port 4011)"


def capture(name: str, mac: str, firmware: str, out: Path) -> None:
    from tests.integration.conftest import ASSETS, MARKER, Assets, ProjectLab

    with tempfile.TemporaryDirectory(prefix="netbootd-capture6-") as tmp:
        lab = ProjectLab(Path(tmp), Assets(ASSETS / "vmlinuz", ASSETS / "initrd.cpio.gz"), ipv6=True)
        with lab:
            lab.kernel_machine(mac, name, f"{name}-marker")
            lab.start_netbootd()
            result = lab.boot(mac, firmware, MARKER)
            if not result.booted:
                sys.exit(f"{name}: {mac} did not boot ({result.reason}):\n{lab.report()}")
        dest = out / f"{name}.pcap"
        subprocess.run(["tcpdump", "-r", str(lab.pcap), "-w", str(dest), DHCP6_FILTER], check=True,
                       capture_output=True, timeout=60)
        print(f"{dest}: {mac} ({firmware}) booted in {result.seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "captures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (mac, firmware) in BOOTS.items():
        capture(name, mac, firmware, args.out)


if __name__ == "__main__":
    main()
