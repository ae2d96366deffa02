"""End-to-end network boots: QEMU firmware against a real netbootd, on netbootd's own test harness.

The lab is `netbootd.testing.Lab` — the same one `netbootd try` and the `netboot_lab` pytest
fixture (netbootd.testing.plugin) give users: one network namespace per test with a bridge, the
site's address server (dnsmasq, addresses only), netbootd in proxy mode, a tap per machine and a
capture of the bridge. This file adds only what netbootd's own tests need on top:

- the guest: a kernel from Debian's linux-image package with a busybox initramfs (assets.sh) whose
  /init prints one marker line and powers off:

    NETBOOT-OK mac=<mac> ip=<addr/len> cmdline=<the kernel command line> ignition=<fetched body>

- `ProjectLab.booted()` and friends, which boot until that marker and parse it;
- fixtures for where netbootd sits: `lab` (a second address on the DHCP server's host),
  `lab_separate_host` (a host of its own), `lab_shared_address` (the DHCP server's own address,
  `advertise` empty), `lab_pair` (two netbootd, active-active, on hosts of their own at 10.77.0.2
  and 10.77.0.3 with the same machine files and signing key).

Failure reports and kept artefacts come from the plugin (tests/integration/.artifacts here).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from netbootd.testing.capture import DHCP_OFFER, DHCP_REQUEST, proxy_acks_on_67
from netbootd.testing.firmware import IPXE_DIR, OVMF_CODE, OVMF_VARS, firmware
from netbootd.testing.lab import BOOT_IP, HTTP_PORT, SITE_IP, Lab, Proc, missing_requirements
from netbootd.testing.results import BootResult

HERE = Path(__file__).resolve().parent
ASSETS = HERE / ".assets"
ASSETS_SCRIPT = HERE / "assets.sh"
PEER_IP = "10.77.0.3"  # the second netbootd of lab_pair

MARKER = r"NETBOOT-OK mac=(?P<mac>\S+) ip=(?P<ip>\S*) cmdline=(?P<cmdline>.*?) ignition=(?P<ignition>.*?)\s*$"
GUEST_FAIL = r"NETBOOT-FAIL .*"

__all__ = ["BOOT_IP", "HTTP_PORT", "IPXE_DIR", "OVMF_CODE", "OVMF_VARS", "PEER_IP", "SITE_IP", "need"]


def need(firmware_name: str) -> None:
    """Skip (with the reason) when this firmware cannot run here; the lab's own tools must be there."""
    kind = firmware(firmware_name)
    reason = missing_requirements() or kind.missing()
    if firmware_name == "bios" and not (IPXE_DIR / "undionly.kpxe").is_file():
        reason = reason or f"{IPXE_DIR}/undionly.kpxe is missing (apt-get install ipxe)"
    if kind.qemu == "qemu-system-x86_64" and firmware_name != "bios" and not (IPXE_DIR / "snponly.efi").is_file():
        reason = reason or f"{IPXE_DIR}/snponly.efi is missing (apt-get install ipxe)"
    if reason:
        pytest.skip(reason)


# ---------------------------------------------------------------------------------- assets


@attrs.frozen
class Assets:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="session")
def assets() -> Assets:
    """The kernel and initramfs; built by assets.sh (cached) when missing or stale."""
    if missing_requirements("bios") and missing_requirements("uefi"):
        pytest.skip(missing_requirements("bios") or "")
    proc = subprocess.run([str(ASSETS_SCRIPT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{ASSETS_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    kernel, initrd = ASSETS / "vmlinuz", ASSETS / "initrd.cpio.gz"
    for path in (kernel, initrd):
        if not path.is_file():
            pytest.fail(f"{ASSETS_SCRIPT} ran but {path} is missing")
    return Assets(kernel, initrd)


# ---------------------------------------------------------------------------------- the guest's marker


@attrs.frozen
class Marker:
    mac: str
    ip: str
    cmdline: str
    ignition: str


class ProjectLab(Lab):
    """The shipped lab with netbootd's own test guest in files/ and a marker-reading boot."""

    def __init__(self, root: Path, assets: Assets, *, host: str = "second-address", pair: bool = False,
                 **lab_options) -> None:
        super().__init__(root, host="own-host" if pair else host, **lab_options)
        self.assets = assets
        shutil.copy(assets.kernel, self.files / "vmlinuz")
        shutil.copy(assets.initrd, self.files / "initrd.cpio.gz")
        self.pair = pair
        self.peer: Proc | None = None
        self.peer_ns = f"{self.ns}p"
        self.peer_settings_path = self.conf / "netbootd-peer.toml"
        if pair:
            key = self.conf / "signing.key"
            key.write_bytes(secrets.token_bytes(32))
            key.chmod(0o600)
            self.write_settings(attrs.evolve(self.settings, http=attrs.evolve(self.settings.http, signing_key_file=key)))

    def up(self) -> ProjectLab:
        super().up()
        if self.pair:
            self.add_host(self.peer_ns, "nb0", PEER_IP, "vb1")
        return self

    def start_netbootd(self, check_config: bool = True, argv=None) -> Proc:
        proc = super().start_netbootd(check_config, argv)
        if self.pair:
            from netbootd.config.settings import to_toml

            peer = attrs.evolve(self.settings, advertise=PEER_IP, state_dir=self.conf / "state-peer",
                                cache_dir=self.conf / "cache-peer")
            self.peer_settings_path.write_text(to_toml(peer, relative_to=self.conf))
            self.peer = peer_proc = self.start(
                "netbootd-peer", [*self.netbootd_argv, "serve", "--config", str(self.peer_settings_path)],
                ns=self.peer_ns, cwd=self.conf, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.wait_until(lambda: re.search(r"\blistening\b", peer_proc.text()), peer_proc, 30, "netbootd-peer to listen")
        return proc

    def kernel_machine(self, mac: str, hostname: str, marker: str, extra: str = "") -> Path:
        """A machine that boots the test kernel; its cmdline and Ignition carry its own values."""
        return self.machine(
            mac,
            f"""\
            [vars]
            hostname = "{hostname}"
            [boot]
            kernel = "vmlinuz"
            initrds = ["initrd.cpio.gz"]
            cmdline = "console=ttyS0 panic=-1 quiet nbd_host={{{{ hostname }}}} nbd_ign={{{{ ignition_url }}}}{extra}"
            [ignition]
            inline = '{{"ignition": {{"version": "3.4.0"}}, "netbootd_marker": "{marker}"}}'
            """,
        )

    # -- booting to the marker

    def booted(self, mac: str, firmware_name: str, timeout: float | None = None, retry_on: str | None = None) -> Marker:
        """Boot one machine; its marker, or a failure carrying the tails of every log. `retry_on`:
        a console pattern of a known firmware flake after which the machine is powered on once
        more (the retry is printed, so a run shows how often it happened)."""
        if retry_on is not None:
            (first,) = self.boot_many([(mac, firmware_name)], MARKER, timeout, fail=GUEST_FAIL)
            if first.booted:
                return marker(first)
            flake = re.search(retry_on, first.console)
            if flake is None:
                pytest.fail(f"{mac} ({firmware_name}): {first.reason}; stopped after {first.stopped_at()}", pytrace=False)
            print(f"{mac}: the firmware flaked ({flake.group(0)!r} after {first.seconds:.1f} s): powered on once more")
        return self.booted_many([(mac, firmware_name)], timeout)[0]

    def booted_many(self, machines: list[tuple[str, str]], timeout: float | None = None) -> list[Marker]:
        """Boot machines at the same time; their markers (in order), or a failure."""
        results = self.boot_many(machines, MARKER, timeout, fail=GUEST_FAIL)
        failed = [r for r in results if not r.booted]
        if failed:
            pytest.fail("\n".join(f"{r.mac} ({r.firmware}): {r.reason}; stopped after {r.stopped_at()}" for r in failed)
                        + "\n(serial consoles, netbootd log, dnsmasq log and capture: the 'netboot lab' section below)",
                        pytrace=False)
        markers = [marker(r) for r in results]
        for result, m in zip(results, markers, strict=True):
            assert m.mac.lower() == result.mac.lower(), f"marker from {m.mac}, expected {result.mac}"
        return markers

    def not_booted(self, mac: str, firmware_name: str = "bios", timeout: float | None = None) -> BootResult:
        """A machine that must not boot: QEMU ends (or times out) without the marker."""
        return self.not_booted_many([(mac, firmware_name)], timeout)[0]

    def not_booted_many(self, machines: list[tuple[str, str]], timeout: float | None = None) -> list[BootResult]:
        results = self.boot_many(machines, MARKER, timeout, fail=GUEST_FAIL)
        booted = [r for r in results if r.booted or "reported a failure" in r.reason]
        if booted:
            pytest.fail("\n".join(f"{r.mac} booted but must not have: {r.match or r.reason}" for r in booted), pytrace=False)
        return results

    def assert_no_ack_on_67(self) -> None:
        """netbootd answered no REQUEST on port 67 (every answer in the capture checked)."""
        packets = self.dhcp_packets()
        requests = [p for p in packets if p.op == 1 and p.dport == 67 and p.msgtype == DHCP_REQUEST]
        offers = [p for p in packets if p.op == 2 and p.sport == 67 and p.msgtype == DHCP_OFFER and p.yiaddr == "0.0.0.0"]
        assert requests and offers, (
            f"the capture holds no REQUEST on 67 or no proxy OFFER ({len(packets)} DHCP packets): the check would prove nothing"
        )
        acks = proxy_acks_on_67(packets)
        assert not acks, "netbootd answered REQUESTs on 67 (the site server's to answer):\n" + "\n".join(map(str, acks))

    def report(self) -> str:
        text = super().report()
        if self.peer is not None:
            from netbootd.testing.results import tail

            text += f"\n--- netbootd-peer log ({PEER_IP}) ---\n{tail(self.peer.text(), 40)}"
        return text


def marker(result: BootResult) -> Marker:
    m = re.search(MARKER, result.match)
    assert m is not None, result.match
    return Marker(**m.groupdict())


# ---------------------------------------------------------------------------------- fixtures


def _lab(tmp_path: Path, assets: Assets, request, **kw) -> Iterator[ProjectLab]:
    reason = missing_requirements()
    if reason:
        pytest.fail(f"integration tests: {reason}")
    the_lab = ProjectLab(tmp_path, assets, **kw)
    request.node.netboot_lab = the_lab  # the plugin keeps its files and reports them on failure
    with the_lab:
        yield the_lab


@pytest.fixture
def lab(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """netbootd on the site DHCP server's host, on an address of its own (10.77.0.2)."""
    yield from _lab(tmp_path, assets, request)


@pytest.fixture
def lab_separate_host(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """netbootd on a host of its own (second namespace, veth into the bridge)."""
    yield from _lab(tmp_path, assets, request, host="own-host")


@pytest.fixture
def lab_shared_address(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """netbootd on the site DHCP server's host and address (10.77.0.1, advertise empty)."""
    yield from _lab(tmp_path, assets, request, host="site-address")


@pytest.fixture
def lab6(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """An IPv6-only segment: the site's stateful DHCPv6 server + RA (fd77::1), netbootd at fd77::2."""
    yield from _lab(tmp_path, assets, request, ipv6=True)


@pytest.fixture
def lab_pair(tmp_path, assets, request) -> Iterator[ProjectLab]:
    """Two netbootd, active-active, on hosts of their own (10.77.0.2 and 10.77.0.3)."""
    yield from _lab(tmp_path, assets, request, pair=True)


def pytest_configure(config: pytest.Config) -> None:
    # this project's failed-lab artefacts live beside its tests
    if not config.getoption("--netboot-artifacts"):
        config.option.netboot_artifacts = os.environ.get("NETBOOTD_IT_ARTIFACTS", str(HERE / ".artifacts"))
