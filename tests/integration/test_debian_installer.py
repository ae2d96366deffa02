"""The Debian installer of the shipped example, as an operator tries it: `netbootd try` boots machine
52:54:00:00:00:08 of etc/netbootd with the kernel and initrd of Debian's
debian-installer-12-netboot-amd64 package (named by their paths on this host), and the installer
fetches its preseed from netbootd, applies it, and stops where an installer without an archive
mirror stops. And `try`'s progress lines for a large download, on a real download through a lab.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netbootd.testing import progress
from netbootd.testing.netns import NetnsClient, TimelineWatch

from .conftest import need

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "netbootd" / "netbootd.toml"
INSTALLER = "52:54:00:00:00:08"
PACKAGE = "debian-installer-12-netboot-amd64"
IMAGES = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")


def need_package() -> None:
    if not (IMAGES / "initrd.gz").is_file():
        message = f"{PACKAGE} is not installed (apt-get install {PACKAGE})"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs it: a CI run must not pass by skipping
        pytest.skip(message)


def this_checkout() -> dict[str, str]:
    """The environment for a `netbootd` subprocess: this checkout's package first (the lab's
    netbootd runs in the configuration's directory, not here)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_try_boots_the_shipped_installer_with_its_preseed():
    """One BIOS boot (SeaBIOS + iPXE: the fastest firmware here) of the example's installer machine."""
    need("bios")
    need_package()
    out = subprocess.run(
        [sys.executable, "-m", "netbootd", "try", INSTALLER, "--config", str(EXAMPLE), "--firmware", "bios",
         "--expect", "Bad archive mirror", "--timeout", "600"],
        capture_output=True, text=True, timeout=900, env=this_checkout()).stdout
    assert "==> BOOTED in" in out and "'Bad archive mirror'" in out, out[-6000:]
    # the kernel and initrd came from where the package installed them, through /host
    initrd = (IMAGES / "initrd.gz").stat().st_size
    assert f"path=/host{IMAGES}/linux " in out, out[-6000:]
    assert f"initrd.gz  {progress.megabytes(initrd)} MB in " in out, out[-6000:]  # try's size-and-time line
    # the preseed came from netbootd's files ...
    fetched = re.search(r"==> \+ *([\d.]+) s  preseed\.cfg .*path=/files/d-i/preseed\.cfg .*file=d-i/preseed\.cfg", out)
    assert fetched, out[-6000:]
    # ... and was applied: its early_command printed this machine's hostname (its [vars]) and sent a
    # beacon, and its archive settings sent the installer to netbootd's /files/debian
    assert "netbootd: preseed applied for debian-08" in out, out[-6000:]
    beacon = re.search(r"==> \+ *([\d.]+) s  beacon:preseed ", out)
    assert beacon, out[-6000:]
    assert "path=/files/debian/dists/bookworm/Release status=404" in out, out[-6000:]
    # the installer asked nothing before the mirror error (lowmem/low=1, the name servers on the command line)
    console = out[out.index("netbootd: preseed applied"):]
    assert "low memory" not in console.lower() and "name server addresses" not in console.lower(), console[-4000:]
    assert float(fetched.group(1)) < float(beacon.group(1))
    assert out.index("path=/files/d-i/preseed.cfg") < out.index("netbootd: preseed applied") < out.index(
        "Bad archive mirror")


def test_try_names_the_package_when_the_installer_is_missing(tmp_path):
    """A machine naming the installer of a release not installed here: `check` and `try` both say
    which package to install, and `try` says it before any lab starts."""
    conf = tmp_path / "conf"
    (conf / "machines").mkdir(parents=True)
    (conf / "files").mkdir()
    (conf / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\nstate_dir = "/nonexistent"\n')
    images = "/usr/lib/debian-installer/images/99/amd64/text/debian-installer/amd64"
    (conf / "machines" / "52-54-00-00-00-08.toml").write_text(
        f'[boot]\nkernel = "{images}/linux"\ninitrds = ["{images}/initrd.gz"]\ncmdline = "auto=true"\n')
    check = subprocess.run([sys.executable, "-m", "netbootd", "check", str(conf)], capture_output=True, text=True,
                           timeout=60, env=this_checkout())
    assert check.returncode == 1, check.stdout + check.stderr
    assert (f"52-54-00-00-00-08.toml:2: boot.kernel: {images}/linux does not exist on this host: install "
            "debian-installer-99-netboot-amd64 (apt-get install debian-installer-99-netboot-amd64)") in check.stdout
    need("bios")
    tried = subprocess.run([sys.executable, "-m", "netbootd", "try", INSTALLER, "--config", str(conf), "--firmware",
                            "bios"], capture_output=True, text=True, timeout=120, env=this_checkout())
    assert tried.returncode == 1, tried.stdout + tried.stderr
    assert "netbootd would not answer 52:54:00:00:00:08: held: " in tried.stderr, tried.stderr
    # refused before any lab or QEMU (no "==>" stage lines), not a boot that waits for its timeout
    assert "install debian-installer-99-netboot-amd64" in tried.stderr and "==>" not in tried.stdout, tried.stdout


def test_progress_of_a_large_download_through_the_lab(lab):
    """A machine's large download, as `try` shows it: netbootd lists it among the machine's running
    downloads (/machines/<mac>) while it runs, the watch `try` uses hands them to the progress
    lines, and the finished download's event gives its size and time. The client is curl in the
    lab's namespace, held to 5 MiB/s so that the download runs for seconds on any machine."""
    mac = "52:54:00:88:00:10"
    lab.machine(mac, '[boot]\nkernel = "vmlinuz"\n')
    size = 40_000_000
    big = lab.files / mac.replace(":", "-") / "layer.img"  # a per-machine path names its machine
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(size)
    lab.start_netbootd()
    lines: list[str] = []
    events: list[dict] = []
    shown = progress.ProgressLines(lines.append)
    client = NetnsClient(lab.boot_ns)
    watch = TimelineWatch(client, lab.ui_url, mac, events.append, shown.update)
    curl = lab.start("curl", ["curl", "-sS", "--fail", "--limit-rate", "5M", "-o", "/dev/null",
                              f"{lab.url}/files/{mac.replace(':', '-')}/layer.img"])
    try:
        deadline = time.monotonic() + 300
        while curl.running() and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.2)
        assert not curl.running(), "curl did not finish"
        assert curl.popen.returncode == 0, curl.text()
        for _ in range(50):  # the finished download's event follows the end of the transfer
            watch.poll()
            if any(e.get("bytes") == size for e in events):
                break
            time.sleep(0.2)
    finally:
        client.close()
    running = [re.fullmatch(r"layer\.img  ([\d.]+)/40\.0 MB  \((\d+)%\)  [\d.]+ MB/s", line) for line in lines]
    assert lines and all(running), lines
    sent = [float(m.group(1)) for m in running if m]
    assert sent == sorted(sent) and sent[-1] < 40.0, lines  # lines while it ran, growing
    (done,) = [e for e in events if e.get("bytes") == size]
    assert progress.done_line(done).startswith("layer.img  40.0 MB in "), done

