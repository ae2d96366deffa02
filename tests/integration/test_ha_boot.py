"""Active-active HA with real firmware: two netbootd (10.77.0.2 and 10.77.0.3) on one segment,
same machine files, same http.signing_key_file (fixture lab_pair). Both answer the machine's
DHCP; its firmware takes the first OFFER and boots from that host. The machine file sends the
guest for its Ignition to the OTHER host, with the URL the first host signed: the boot succeeds
only if that host verifies the first one's signature."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import BOOT_IP, HTTP_PORT, PEER_IP, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:30"
IGNITION = {"ignition": {"version": "3.4.0"}, "netbootd_marker": "vm-ha-cross-host"}
BASES = {ip: f"http://{ip}:{HTTP_PORT}" for ip in (BOOT_IP, PEER_IP)}


def test_bios_boot_fetches_ignition_from_the_other_host(lab_pair):
    need("bios")
    lab = lab_pair
    a, b = BASES[BOOT_IP], BASES[PEER_IP]
    # One machine file for both hosts: `server` is the host that renders the script, so the
    # Ignition URL it signed is pointed at the other host.
    other_host = f"ignition_url | replace(server, '{b}' if server == '{a}' else '{a}')"
    lab.machine(
        MAC,
        f"""\
        [vars]
        hostname = "vm-ha"
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1 quiet nbd_host={{{{ hostname }}}} nbd_ign={{{{ {other_host} }}}}"
        [ignition]
        inline = '{json.dumps(IGNITION)}'
        """,
    )
    lab.start_netbootd()
    marker = lab.booted(MAC, "bios")

    logs = {BOOT_IP: lab.netbootd_log(), PEER_IP: lab.peer.text()}  # type: ignore[union-attr]
    for host, log in logs.items():  # both answered the firmware's DHCP, each with its own host
        assert re.search(rf"dhcp answered mac={MAC} .*offered=\"ipxe-script {re.escape(BASES[host])}/ipxe", log), host
    served = [host for host, log in logs.items() if re.search(rf"script sent mac={MAC}", log)]
    assert len(served) == 1, served  # the firmware took one OFFER and booted from that host
    script_host = served[0]
    other = PEER_IP if script_host == BOOT_IP else BOOT_IP
    # the guest fetched, from the other host, the URL the script's host signed...
    ign = next(w for w in marker.cmdline.split() if w.startswith("nbd_ign="))
    assert re.fullmatch(
        re.escape(f"nbd_ign={BASES[other]}/ignition?mac={MAC.replace(':', '-')}&exp=") + r"\d+&sig=[0-9a-f]{32}", ign
    ), marker.cmdline
    assert json.loads(marker.ignition) == IGNITION  # ...and got it: the signature verified there
    assert re.search(rf"ignition sent mac={MAC}", logs[other]), logs[other]
    assert "ignition sent" not in logs[script_host] and "ignition refused" not in logs[other]
    key_ids = {m.group(1) for log in logs.values() for m in re.finditer(r"key_id=(\w+)", log)}
    assert len(key_ids) == 1, key_ids
