"""The Debian installer on arm64: an AAVMF machine HTTP-boots the kernel and initrd of Debian's
debian-installer-12-netboot-arm64 package (assets.sh takes them out of the package into
.assets/arm64/d-i; the machine file names them by host path, as the amd64 example machine names the
installed package's files) on the defaults: no arm64 iPXE, so netbootd offers a UKI it assembles of
the installer's kernel, initrd.gz and rendered command line. The installer fetches the shipped
preseed (etc/netbootd/files/d-i/preseed.cfg) from netbootd, applies it, and stops where an installer
without an archive mirror stops, as tests/integration/test_debian_installer.py's amd64 machine does.

`slow`: minutes under TCG (a 33 MB kernel and a 40 MB initrd over emulated arm64); the
representative amd64 installer boot runs in the default run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs
import pytest

from netbootd.testing.tryboot import preflight

from .conftest import ASSETS_SCRIPT, BOOT_IP, HTTP_PORT
from .test_arm64 import ARM64, arm64, need_arm64, skip_or_fail  # noqa: F401 (arm64: the fixture, used below)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:a6:40:08"
DI = ARM64 / "d-i"
PRESEED = REPO / "etc" / "netbootd" / "files" / "d-i" / "preseed.cfg"


def installer_files() -> tuple[str, str]:
    """assets.sh's copy of the package's netboot kernel and initrd, or skip saying why there is none."""
    kernel, initrd = DI / "linux", DI / "initrd.gz"
    if not (kernel.is_file() and initrd.is_file()):
        why = ARM64 / "d-i.unavailable"
        skip_or_fail(f"{ASSETS_SCRIPT} did not fetch debian-installer-12-netboot-arm64: "
                     f"{why.read_text().strip() if why.is_file() else 'no ' + str(DI)}")
    return str(kernel), str(initrd)


@pytest.mark.usefixtures("arm64")  # the arm64 assets (stub, firmware files), or skip saying why not
def test_http_boot_of_the_installer_applies_netbootds_preseed(lab):
    need_arm64("arm64-http")
    kernel, initrd = installer_files()
    s = lab.settings
    assert s.ipxe.arm64 == "", "not the default settings: an arm64 iPXE is configured"
    lab.write_settings(attrs.evolve(s, uki=attrs.evolve(s.uki, arm64_stub=ARM64 / "linuxaa64.efi.stub")))
    (lab.files / "d-i").mkdir()
    shutil.copy(PRESEED, lab.files / "d-i" / "preseed.cfg")
    # The example machine's command line (etc/netbootd/machines/52-54-00-00-00-08.toml), on arm64's console.
    lab.machine(MAC, f'''\
        [vars]
        hostname = "debian-arm-08"
        [boot]
        kernel = "{kernel}"
        initrds = ["{initrd}"]
        cmdline = """auto=true priority=critical url={{{{ file("d-i/preseed.cfg") }}}} interface=auto \\
        hostname={{{{ hostname }}}} lowmem/low=1 netcfg/get_nameservers=127.0.0.1 \\
        mirror/http/hostname={{{{ server | replace("http://", "") }}}} netbootd_beacon={{{{ beacon_url }}}} \\
        console=ttyAMA0 DEBIAN_FRONTEND=text"""
        ''')
    path = f"/uki/{MAC.replace(':', '-')}/arm64.efi"
    assert f"http-efi http://{BOOT_IP}:{HTTP_PORT}{path}" in preflight(str(lab.settings_path), MAC, "arm64-http"), \
        "not offered the assembled UKI"
    lab.start_netbootd()
    # 2 GiB: room for the firmware's copy of the whole UKI (73 MB) beside the installer's unpacked initrd
    (result,) = lab.boot_many([(MAC, "arm64-http")], expect="Bad archive mirror", timeout=1500,
                              fail="Kernel panic - not syncing", memory="2G")
    assert result.booted, f"{result.reason}; stopped after {result.stopped_at()}\n{result.console[-4000:]}"

    log = lab.netbootd_log()
    assert "uki assembled" in log and "arch=arm64" in log, "netbootd did not assemble the UKI"
    events = lab.get_json(f"/machines/{MAC}")["events"]
    served = [e.get("bytes", 0) for e in events if e["stage"] == "http" and e.get("path") == path]
    assert max(served, default=0) > DI.joinpath("linux").stat().st_size + DI.joinpath("initrd.gz").stat().st_size, \
        served  # the whole UKI (EDK2 asks HEAD, then GET)
    # the preseed was fetched from netbootd's files ...
    fetched = [e for e in events if e.get("path") == "/files/d-i/preseed.cfg" and e.get("file") == "d-i/preseed.cfg"]
    assert fetched, [e.get("path") for e in events]
    # ... and applied: its early_command printed this machine's hostname (its [vars]) and sent a
    # beacon, and its archive settings sent the installer to netbootd's /files/debian
    console = result.console
    assert "netbootd: preseed applied for debian-arm-08" in console, console[-4000:]
    assert any(e["stage"] == "beacon" and e.get("beacon") == "preseed" for e in events), [e["stage"] for e in events]
    assert any(e.get("path") == "/files/debian/dists/bookworm/Release" and e.get("status") == 404 for e in events), \
        [e.get("path") for e in events]
    # nothing was asked before the mirror error (lowmem/low=1, the name servers on the command line)
    after = console[console.index("netbootd: preseed applied"):]
    assert "low memory" not in after.lower() and "name server addresses" not in after.lower(), after[-4000:]
    assert after.index("netbootd: preseed applied") < after.index("Bad archive mirror")
    print(f"\n  arm64 HTTP boot to 'Bad archive mirror': {result.seconds:.0f} s")
