"""`netbootd try` as an operator runs it, and the pytest plugin as an OS image builder uses it.

Each `try` is a subprocess making its own lab (namespace, site DHCP server, private netbootd,
QEMU) on a configuration written here, with this project's test kernel and initramfs as the
machine's files. The kernel command lines have no `quiet`, so try's default success test (the
kernel started the initramfs' init) is what decides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import need

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OK = "52:54:00:88:00:01"
PANICS = "52:54:00:88:00:02"
BROKEN = "52:54:00:88:00:03"
IGNORED = "52:54:00:88:00:04"
DISK = "52:54:00:88:00:05"


@pytest.fixture
def config(tmp_path, assets) -> Path:
    """An operator's configuration directory whose machines boot local files."""
    conf = tmp_path / "conf"
    (conf / "machines").mkdir(parents=True)
    (conf / "files").mkdir()
    shutil.copy(assets.kernel, conf / "files" / "vmlinuz")
    shutil.copy(assets.initrd, conf / "files" / "initrd.img")
    (conf / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\nstate_dir = "/nonexistent"\n')
    machines = {
        OK: '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img"]\ncmdline = "console=ttyS0 panic=-1"\n',
        # no initramfs and no root device: "VFS: Unable to mount root fs", a kernel panic
        PANICS: '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 panic=-1"\n',
        BROKEN: '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 {{ hostnmae }}"\n',
        IGNORED: "[boot]\nignore = true\n",
        # the test initramfs marks its disk and reboots; the next boot finds the mark (assets.sh)
        DISK: '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img"]\ncmdline = "console=ttyS0 panic=-1 nbd_reboot_once"\n',
    }
    for mac, text in machines.items():
        (conf / "machines" / f"{mac.replace(':', '-')}.toml").write_text(text)
    return conf


def netbootd_try(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "netbootd", "try", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def check_booted(code: int, out: str, firmware_stages: list[str]) -> None:
    assert code == 0, out
    assert "==> BOOTED in" in out and "Freeing unused kernel" in out, out
    for stage in ["dhcp", *firmware_stages, "script", "kernel", "initrd", "beacon"]:
        assert f"s  {stage} " in out, f"stage {stage} not printed:\n{out}"


def test_bios_and_uefi_http_side_by_side(config):
    """Two tries at once (each its own namespace): BIOS PXE and UEFI HTTP boot of the same machine."""
    need("bios")
    need("uefi-http")
    bios = netbootd_try(OK, "--config", str(config), "--firmware", "bios")
    http = netbootd_try(OK, "--config", str(config / "netbootd.toml"), "--firmware", "uefi-http", "--quiet")
    code, out = finish(bios)
    check_booted(code, out, [])
    code, out = finish(http)
    check_booted(code, out, ["loader"])
    assert "lab files kept in" in out  # --quiet keeps the console in a file
    console = out.split("(console: ")[1].split(",")[0]
    assert "Freeing unused kernel" in Path(console).read_text(errors="replace")
    assert "Freeing unused kernel" not in out.split("==> BOOTED")[0], "--quiet streamed the console"


def test_uefi_pxe(config):
    need("uefi")
    code, out = finish(netbootd_try(OK, "--config", str(config), "--firmware", "uefi"))
    check_booted(code, out, ["tftp"])
    assert "probe=True" in out  # OVMF's size probe, shown as the normal step it is


def test_uefi_pxe_over_ipv6(config):
    """`--ipv6`: an IPv6-only lab (the site's stateful DHCPv6 server, no IPv4), OVMF PXE with IPv4
    PXE off: DHCPv6 → 4011 → TFTP → iPXE → script → kernel. (No tftp stage: over IPv6 netbootd does
    not attribute EDK2's TFTP transfer to the machine, tests/dhcp6/test_lab_fixtures.py.)"""
    need("uefi6")
    code, out = finish(netbootd_try(OK, "--config", str(config), "--ipv6"))
    if code == 1 and "PXE-E16: No valid offer received" in out:
        print("OVMF dropped netbootd's 4011 REPLY (a known firmware race, test_ipv6.EDK2_4011_FLAKE): trying once more")
        code, out = finish(netbootd_try(OK, "--config", str(config), "--ipv6"))
    check_booted(code, out, [])
    assert "OVMF's own UEFI PXE over IPv6" in out and "IPv6-only lab: " in out, out
    assert "port=4011 firmware=efi-pxe" in out, out
    assert re.search(r"s  script +.*", out) and "http://[fd77::2]:8080/" in out, out


def test_ipv6_refuses_an_ipv4_firmware(config):
    need("uefi6")
    code, out = finish(netbootd_try(OK, "--config", str(config), "--ipv6", "--firmware", "bios"), timeout=60)
    assert code == 2 and "--ipv6 makes the lab IPv6-only" in out and "uefi6, uefi-http6" in out, out
    assert "==>" not in out, "a lab was started"


def test_a_panic_says_where_the_boot_stopped(config):
    need("bios")
    code, out = finish(netbootd_try(PANICS, "--config", str(config), "--firmware", "bios"))
    assert code == 1, out
    assert "==> DID NOT BOOT" in out and "the kernel panicked: Kernel panic - not syncing" in out, out
    assert "==> stopped after: beacon" in out, out  # netbootd delivered everything; the kernel had no root
    assert "--- last console lines ---" in out and "--- netbootd log lines for this machine ---" in out
    log_part = out.split("--- netbootd log lines for this machine ---")[1]
    assert "script sent" in log_part and OK not in log_part


def test_disk_follows_the_reboot(config):
    """`--disk 64M`: a qcow2 in the try's directory; the machine marks it and reboots, the run follows
    it to the second power-on (network first again), which reads the mark back from the disk."""
    need("bios")
    code, out = finish(netbootd_try(DISK, "--config", str(config), "--firmware", "bios", "--disk", "64M", "--keep",
                                    "--expect", r"NETBOOT-DISK found=\S+"), timeout=200)
    assert code == 0, out
    assert "==> a new 64M qcow2 disk in " in out and "1024 MiB; reboots are followed until --expect" in out, out
    wrote = re.search(r"NETBOOT-DISK wrote=([0-9a-f-]{36}),", out)
    found = re.search(r"NETBOOT-DISK found=([0-9a-f-]{36})", out)
    assert wrote and found and wrote.group(1) == found.group(1), out
    assert re.search(r"==> \+ *[0-9.]+ s  power-on 2 \(console: SeaBIOS \(version", out), out
    assert "==> power-on 1: network → dhcp → script → kernel → initrd → beacon → reboot\n" in out, out
    assert "==> power-on 2: network → dhcp → script → kernel → initrd → beacon → expect matched" in out, out
    # the second power-on's stages are printed as its own (a kernel, not a third initrd)
    assert len(re.findall(r"s  kernel +vmlinuz .*path=/files/vmlinuz", out)) == 2, out
    kept = Path(re.search(r"lab files kept in (\S+) ", out).group(1))
    try:
        disk = Path(re.search(r"disk: (\S+\.qcow2)\)", out).group(1))
        assert disk.parent == kept and disk.read_bytes()[:4] == b"QFI\xfb"  # qcow2
        assert f"NBD-MARK {wrote.group(1)}".encode() in disk.read_bytes()  # qcow2 keeps data clusters as they are
    finally:
        shutil.rmtree(kept)


def test_disk_argument_is_checked_before_a_lab(config, tmp_path):
    need("bios")
    code, out = finish(netbootd_try(DISK, "--config", str(config), "--firmware", "bios", "--disk",
                                    str(tmp_path / "none.qcow2")), 60)
    assert code == 2 and "neither a size (64M, 2G: a new qcow2) nor an existing disk image" in out, out
    code, out = finish(netbootd_try(DISK, "--config", str(config), "--firmware", "bios", "--disk", "1G", "--memory", "lots"), 60)
    assert code == 2 and "--memory: memory 'lots'" in out, out
    assert "==>" not in out, "a lab was started"


@pytest.mark.parametrize(("mac", "why"), [(BROKEN, "held: "), (IGNORED, "boot.ignore = true")])
def test_held_or_ignored_machine_is_refused_before_qemu(config, mac, why):
    need("bios")
    code, out = finish(netbootd_try(mac, "--config", str(config), "--firmware", "bios"), timeout=60)
    assert code == 1 and f"netbootd would not answer {mac}: " in out and why in out, out
    assert "==>" not in out, "a lab was started"


def test_shipped_example_says_why_a_remote_kernel_cannot_be_tried():
    need("bios")
    code, out = finish(netbootd_try("52:54:00:00:00:01", "--config", str(REPO / "etc/netbootd/netbootd.toml"), "--firmware",
                                    "bios"), 60)
    assert code == 1, out
    assert "boots from outside the lab: https://stable.release.flatcar-linux.net/" in out
    assert "no route out" in out and "files_root" in out


def test_not_root_says_why_root_is_needed(config):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                          "netbootd", "try", OK, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs root: a lab creates a network namespace" in out.stderr, out


EXAMPLE_TEST = '''\
"""A repository of machine files, tested in QEMU on every change (netbootd's pytest plugin)."""


def test_worker_boots_its_initramfs(netboot_lab):
    result = netboot_lab.boot("52:54:00:88:00:01", firmware="bios", expect=r"Run /init as init process", timeout=120)
    assert result.booted, result.reason
    assert list(result.stages)[:2] == ["dhcp", "script"] and result.stages["beacon"] > 0
    assert "kernel --name kernel" not in result.console  # iPXE does not echo scripts; the console is the machine's


def test_written_machine_boots_too(netboot_lab):
    netboot_lab.machine("52:54:00:88:00:09", """
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.img"]
        cmdline = "console=ttyS0 panic=-1 role=extra"
        """)
    result = netboot_lab.boot("52:54:00:88:00:09", expect=r"Command line: .*role=extra")
    assert result.booted, result.reason
'''


def test_plugin_in_a_users_repository(config, tmp_path):
    """A user's repository: machine files, a pytest.ini naming them, one test file — run with pytest."""
    need("bios")
    repo = tmp_path / "user-repo"
    repo.mkdir()
    shutil.copytree(config, repo / "netboot")
    (repo / "pytest.ini").write_text("[pytest]\nnetboot_config = netboot/netbootd.toml\n")
    (repo / "test_boots.py").write_text(textwrap.dedent(EXAMPLE_TEST))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout, out.stdout
    # the lab never wrote into the repository's machine files
    assert sorted(p.name for p in (repo / "netboot" / "machines").iterdir()) == sorted(
        p.name for p in (config / "machines").iterdir())


def test_unsigned_uki_for_a_secure_boot_machine(tmp_path, assets):
    """(Secure Boot, 5) flagged by `netbootd check` before any boot; `netbootd try` shows the
    firmware refusing it (OVMF with the snakeoil keys, Secure Boot enforced)."""
    need("uefi-http-secure")
    unsigned = assets.kernel.parent / "uki-unsigned.efi"
    if not unsigned.is_file():
        pytest.skip("tests/integration/assets.sh built no UKIs (systemd-boot-efi, sbsigntool, binutils missing)")
    conf = tmp_path / "conf"
    (conf / "machines").mkdir(parents=True)
    (conf / "files").mkdir()
    shutil.copy(unsigned, conf / "files" / "uki.efi")
    (conf / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\n')
    (conf / "machines" / "52-54-00-88-00-20.toml").write_text('secure_boot = true\n[boot]\nefi = "uki.efi"\n')
    check = subprocess.run([sys.executable, "-m", "netbootd", "check", str(conf)], capture_output=True, text=True)
    assert check.returncode == 1, check
    assert "52-54-00-88-00-20: secure boot: uki files/uki.efi: NOT SIGNED: Secure Boot firmware will refuse it" \
        in check.stdout, check.stdout
    code, out = finish(netbootd_try("52:54:00:88:00:20", "--config", str(conf), "--firmware", "uefi-http-secure"))
    assert code == 1, out
    assert "==> DID NOT BOOT" in out and "Access Denied" in out, out
    # it was offered and downloaded; the firmware refused to run it
    assert re.search(r"==> \+ *[\d.]+ s  efi +path=/files/uki.efi .*role=efi", out), out
