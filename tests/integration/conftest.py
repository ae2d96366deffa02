"""End-to-end network boots: QEMU firmware against a real netbootd, inside a network namespace.

One `Lab` per test: a fresh namespace with a bridge (br0) carrying the site's address server
(dnsmasq on 10.77.0.1, addresses only, no boot options) and netbootd (10.77.0.2, proxy mode,
started as `ip netns exec NS python -m netbootd serve`), a tap per virtual machine, and a
tcpdump capture of the bridge. Fixture `lab`: netbootd shares the DHCP server's host (10.77.0.2
is a second address on br0). Fixture `lab_separate_host`: netbootd in a second namespace, a
host of its own joined to the bridge by a veth pair. QEMU boots a kernel from Debian's linux-image package with a
busybox initramfs (assets.sh) whose /init prints one marker line:

    NETBOOT-OK mac=<mac> ip=<addr/len> cmdline=<the kernel command line> ignition=<fetched body>

and powers off. Nothing leaves the namespace: the test process only starts processes in it
and reads their log files.

When a test fails, the lab's files (netbootd log, serial output of every machine, dnsmasq log,
the capture) are copied to tests/integration/.artifacts/<test>/ (or $NETBOOTD_IT_ARTIFACTS) and
their tails are added to the failure report.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

HERE = Path(__file__).resolve().parent
ASSETS = HERE / ".assets"
ASSETS_SCRIPT = HERE / "assets.sh"
ARTIFACTS = Path(os.environ.get("NETBOOTD_IT_ARTIFACTS", HERE / ".artifacts"))

# Debian's package paths (qemu-system-x86, ipxe, ipxe-qemu, ovmf).
QEMU = "qemu-system-x86_64"
IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_NIC_ROM = IPXE_DIR / "qemu" / "efi-virtio.rom"  # QEMU's default ROM for virtio-net-pci
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

SITE_IP = "10.77.0.1"  # the site's address server (dnsmasq)
BOOT_IP = "10.77.0.2"  # netbootd
HTTP_PORT = 8080
MARKER = re.compile(
    r"NETBOOT-OK mac=(?P<mac>\S+) ip=(?P<ip>\S*) cmdline=(?P<cmdline>.*?) ignition=(?P<ignition>.*?)\s*$"
)
GUEST_FAIL = re.compile(r"NETBOOT-FAIL .*")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")

# What the failure report shows of the capture: UDP, ICMP, ARP, TCP opens/closes/resets and the
# first segment of HTTP requests and responses (not the bulk data in between).
_TCP_PAYLOAD4 = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
CAPTURE_FILTER = (
    f"(udp or icmp or arp or tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
    f" or {_TCP_PAYLOAD4} = 0x47455420 or {_TCP_PAYLOAD4} = 0x48454144 or {_TCP_PAYLOAD4} = 0x48545450)"
)
DHCP_DETAIL = re.compile(
    r"(DHCP-Message|Vendor-Class|Vendor-Option|ARCH|User-Class|Server-ID|BF) \(\d+\), length|Your-IP|Server-IP|file \""
)

# Firmware giving up on the boot path under test: stop there instead of waiting for its fallbacks
# (OVMF tries PXEv4, PXEv6, HTTPv4, HTTPv6 in turn; a later one could even boot, on the wrong path).
GIVE_UP = {
    "uefi-pxe": re.compile(r'failed to load Boot\d+ "UEFI PXEv4[^"]*"'),
    "uefi-http": re.compile(r'failed to load Boot\d+ "UEFI HTTPv4[^"]*"'),
}

BIOS_TIMEOUT = 90.0
UEFI_TIMEOUT = 150.0

_names = itertools.count()


# ---------------------------------------------------------------------------------- requirements


def missing_for(firmware: str) -> str | None:
    """Why this machine has no chance here (-> pytest.skip), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tap devices, DHCP/TFTP ports)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is missing (apt-get install qemu-system-x86)"
    if firmware == "bios":
        if not IPXE_NIC_ROM.is_file():
            return f"the iPXE NIC ROM {IPXE_NIC_ROM} is missing (apt-get install ipxe-qemu)"
        if not (IPXE_DIR / "undionly.kpxe").is_file():
            return f"{IPXE_DIR}/undionly.kpxe is missing (apt-get install ipxe)"
    else:
        if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
            return f"OVMF ({OVMF_CODE}, {OVMF_VARS}) is missing (apt-get install ovmf)"
        if not (IPXE_DIR / "snponly.efi").is_file():
            return f"{IPXE_DIR}/snponly.efi is missing (apt-get install ipxe)"
    return None


def need(firmware: str) -> None:
    reason = missing_for(firmware)
    if reason:
        pytest.skip(reason)


def _tools_or_fail() -> None:
    """Everything else is a hard requirement: a missing tool fails loudly, it never skips."""
    missing = [t for t in ("ip", "dnsmasq", "tcpdump") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"integration tests need {', '.join(missing)} (apt-get install iproute2 dnsmasq-base tcpdump)")


# ---------------------------------------------------------------------------------- assets


@attrs.frozen
class Assets:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="session")
def assets() -> Assets:
    """The kernel and initramfs; built by assets.sh (cached) when missing or stale."""
    reason = missing_for("bios") and missing_for("uefi")
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([str(ASSETS_SCRIPT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{ASSETS_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    kernel, initrd = ASSETS / "vmlinuz", ASSETS / "initrd.cpio.gz"
    for path in (kernel, initrd):
        if not path.is_file():
            pytest.fail(f"{ASSETS_SCRIPT} ran but {path} is missing")
    return Assets(kernel, initrd)


# ---------------------------------------------------------------------------------- processes


class Proc:
    """A process this lab started (inside the namespace), with its output in a file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None, env=None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)  # by PID: only ever a process this lab started
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()


def tail(text: str, lines: int = 40) -> str:
    text = ANSI.sub("", text)
    rows = [r for r in text.splitlines() if r.strip()]
    cut = rows[-lines:]
    return ("[...]\n" if len(rows) > lines else "") + "\n".join(cut)


# ---------------------------------------------------------------------------------- results


@attrs.frozen
class Marker:
    mac: str
    ip: str
    cmdline: str
    ignition: str


@attrs.define
class Boot:
    """One QEMU machine's run."""

    name: str
    mac: str
    firmware: str
    proc: Proc
    timeout: float
    marker: Marker | None = None
    guest_failure: str | None = None
    firmware_failure: str | None = None
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def serial(self) -> Path:
        return self.proc.log

    def scan(self) -> None:
        text = ANSI.sub("", self.proc.text())
        for line in text.splitlines():
            m = MARKER.search(line)
            if m:
                self.marker = Marker(**m.groupdict())
            f = GUEST_FAIL.search(line)
            if f:
                self.guest_failure = f.group(0)
            give_up = GIVE_UP.get(self.firmware)
            g = give_up.search(line) if give_up else None
            if g and self.marker is None:
                self.firmware_failure = g.group(0)


# ---------------------------------------------------------------------------------- the lab


class Lab:
    """A namespace with bridge, site DHCP, netbootd, taps and a capture. See the module doc."""

    def __init__(self, root: Path, assets: Assets, separate_host: bool = False) -> None:
        """separate_host=False: netbootd shares the site DHCP server's host (br0 carries both
        10.77.0.1 and 10.77.0.2; both bind UDP 67 with SO_REUSEADDR). True: netbootd runs in a
        second namespace, a host of its own joined to the bridge by a veth pair (nb0, 10.77.0.2)."""
        self.root = root
        self.assets = assets
        self.separate_host = separate_host
        self.ns = f"nbit{os.getpid()}x{next(_names)}"
        self.boot_ns = f"{self.ns}b" if separate_host else self.ns
        self.boot_if = "nb0" if separate_host else "br0"
        self.procs: list[Proc] = []
        self.boots: list[Boot] = []
        self.taps = 0
        self.namespaces: list[str] = []
        self.netbootd: Proc | None = None
        self.dnsmasq: Proc | None = None
        self.tcpdump: Proc | None = None
        self.pcap = root / "bridge.pcap"
        # netbootd's configuration directory, written by the test
        self.conf = root / "netbootd"
        self.machines = self.conf / "machines"
        self.files = self.conf / "files"
        self.machines.mkdir(parents=True)
        self.files.mkdir()
        shutil.copy(assets.kernel, self.files / "vmlinuz")
        shutil.copy(assets.initrd, self.files / "initrd.cpio.gz")
        self.settings = self.conf / "netbootd.toml"
        self.settings.write_text(
            textwrap.dedent(
                f"""\
                advertise = "{BOOT_IP}"
                machines_dir = "machines"
                files_root = "files"
                state_dir = "state"
                cache_dir = "cache"
                [http]
                port = {HTTP_PORT}
                [tftp]
                port = 69
                ipxe_dir = "{IPXE_DIR}"
                [dhcp]
                port = 67
                proxy_port = 4011
                interfaces = ["{self.boot_if}"]
                [ipxe]
                bios = "undionly.kpxe"
                efi64 = "snponly.efi"
                [log]
                level = "debug"
                """
            )
        )

    # -- plumbing

    def ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def start(self, name: str, argv: list[str], ns: str | None = None, **kw) -> Proc:
        proc = Proc(name, ["ip", "netns", "exec", ns or self.ns, *argv], self.root / f"{name}.log", **kw)
        self.procs.append(proc)
        return proc

    def add_netns(self, name: str) -> None:
        self.ip("netns", "add", name)
        self.namespaces.append(name)
        self.ip("-n", name, "link", "set", "lo", "up")

    def up(self) -> Lab:
        self.add_netns(self.ns)
        self.ip("-n", self.ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.ip("-n", self.ns, "addr", "add", f"{SITE_IP}/24", "dev", "br0")
        self.ip("-n", self.ns, "-6", "addr", "add", "fd77::1/64", "dev", "br0", "nodad")
        self.ip("-n", self.ns, "link", "set", "br0", "up")
        if self.separate_host:
            self.add_netns(self.boot_ns)
            self.ip("-n", self.ns, "link", "add", "vb0", "type", "veth", "peer", "name", "nb0", "netns", self.boot_ns)
            self.ip("-n", self.ns, "link", "set", "vb0", "master", "br0")
            self.ip("-n", self.ns, "link", "set", "vb0", "up")
            self.ip("-n", self.boot_ns, "addr", "add", f"{BOOT_IP}/24", "dev", "nb0")
            self.ip("-n", self.boot_ns, "link", "set", "nb0", "up")
        else:
            self.ip("-n", self.ns, "addr", "add", f"{BOOT_IP}/24", "dev", "br0")
        self.tcpdump = self.start("tcpdump", ["tcpdump", "-i", "br0", "-n", "-U", "-s", "1600", "-w", str(self.pcap)])
        self.dnsmasq = self.start(
            "dnsmasq",
            [
                "dnsmasq",
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-dhcp",
                "--port=0",  # no DNS: addresses only
                "--bind-interfaces",
                "--interface=br0",
                "--except-interface=lo",
                f"--listen-address={SITE_IP}",
                "--dhcp-authoritative",
                "--no-ping",
                f"--dhcp-range={SITE_IP[:-1]}100,{SITE_IP[:-1]}199,255.255.255.0,1h",
                "--enable-ra",
                "--dhcp-range=::,constructor:br0,ra-only",
                f"--dhcp-leasefile={self.root / 'dnsmasq.leases'}",
                f"--pid-file={self.root / 'dnsmasq.pid'}",
                "--user=root",
                "--group=root",
            ],
        )
        self._wait_for(lambda: "started" in self.dnsmasq.text(), self.dnsmasq, 10, "dnsmasq to start")
        self._wait_for(lambda: self.pcap.exists(), self.tcpdump, 10, "tcpdump to start")
        return self

    def _wait_for(self, predicate, proc: Proc, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not proc.running():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n{tail(proc.text())}")
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail(proc.text())}")

    # -- netbootd

    def machine(self, mac: str, text: str) -> Path:
        """Write machines/<mac with dashes>.toml (atomically: a rename, as a ConfigMap or editor would)."""
        path = self.machines / (mac.lower().replace(":", "-") + ".toml")
        tmp = self.machines / f".{path.name}.tmp"
        tmp.write_text(textwrap.dedent(text))
        tmp.rename(path)
        return path

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

    def start_netbootd(self, argv: list[str] | None = None) -> Proc:
        """Start netbootd in the boot namespace and wait until it listens. argv: the command that
        runs it, by default this checkout's `python -m netbootd serve --config <the lab's
        netbootd.toml>`; another one (e.g. the container image's netbootd, with self.conf mounted
        at its /etc/netbootd) must serve the lab's configuration directory too."""
        check = subprocess.run(
            [sys.executable, "-m", "netbootd", "check", str(self.conf)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, f"netbootd check {self.conf} failed:\n{check.stdout}{check.stderr}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.netbootd = self.start(
            "netbootd",
            argv or [sys.executable, "-m", "netbootd", "serve", "--config", str(self.settings)],
            ns=self.boot_ns,
            cwd=self.conf,
            env=env,
        )
        self._wait_for(lambda: re.search(r"\blistening\b", self.netbootd.text()), self.netbootd, 30, "netbootd to listen")
        return self.netbootd

    def netbootd_log(self) -> str:
        return self.netbootd.text() if self.netbootd else ""

    def wait_log(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match:
        """Wait until netbootd's log (from character `after`) matches `pattern`."""
        assert self.netbootd is not None
        found: list[re.Match] = []

        def match() -> bool:
            m = re.search(pattern, self.netbootd_log()[after:])
            if m:
                found.append(m)
            return bool(m)

        self._wait_for(match, self.netbootd, timeout, f"netbootd to log /{pattern}/")
        return found[0]

    # -- machines

    def add_tap(self) -> str:
        name = f"tap{self.taps}"
        self.taps += 1
        self.ip("-n", self.ns, "tuntap", "add", "dev", name, "mode", "tap")
        self.ip("-n", self.ns, "link", "set", name, "master", "br0")
        self.ip("-n", self.ns, "link", "set", name, "up")
        return name

    def qemu_argv(self, mac: str, firmware: str, tap: str, name: str) -> list[str]:
        argv = [
            QEMU, "-accel", "tcg", "-m", "512", "-nographic", "-serial", "stdio", "-monitor", "none",
            "-no-reboot", "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        ]  # fmt: skip
        nic = f"virtio-net-pci,netdev=n0,mac={mac}"
        if firmware == "bios":
            # SeaBIOS + the NIC's iPXE ROM. reboot-timeout: when nothing boots, SeaBIOS reboots
            # after 1 s instead of waiting 60 s, and -no-reboot turns that into QEMU exiting.
            return [*argv, "-machine", "pc", "-boot", "order=n,reboot-timeout=1000", "-device", nic]
        vars_copy = self.root / f"{name}-OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-device", f"{nic},romfile=,bootindex=1",
        ]  # fmt: skip
        if firmware == "uefi-http":
            argv += [
                "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
            ]  # fmt: skip
        elif firmware != "uefi-pxe":
            raise ValueError(f"unknown firmware {firmware!r}")
        return argv

    def launch(self, mac: str, firmware: str, timeout: float | None = None) -> Boot:
        n = len(self.boots)
        name = f"vm{n}-{firmware}-{mac.replace(':', '')[-4:]}"
        tap = self.add_tap()
        proc = self.start(name, self.qemu_argv(mac, firmware, tap, name))
        boot = Boot(name, mac, firmware, proc, timeout or (BIOS_TIMEOUT if firmware == "bios" else UEFI_TIMEOUT))
        self.boots.append(boot)
        return boot

    def wait(self, *boots: Boot) -> None:
        """Until every machine powered off (or failed in its /init), or its timeout passed."""
        pending = list(boots)
        while pending:
            for boot in list(pending):
                boot.scan()
                elapsed = time.monotonic() - boot.proc.started
                done = not boot.proc.running()
                if (boot.marker or boot.guest_failure or boot.firmware_failure) and not done:
                    # /init printed its line and is powering off; give it a moment, no more.
                    try:
                        boot.proc.popen.wait(5)
                    except subprocess.TimeoutExpired:
                        boot.proc.stop(signal.SIGKILL)
                    done = True
                if not done and elapsed > boot.timeout:
                    boot.timed_out = True
                    boot.proc.stop(signal.SIGKILL)
                    done = True
                if done:
                    boot.seconds = elapsed
                    boot.scan()
                    pending.remove(boot)
            time.sleep(0.2)

    def boot(self, mac: str, firmware: str, timeout: float | None = None) -> Marker:
        """Boot one machine; its marker, or a failure carrying the tails of every log."""
        return self.boot_many([(mac, firmware)], timeout)[0]

    def boot_many(self, machines: list[tuple[str, str]], timeout: float | None = None) -> list[Marker]:
        """Boot machines at the same time; their markers (in order), or a failure."""
        boots = [self.launch(mac, fw, timeout) for mac, fw in machines]
        self.wait(*boots)
        failed = [b for b in boots if b.marker is None]
        if failed:
            pytest.fail(
                "\n".join(f"{self.describe(b)}\n--- serial {b.name} ---\n{tail(b.proc.text(), 25)}" for b in failed)
                + "\n(netbootd log, dnsmasq log and capture: see the 'netboot lab' section below)",
                pytrace=False,
            )
        markers = [b.marker for b in boots if b.marker]
        for boot, marker in zip(boots, markers, strict=True):
            assert marker.mac.lower() == boot.mac.lower(), f"{boot.name}: marker from {marker.mac}, expected {boot.mac}"
        return markers

    def no_boot(self, mac: str, firmware: str = "bios", timeout: float | None = None) -> Boot:
        """A machine that must not boot: QEMU ends (or times out) without a marker."""
        return self.no_boot_many([(mac, firmware)], timeout)[0]

    def no_boot_many(self, machines: list[tuple[str, str]], timeout: float | None = None) -> list[Boot]:
        boots = [self.launch(mac, fw, timeout) for mac, fw in machines]
        self.wait(*boots)
        booted = [b for b in boots if b.marker is not None or b.guest_failure is not None]
        if booted:
            pytest.fail(
                "\n".join(f"{b.name} ({b.mac}) booted but must not have: {b.marker or b.guest_failure}" for b in booted)
                + "\n(logs and capture: see the 'netboot lab' section below)",
                pytrace=False,
            )
        return boots

    @staticmethod
    def describe(boot: Boot) -> str:
        if boot.guest_failure:
            why = f"its /init failed: {boot.guest_failure}"
        elif boot.firmware_failure:
            why = f"the firmware gave up on this boot path: {boot.firmware_failure}"
        elif boot.timed_out:
            why = f"no marker within {boot.timeout:.0f} s (QEMU killed)"
        else:
            why = f"QEMU exited ({boot.proc.popen.returncode}) after {boot.seconds:.0f} s without the marker"
        return f"{boot.name} ({boot.mac}, {boot.firmware}): {why}"

    # -- reports and teardown

    def _tcpdump(self, *args: str) -> str:
        proc = subprocess.run(
            ["tcpdump", "-r", str(self.pcap), "-n", "-tt", *args], capture_output=True, text=True, timeout=60
        )
        return proc.stdout + "".join(f"{line}\n" for line in proc.stderr.splitlines() if "reading from" not in line)

    def capture_summary(self, lines: int = 40) -> str:
        """The conversation on the bridge (one line a packet; TCP data segments and TFTP blocks
        counted, not listed), then the DHCP packets decoded (the options that matter)."""
        if not self.pcap.exists():
            return "(no capture)"
        out: list[str] = []
        bulk = 0
        for line in self._tcpdump("not ip6 and " + CAPTURE_FILTER).splitlines():
            if re.search(r"UDP, length \d+$", line):  # TFTP blocks and ACKs (ephemeral ports)
                if bulk == 0:
                    out.append(line)  # the first one shows who answers whom, from where
                bulk += 1
                continue
            if bulk > 1:
                out.append(f"    ({bulk - 1} more UDP packets)")
            bulk = 0
            out.append(line)
        if bulk > 1:
            out.append(f"    ({bulk - 1} more UDP packets)")
        dhcp: list[str] = []
        for line in self._tcpdump("-v", "port 67 or port 68 or port 4011").splitlines():
            if not line.startswith((" ", "\t")) or "BOOTP/DHCP" in line or DHCP_DETAIL.search(line):
                dhcp.append(line)
        return (
            f"{tail(chr(10).join(out), lines)}\n--- DHCP packets decoded ---\n{tail(chr(10).join(dhcp), lines * 2)}"
        )

    def report(self) -> str:
        parts = [f"lab files: {self.root} (kept in {ARTIFACTS} on failure)"]
        for boot in self.boots:
            parts.append(f"--- serial {boot.name} ({boot.seconds:.0f} s) ---\n{tail(boot.proc.text(), 30)}")
        if self.netbootd:
            parts.append(f"--- netbootd log ---\n{tail(self.netbootd.text(), 40)}")
        if self.dnsmasq:
            parts.append(f"--- dnsmasq (site DHCP) ---\n{tail(self.dnsmasq.text(), 15)}")
        parts.append(f"--- capture on br0 ({self.pcap.name}) ---\n{self.capture_summary(40)}")
        return "\n".join(parts)

    def keep(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.root.iterdir():
            if path.is_file() and (path.suffix in (".log", ".pcap", ".leases")):
                shutil.copy(path, dest / path.name)
        shutil.copytree(self.conf / "machines", dest / "machines", dirs_exist_ok=True)
        shutil.copy(self.settings, dest / "netbootd.toml")
        (dest / "capture.txt").write_text(self._tcpdump("-v") if self.pcap.exists() else "(no capture)")
        return dest

    def down(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep tearing down the rest
                print(f"lab {self.ns}: stopping {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)
        for ns in reversed(self.namespaces):
            # Deleting a namespace deletes its bridge, taps and veth ends.
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces = []


def _lab(tmp_path: Path, assets: Assets, request, separate_host: bool) -> Iterator[Lab]:
    _tools_or_fail()
    the_lab = Lab(tmp_path, assets, separate_host=separate_host)
    request.node.netboot_lab = the_lab
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def lab(tmp_path, assets, request) -> Iterator[Lab]:
    """netbootd on the site DHCP server's host (the bridge carries both addresses)."""
    yield from _lab(tmp_path, assets, request, separate_host=False)


@pytest.fixture
def lab_separate_host(tmp_path, assets, request) -> Iterator[Lab]:
    """netbootd on a host of its own (second namespace, veth into the bridge)."""
    yield from _lab(tmp_path, assets, request, separate_host=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    the_lab: Lab | None = getattr(item, "netboot_lab", None)
    if the_lab is None or report.when not in ("setup", "call"):
        return
    for boot in the_lab.boots:
        report.user_properties.append((f"boot {boot.name}", f"{boot.seconds:.1f} s"))
    if report.failed:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
        try:
            kept = the_lab.keep(ARTIFACTS / safe)
        except Exception as exc:
            kept = f"(could not keep the lab's files: {exc})"
        report.sections.append(("netboot lab", f"artifacts kept in {kept}\n{the_lab.report()}"))
