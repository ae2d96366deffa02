"""Real firmware network-boots QEMU machines from netbootd (see conftest.py for the lab)."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import BOOT_IP, HTTP_PORT, SITE_IP, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:10"


def ignition(marker) -> dict:
    return json.loads(marker.ignition)


def assert_booted(marker, mac: str, hostname: str, secret: str, boot_ip: str = BOOT_IP) -> None:
    assert marker.mac == mac
    assert marker.ip.startswith("10.77.0."), marker  # a lease from the site's server
    words = marker.cmdline.split()
    assert f"nbd_host={hostname}" in words, marker.cmdline
    # the Ignition URL is signed for this machine (exp + HMAC), and the machine fetched it with that
    signed = re.compile(
        re.escape(f"nbd_ign=http://{boot_ip}:{HTTP_PORT}/ignition?mac={mac.replace(':', '-')}&exp=") + r"\d+&sig=[0-9a-f]{32}$"
    )
    assert any(signed.match(w) for w in words), marker.cmdline
    assert "initrd=initrd" in words, marker.cmdline
    assert ignition(marker) == {"ignition": {"version": "3.4.0"}, "netbootd_marker": secret}


def test_bios_ipxe_rom(lab):
    """SeaBIOS + the NIC's iPXE ROM → proxy DHCP on 67 → HTTP script → kernel + initrd."""
    need("bios")
    lab.kernel_machine(MAC, "vm10", "vm10-secret")
    lab.start_netbootd()
    marker = lab.booted(MAC, "bios")
    assert_booted(marker, MAC, "vm10", "vm10-secret")
    log = lab.netbootd_log()
    assert "firmware=ipxe" in log and "arch=bios" in log, "netbootd's DHCP answer to the iPXE ROM not logged"
    lab.assert_no_ack_on_67()  # iPXE boots from the proxy OFFER; its REQUEST is the site server's


def check_edk2_pxe_path(lab) -> None:
    log = lab.netbootd_log()
    assert "firmware=efi-pxe" in log and "port=4011" in log, "no 4011 answer to EDK2's PXE in netbootd's log"
    assert re.search(r"tftp transfer completed .*file=snponly.efi", log), "no completed TFTP transfer of snponly.efi"
    assert "firmware=http-boot" not in log, "the machine booted through OVMF's HTTP boot fallback, not PXE"
    # OVMF's size probe (tsize from the OACK, then ERROR 8) is a normal step: a debug line, not a failure
    assert re.search(r"debug tftp tftp size probe answered .*file=snponly.efi", log), "no size probe logged"
    assert "tftp transfer failed" not in log and "aborted_after_oack" not in log, log
    # and in the timeline, whose every request here is attributed to the machine
    doc = lab.get_json(f"/machines/{MAC}")
    tftp = [e for e in doc["events"] if e["stage"] == "tftp"]
    assert [e.get("probe", False) for e in tftp] == [True, False], doc
    assert not any("error" in e for e in doc["events"]), doc
    stages = [e["stage"] for e in doc["events"]]
    assert set(stages[: stages.index("tftp")]) == {"dhcp"} and stages[-1] == "ignition", stages  # 67/4011, probe
    assert stages.index("script") < stages.index("http") < stages.index("beacon"), stages
    assert doc["stage"] == "ignition", doc  # fetched by the booted guest, after the script's beacon
    assert lab.get_json("/machines")["unattributed"] == []
    # A proxy ACK to EDK2's REQUEST on 67 loses the boot only when it beats the site's (PXE-E07):
    # the capture shows whether one was sent at all, whoever won this time.
    lab.assert_no_ack_on_67()


def test_uefi_edk2_pxe(lab_separate_host):
    """OVMF's own PXE (no NIC ROM) → proxy OFFER without a file → REQUEST/ACK on 4011 → TFTP of
    snponly.efi → iPXE asks again (user class iPXE) → HTTP script → kernel + initrd.
    netbootd on a host of its own (one address)."""
    need("uefi")
    lab = lab_separate_host
    lab.kernel_machine(MAC, "vm10", "vm10-uefi-pxe")
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-pxe")
    assert_booted(marker, MAC, "vm10", "vm10-uefi-pxe")
    check_edk2_pxe_path(lab)


def test_uefi_edk2_pxe_shared_host(lab):
    """The same boot, netbootd sharing the site DHCP server's host (a second address on br0).
    EDK2 drops TFTP answers that come from another address than the one it asked (it sends
    ICMP port unreachable): the transfer sessions must answer from 10.77.0.2, not br0's
    primary 10.77.0.1 (fixed in netbootd/tftp with IP_PKTINFO on the port-69 listener)."""
    need("uefi")
    lab.kernel_machine(MAC, "vm10", "vm10-uefi-pxe")
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-pxe")
    assert_booted(marker, MAC, "vm10", "vm10-uefi-pxe")
    check_edk2_pxe_path(lab)


def test_uefi_edk2_pxe_shared_address(lab_shared_address):
    """The same boot, netbootd on the site DHCP server's host AND address (10.77.0.1, advertise
    empty), as a new user would set it up. EDK2 takes the first ACK whose server id is the one it
    REQUESTed; an ACK from netbootd (same id, no address) made it DECLINE the lease (PXE-E07)
    in about one boot in ten. netbootd must answer nothing to that REQUEST."""
    need("uefi")
    lab = lab_shared_address
    lab.kernel_machine(MAC, "vm10", "vm10-uefi-pxe")
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-pxe")
    assert_booted(marker, MAC, "vm10", "vm10-uefi-pxe", boot_ip=SITE_IP)
    check_edk2_pxe_path(lab)
    server_ids = {p.server_id for p in lab.dhcp_packets() if p.op == 2}  # every answer, site's and ours
    assert server_ids == {SITE_IP}, f"not one shared address: {server_ids}"


def test_uefi_http_boot(lab):
    """OVMF HTTP boot (PXE disabled) → proxy OFFER with HTTPClient and an http:// URL →
    /boot/snponly.efi over HTTP → iPXE → HTTP script → kernel + initrd."""
    need("uefi")
    lab.kernel_machine(MAC, "vm10", "vm10-uefi-http")
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-http")
    assert_booted(marker, MAC, "vm10", "vm10-uefi-http")
    log = lab.netbootd_log()
    assert "firmware=http-boot" in log, "no answer to the HTTPClient in netbootd's log"
    assert "firmware=efi-pxe" not in log and "tftp transfer" not in log, "PXE was not disabled"


MAC_A = "52:54:00:77:00:21"
MAC_B = "52:54:00:77:00:22"


def test_per_machine_data(lab):
    """Two machines booting at the same time each get their own command line and Ignition."""
    need("bios")
    lab.kernel_machine(MAC_A, "alpha", "alpha-secret", extra=" nbd_role=control")
    lab.kernel_machine(MAC_B, "beta", "beta-secret", extra=" nbd_role=worker")
    lab.start_netbootd()
    a, b = lab.booted_many([(MAC_A, "bios"), (MAC_B, "bios")])
    assert_booted(a, MAC_A, "alpha", "alpha-secret")
    assert_booted(b, MAC_B, "beta", "beta-secret")
    assert "nbd_role=control" in a.cmdline.split() and "nbd_role=worker" in b.cmdline.split()
    assert "beta" not in a.cmdline + a.ignition and "alpha" not in b.cmdline + b.ignition
    assert a.ip != b.ip


MAC_IGNORED = "52:54:00:77:00:31"
MAC_UNKNOWN = "52:54:00:77:00:32"


def test_ignored_and_unknown_machines_do_not_boot(lab):
    """boot.ignore = true, and a MAC with no file and no default.toml: netbootd stays silent,
    the iPXE ROM gets only the site's address, SeaBIOS gives up and QEMU ends without a marker."""
    need("bios")
    lab.machine(MAC_IGNORED, "[boot]\nignore = true\n")
    lab.kernel_machine(MAC_A, "alpha", "alpha-secret")  # a bootable machine, so the catalog is not empty
    lab.start_netbootd()
    ignored, unknown = lab.not_booted_many([(MAC_IGNORED, "bios"), (MAC_UNKNOWN, "bios")], timeout=60)
    for boot in (ignored, unknown):
        assert not boot.timed_out, f"{boot.mac}: QEMU did not end by itself: {boot.reason}"
        serial = boot.console
        assert re.search(rf"Configuring \(net0 {boot.mac}\)\.+ ok", serial), f"{boot.mac}: no address from the site"
        assert "Filename:" not in serial and "Nothing to boot" in serial, f"{boot.mac}: was given something to boot"
    log = lab.netbootd_log()
    mac_ignored = MAC_IGNORED.replace(":", "-")
    assert re.search(rf"not answered: {mac_ignored}: boot.ignore = true .*mac={MAC_IGNORED}", log), log
    assert re.search(rf"not answered: unknown machine and no default.toml .*mac={MAC_UNKNOWN}", log), log
    assert not re.search(rf"answered .*mac=({MAC_IGNORED}|{MAC_UNKNOWN})", log.replace("not answered", "")), log
    assert "script sent" not in log and "tftp transfer" not in log


def test_hot_reload(lab):
    """Change a machine's file while netbootd runs: the next boot gets the new configuration."""
    need("bios")
    path = lab.kernel_machine(MAC, "vm10", "generation-1", extra=" nbd_gen=1")
    lab.start_netbootd()
    first = lab.booted(MAC, "bios")
    assert_booted(first, MAC, "vm10", "generation-1")
    assert "nbd_gen=1" in first.cmdline.split()

    before = len(lab.netbootd_log())
    text = path.read_text().replace("nbd_gen=1", "nbd_gen=2").replace("generation-1", "generation-2")
    text = text.replace('hostname = "vm10"', 'hostname = "vm10-renamed"')
    path.write_text(text)  # in place, as an editor would
    lab.wait_log(rf'configuration reloaded trigger="file change" .*errors=0 .*changed="{MAC.replace(":", "-")}.toml changed"',
                 after=before)

    second = lab.booted(MAC, "bios")
    assert_booted(second, MAC, "vm10-renamed", "generation-2")
    words = second.cmdline.split()
    assert "nbd_gen=2" in words and "nbd_gen=1" not in words


def test_broken_new_file_gets_nothing_not_the_default_then_boots_when_fixed(lab):
    """A new machine file with an error: the machine is held — no answer at all, although a
    default.toml that would boot it exists — and once the file is fixed it boots its own config."""
    need("bios")
    lab.machine("default", """\
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1 quiet nbd_host=THE-DEFAULT"
        """)
    path = lab.machine(MAC, """\
        [vars]
        hostname = "vm10"
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1 quiet nbd_host={{ hostnmae }}"
        """)
    lab.start_netbootd(check_config=False)
    held = lab.not_booted(MAC, "bios", timeout=60)
    assert not held.timed_out and "Nothing to boot" in held.console
    log = lab.netbootd_log()
    assert re.search(rf"not answered: held: {re.escape(str(path))}:6: boot.cmdline: 'hostnmae' is undefined.*mac={MAC}",
                     log), log
    assert "THE-DEFAULT" not in log and "script sent" not in log

    before = len(lab.netbootd_log())
    lab.kernel_machine(MAC, "vm10", "fixed-secret")
    lab.wait_log(r"configuration reloaded .*changed=.*52-54-00-77-00-10.toml", after=before)
    assert_booted(lab.booted(MAC, "bios"), MAC, "vm10", "fixed-secret")
