"""x86-64 UEFI HTTP boot through a UKI netbootd assembles (netbootd.core.loaders.uki): OVMF HTTP boot
of a kernel machine whose file says `loader = "uki"`, on systemd's x86-64 stub at its default path
(Debian's systemd-boot-efi). The arm64 boot of the same path, on the defaults, is test_arm64.py's.
"""

from __future__ import annotations

import json

import pytest

from netbootd.testing.tryboot import preflight

from .conftest import BOOT_IP, HTTP_PORT, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:51"


def test_http_boot_assembled_uki(lab):
    """OVMF HTTP boot (arch 16) → proxy OFFER with /uki/<mac>/efi64.efi → netbootd assembles the
    test kernel + initramfs + the machine's rendered command line on linuxx64.efi.stub → the
    firmware runs it → the marker with this machine's values; no iPXE anywhere."""
    need("uefi-http")
    stub = lab.settings.uki.efi64_stub
    if not stub.is_file():
        pytest.fail(f"{stub} is missing: apt-get install systemd-boot-efi (.ci/run installs it)")
    lab.machine(MAC, """\
        loader = "uki"
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.cpio.gz"]
        cmdline = "console=ttyS0 panic=-1 quiet nbd_host=uki51 nbd_ign={{ ignition_url }}"
        [ignition]
        inline = '{"ignition": {"version": "3.4.0"}, "netbootd_marker": "uki51-ign"}'
        """)
    path = f"/uki/{MAC.replace(':', '-')}/efi64.efi"
    url = f"http://{BOOT_IP}:{HTTP_PORT}{path}"
    assert f"http-efi {url}" in preflight(str(lab.settings_path), MAC, "uefi-http"), "not offered the assembled UKI"
    lab.start_netbootd()
    marker = lab.booted(MAC, "uefi-http")
    assert marker.mac == MAC
    assert "nbd_host=uki51" in marker.cmdline.split(), marker.cmdline
    assert json.loads(marker.ignition)["netbootd_marker"] == "uki51-ign", marker.ignition
    log = lab.netbootd_log()
    assert f'firmware=http-boot offered="http-efi {url}"' in log, "HTTP boot was not offered the assembled UKI"
    assert "uki assembled" in log and "arch=efi64" in log
    assert "firmware=ipxe" not in log and "snponly.efi" not in log, "iPXE ran: not the UKI path"
    events = lab.get_json(f"/machines/{MAC}")["events"]
    assert any(e["stage"] == "http" and e.get("path") == path and e.get("role") == "efi" for e in events), events
