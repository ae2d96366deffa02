"""Real firmware network-boots QEMU machines from netbootd (see conftest.py for the lab)."""

from __future__ import annotations

import json

import pytest

from .conftest import BOOT_IP, HTTP_PORT, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:10"


def ignition(marker) -> dict:
    return json.loads(marker.ignition)


def assert_booted(marker, mac: str, hostname: str, secret: str) -> None:
    assert marker.mac == mac
    assert marker.ip.startswith("10.77.0."), marker  # a lease from the site's server
    words = marker.cmdline.split()
    assert f"nbd_host={hostname}" in words, marker.cmdline
    assert f"nbd_ign=http://{BOOT_IP}:{HTTP_PORT}/ignition?mac={mac.replace(':', '-')}" in words, marker.cmdline
    assert "initrd=initrd" in words, marker.cmdline
    assert ignition(marker) == {"ignition": {"version": "3.4.0"}, "netbootd_marker": secret}


def test_bios_ipxe_rom(lab):
    """SeaBIOS + the NIC's iPXE ROM → proxy DHCP on 67 → HTTP script → kernel + initrd."""
    need("bios")
    lab.kernel_machine(MAC, "vm10", "vm10-secret")
    lab.start_netbootd()
    marker = lab.boot(MAC, "bios")
    assert_booted(marker, MAC, "vm10", "vm10-secret")
    log = lab.netbootd_log()
    assert "firmware=ipxe" in log and "arch=bios" in log, "netbootd's DHCP answer to the iPXE ROM not logged"
