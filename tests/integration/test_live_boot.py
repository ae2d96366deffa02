"""A real operating system through netbootd: the generic Debian live system deploy/os/build-live.sh
builds (kernel, dracut initramfs, squashfs root over HTTP: `root=live:{{ file(...) }}`), on real
firmware, until that system's own service prints its marker on the console.

- the live system on SeaBIOS + iPXE, OVMF PXE and OVMF HTTP boot: its service prints the machine's
  `[vars]` value that netbootd put on the kernel command line, and netbootd served the squashfs;
- real Ignition (Debian's, in the initramfs) on two machines at once: each fetches its own signed
  config from netbootd and gets its own file and systemd unit into the live root, whose unit prints
  that machine's value; the signed URL one machine was given is refused for the other;
- the live system as the installer of the lifecycle (`[lifecycle] once`): it writes the disk image
  to the machine's disk, calls its done URL, reboots, and the machine boots its disk.

The assets are built once (cached) by deploy/os/build-live.sh into .assets/live; when they cannot be
built here (no root, no mmdebstrap or squashfs-tools, apt cannot reach Debian's packages) these tests
skip, and under CI=true they fail (CI installs what they need).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from .conftest import ASSETS, ProjectLab, need
from .test_lifecycle_boot import DISK_OK, disk_image, disk_seconds

# a cold build of the live system (minutes) runs in the first test that needs it, when .ci/run has not
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

BUILDER = Path(__file__).resolve().parents[2] / "deploy" / "os" / "build-live.sh"
LIVE = ASSETS / "live"
FILES = ("vmlinuz", "initrd.img", "initrd-ignition.img", "rootfs.squashfs")

LIVE_OK = r"NETBOOTD-LIVE-OK nbd_marker=(?P<value>\S*)"
# a value, not the unit's own text (`value=$$(cat ...`), which Ignition's log on the console may show
IGNITION_OK = r"NETBOOTD-IGNITION-OK value=(?P<value>[\w-]+)"
# a boot that went wrong says so early: stop there rather than at the timeout
BROKEN = r"Kernel panic - not syncing|Entering emergency mode|dracut: FATAL|Failed to start ignition-\S+"
TIMEOUT = 420  # generous: TCG on a shared 2-core machine (90-140 s per boot measured at load 5-9)

# The live system's command line: dracut fetches the squashfs from netbootd's files
# (`file()` gives its URL), the overlay makes the root writable.
LIVE_CMDLINE = ("rd.neednet=1 ip=dhcp root=live:{{ file(\"rootfs.squashfs\") }} rd.live.overlay.overlayfs=1 "
                "console=ttyS0")
LIVE_MACHINE = """\
[vars]
marker = "{value}"
[boot]
kernel = "vmlinuz"
initrds = ["initrd.img"]
cmdline = '{cmdline} nbd_marker={{{{ vars.marker }}}}'
"""


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run builds the live system; these tests must not skip there)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def live_assets(assets) -> Path:
    """deploy/os/build-live.sh's output (built or brought up to date here: seconds when cached)."""
    proc = subprocess.run([str(BUILDER), str(LIVE)], capture_output=True, text=True, timeout=3600)
    why = LIVE / "unavailable"
    if proc.returncode != 0:
        if why.is_file():
            skip_or_fail(f"{BUILDER} could not build the live system: {why.read_text().strip()}")
        pytest.fail(f"{BUILDER} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    absent = [name for name in FILES if not (LIVE / name).is_file()]
    if absent:
        pytest.fail(f"{BUILDER} ran but left out {', '.join(absent)}")
    return LIVE


def serve(lab: ProjectLab, live: Path, *names: str) -> None:
    """The live system's files in the lab's files directory: hard links (100 MB copied per test is
    slow), copies across file systems."""
    for name in names:
        target = lab.files / name
        target.unlink(missing_ok=True)
        try:
            os.link(live / name, target)
        except OSError:
            target.write_bytes((live / name).read_bytes())


def squashfs_downloads(lab: ProjectLab, mac: str) -> list[dict]:
    """netbootd's timeline: the finished HTTP downloads of rootfs.squashfs by this machine."""
    events = lab.get_json(f"/machines/{mac}")["events"]
    return [e for e in events if e["stage"] == "http" and e.get("file") == "rootfs.squashfs" and e.get("bytes")]


@pytest.mark.parametrize("firmware", ["bios", "uefi", "uefi-http"], ids=["bios-ipxe", "ovmf-pxe", "ovmf-http"])
def test_live_system_boots_and_prints_its_machines_value(lab, live_assets, firmware):
    need(firmware)
    serve(lab, live_assets, "vmlinuz", "initrd.img", "rootfs.squashfs")
    mac = {"bios": "52:54:00:24:00:01", "uefi": "52:54:00:24:00:02"}.get(firmware, "52:54:00:24:00:03")
    value = f"live-{firmware}-{mac[-2:]}"
    lab.machine(mac, LIVE_MACHINE.format(value=value, cmdline=LIVE_CMDLINE))
    result = lab.boot(mac, firmware, LIVE_OK, TIMEOUT, fail=BROKEN, memory="1G")
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    # the live root's own service (nbd-live.service, in the squashfs) read the value from /proc/cmdline
    assert re.search(LIVE_OK, result.match).group("value") == value
    downloads = squashfs_downloads(lab, mac)
    size = (live_assets / "rootfs.squashfs").stat().st_size
    assert downloads and downloads[-1]["bytes"] == size, f"netbootd served no whole rootfs.squashfs: {downloads}"
    print(f"\n{firmware}: power-on to the live system's marker {result.seconds:.1f} s; rootfs.squashfs "
          f"{size / 1e6:.1f} MB at {downloads[-1].get('mbps')} MB/s")


# ---------------------------------------------------------------------------------- Ignition


def ignition_config(value: str) -> str:
    """A machine's Ignition (spec 3.3.0, what Ignition 2.14 takes): a file holding its value and a
    unit that prints it on the console, enabled."""
    unit = ("[Unit]\nDescription=netbootd test: the value Ignition wrote\n\n[Service]\nType=oneshot\n"
            "ExecStart=/bin/sh -c 'echo NETBOOTD-IGNITION-OK value=$$(cat /etc/nbd-ignition/value) > /dev/console'\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
    return json.dumps({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/etc/nbd-ignition/value", "mode": 0o644,
                               "contents": {"source": f"data:,{value}"}}]},
        "systemd": {"units": [{"name": "nbd-ignition.service", "enabled": True, "contents": unit}]},
    })


# Ignition's arguments; journald forwarded to the console: Ignition's own log (what it fetched and
# wrote, or why it failed) is then in the serial log a failed test reports
IGNITION_ARGS = ("ignition.firstboot=1 ignition.platform.id=metal ignition.config.url={{ ignition_url }} "
                 "systemd.journald.forward_to_console=1")
IGNITION_MACHINE = """\
[boot]
kernel = "vmlinuz"
initrds = ["initrd-ignition.img"]
cmdline = '{cmdline} {ignition}'
[ignition]
inline = {inline}
"""


def http_get(lab: ProjectLab, url: str) -> tuple[int, str]:
    """curl from netbootd's host (the lab's namespace): the status and body."""
    out = subprocess.run(["ip", "netns", "exec", lab.boot_ns, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def test_ignition_gives_each_machine_its_own_files_and_unit(lab, live_assets):
    need("bios")
    serve(lab, live_assets, "vmlinuz", "initrd-ignition.img", "rootfs.squashfs")
    machines = {"52:54:00:24:01:01": "ign-alpha", "52:54:00:24:01:02": "ign-bravo"}
    for mac, value in machines.items():
        inline = json.dumps(ignition_config(value))  # a TOML basic string: JSON's string escapes are TOML's
        lab.machine(mac, IGNITION_MACHINE.format(cmdline=LIVE_CMDLINE, ignition=IGNITION_ARGS, inline=inline))
    # both at once: one boot's time for two machines
    results = lab.boot_many([(mac, "bios") for mac in machines], IGNITION_OK, TIMEOUT, fail=BROKEN, memory="1G")
    for result in results:
        assert result.booted, f"{result.mac}: {result.reason}\n" + "\n".join(result.paths())
        assert re.search(IGNITION_OK, result.match).group("value") == machines[result.mac]
        # Ignition itself fetched the config (not a stand-in): netbootd's timeline, and Ignition's own log
        events = lab.get_json(f"/machines/{result.mac}")["events"]
        assert [e for e in events if e["stage"] == "ignition"], f"{result.mac} fetched no Ignition config"
        assert re.search(r"ignition\[\d+\]: .*files: files passed", result.console), "no log of Ignition's files stage"
        print(f"\n{result.mac}: power-on to its Ignition unit's line {result.seconds:.1f} s")

    # the signed URL the first machine was given, on its kernel command line: it serves that machine;
    # presented as the second machine's (its MAC in the query, the first one's signature) it is refused
    first, second = machines
    found = re.search(r"ignition\.config\.url=(\S+)", results[0].console)
    assert found, "the first machine's kernel printed no command line with its ignition.config.url"
    url = found.group(1)
    status, body = http_get(lab, url)
    assert status == 200 and json.loads(body) == json.loads(ignition_config(machines[first]))
    parts = urlsplit(url)
    query = [(k, second.replace(":", "-") if k == "mac" else v) for k, v in parse_qsl(parts.query)]
    assert any(k == "mac" for k, _ in query), url
    status, body = http_get(lab, urlunsplit(parts._replace(query=urlencode(query))))
    assert status == 403, (status, body)


# ---------------------------------------------------------------------------------- the installer

INSTALLER = """\
[lifecycle]
once = true
[boot]
kernel = "vmlinuz"
initrds = ["initrd.img"]
cmdline = '{cmdline} nbd_install={{{{ file("disk.img.gz") }}}} nbd_done={{{{ done_url }}}} nbd_failed={{{{ failed_url }}}}'
"""


def test_live_installer_writes_the_disk_then_the_machine_boots_it(lab, live_assets):
    need("bios")
    disk_image(lab)
    serve(lab, live_assets, "vmlinuz", "initrd.img", "rootfs.squashfs")
    mac = "52:54:00:24:02:01"
    lab.machine(mac, INSTALLER.format(cmdline=LIVE_CMDLINE))
    result = lab.boot(mac, "bios", DISK_OK, TIMEOUT + 180, fail=BROKEN, disk="96M", reboots=1)
    assert result.booted, f"{result.reason}\n" + "\n".join(result.paths())
    assert "NETBOOTD-INSTALL-DONE" in result.console  # the live system's service, not the busybox installer
    assert squashfs_downloads(lab, mac), "the installer's root was not fetched from netbootd"
    events = [e for e in result.timeline if e["stage"] == "lifecycle"]
    assert [(e["state"], e["by"]) for e in events] == [("provisioned", "done_url")]
    first, last = result.power_ons[0], result.power_ons[-1]
    assert "kernel" in first.path and first.path[-1] == "reboot"
    assert "local boot" in last.path and "disk" in last.path, result.paths()
    print(f"\nbios: power-on to NETBOOTD-INSTALL-DONE and reboot, then {disk_seconds(lab, result)} s to the disk's own "
          f"system; {result.seconds:.1f} s in all")
