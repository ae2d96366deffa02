"""A netboot lab: real firmware in QEMU booting from a real netbootd, inside network namespaces.

One `Lab` is a private network namespace with a bridge (br0) carrying the site's address server
(dnsmasq on 10.77.0.1: addresses only, no boot options, as at a real site where netbootd runs
beside the DHCP server), a netbootd instance (proxy mode) with its own state and cache, a tap
per virtual machine, and (when tcpdump is there) a capture of the bridge. Nothing the lab does
reaches the host's networks; everything it starts is stopped by PID and its namespaces removed.

Where netbootd sits (`host=`):
- "second-address" (default): on the DHCP server's host, a second address on br0 (10.77.0.2);
- "own-host": in a namespace of its own joined to the bridge by a veth pair (10.77.0.2);
- "site-address": on the DHCP server's host and address (10.77.0.1), `advertise` empty, as a new
  user would leave it.

`ipv6=True` makes the segment IPv6-only: no IPv4 address on the bridge or on netbootd's host and
no DHCPv4 server; the site's server (dnsmasq) gives stateful DHCPv6 addresses (IA_NA: EDK2 boots
only with one) and router advertisements on fd77::/64, and netbootd sits at fd77::2 (fd77::1 for
"site-address") with `advertise6` set to it. The site server also does what an IPv6 site must do
for iPXE (`site_ipxe_script`): iPXE runs its own stateful DHCPv6, ignores a proxy's ADVERTISE (it
has no address) and boots option 59 of the address server's REPLY, so that server gives iPXE
clients (user class "iPXE") netbootd's script URL (`IPXE_SCRIPT_PATH`). Its advertisements also carry the
SLAAC flag, for the test guest's kernel (busybox has no DHCPv6 client); firmware ignores it.

netbootd's configuration is either the lab's own (machines written with `machine()`), or an
operator's (`config=`): their settings with the addresses, interfaces, state and cache
replaced by the lab's, and a snapshot of their machines directory (the lab never writes into
it); files stay where the settings say.

Used by `netbootd try`, by the pytest plugin (`netboot_lab` fixture) and by netbootd's own tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from netbootd.config.settings import LogSettings, Settings, to_toml
from netbootd.testing import poweron
from netbootd.testing.firmware import (
    SIZE,
    Disk,
    DiskError,
    Vm,
    accelerator,
    existing_disk,
    firmware,
    new_disk,
    parse_memory,
)
from netbootd.testing.netns import ANSI, NetnsClient, Proc, TimelineWatch, Topology, tail, wait_until
from netbootd.testing.results import DEFAULT_EXPECT, PANIC, BootResult, PowerOn, stages_from

SITE_IP = "10.77.0.1"  # the site's address server (dnsmasq)
BOOT_IP = "10.77.0.2"  # netbootd
PREFIX = "10.77.0"
# The IPv6-only segment (Lab(ipv6=True)): a unique-local /64, addresses leased from ::100-::1ff
SITE_IP6 = "fd77::1"
BOOT_IP6 = "fd77::2"
PREFIX6 = "fd77::"
# The bridge's MAC, fixed: a Linux bridge otherwise takes the lowest MAC of its ports, which changes
# as taps join, and with it the Server ID (a DUID-LL of that MAC) netbootd's DHCPv6 answers carry.
BRIDGE_MAC6 = "02:77:00:00:00:01"
# What the site's DHCPv6 server gives iPXE in option 59 (after netbootd's base URL). iPXE expands
# settings in its filename, so the URL names the machine itself and needs no chain stub.
IPXE_SCRIPT_PATH = "/ipxe?mac=${mac:hexhyp}&buildarch=${buildarch}&platform=${platform}"
HTTP_PORT = 8080
UI_PORT = 9180  # the management listener, on loopback in netbootd's namespace


class LabError(RuntimeError):
    """The lab itself could not be set up (not a failed boot); the message says why."""


def prefixed(address: str) -> str:
    """One of the lab's addresses with its segment's prefix length."""
    return f"{address}/64" if ":" in address else f"{address}/24"


def missing_requirements(firmware_name: str | None = None) -> str | None:
    """Why a lab (and a machine with that firmware) cannot run here, or None."""
    if os.geteuid() != 0:
        return ("needs root: a lab creates a network namespace, a bridge and tap devices, and binds the DHCP, "
                "TFTP and HTTP ports inside it")
    tools = {"ip": "iproute2", "dnsmasq": "dnsmasq-base"}
    absent = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if absent:
        return f"missing {', '.join(absent)} (apt-get install {' '.join(absent)})"
    if firmware_name is not None:
        return firmware(firmware_name).missing()
    return None


# ---------------------------------------------------------------------------------- one machine


@attrs.define
class Boot:
    """One QEMU machine's run: what its console showed and how it ended."""

    name: str
    mac: str
    firmware: str
    proc: Proc
    timeout: float
    expect: re.Pattern[str]
    fail: re.Pattern[str] | None = None  # a console line that means the boot failed (besides a panic)
    match: re.Match[str] | None = None  # the first console line matching `expect`
    panic: str | None = None
    guest_failure: str | None = None
    firmware_failure: str | None = None
    timed_out: bool = False
    seconds: float = 0.0
    disk: Disk | None = None
    # Following reboots (netbootd.testing.poweron): a reset starts another power-on in the same QEMU,
    # and `expect` counts only from power-on `reboots` + 1 on.
    follow: bool = False
    reboots: int = 0
    events: list[dict] = attrs.field(factory=list)  # netbootd's timeline for the MAC (the lab's watch fills it)
    seen: list[float] = attrs.field(factory=list)  # when the lab first saw each console start after the first
    console_at: dict[float, int] = attrs.field(factory=dict)  # a power-on the timeline showed: where its console begins
    announced: int = 1  # power-ons reported to the caller (the first goes without saying)

    @property
    def serial(self) -> Path:
        return self.proc.log

    @property
    def booted(self) -> bool:
        return self.match is not None

    @property
    def finished(self) -> bool:
        return bool(self.match or self.panic or self.guest_failure or self.firmware_failure)

    def console(self) -> str:
        return ANSI.sub("", self.proc.text())

    def power_ons(self) -> list[PowerOn]:
        """This run's power-ons so far (one unless it follows reboots), each with its path."""
        raw = self.proc.text()
        if not self.follow:
            console = ANSI.sub("", raw)
            return [PowerOn(1, self.proc.started_wall, "QEMU started", console, tuple(self.events),
                            poweron.path(console, self.events, last=True), 0)]
        return poweron.split(raw, self.events, start=firmware(self.firmware).start, started=self.proc.started_wall,
                             seen=self.seen, console_at=self.console_at)

    def counted(self, raw: str) -> str:
        """The console `expect` is matched on: from power-on `reboots` + 1 on ("" until it began)."""
        if self.reboots == 0:
            return ANSI.sub("", raw)
        power_ons = self.power_ons()
        if len(power_ons) <= self.reboots:
            return ""
        offset = power_ons[self.reboots].offset
        return ANSI.sub("", raw[offset:]) if offset is not None else ""

    def scan(self) -> None:
        kind = firmware(self.firmware)
        raw = self.proc.text()
        if self.follow:
            now = time.time()
            while len(self.seen) < len(poweron.console_starts(raw, kind.start)) - 1:
                self.seen.append(now)
        # with a disk, the firmware giving up on the network goes on to the disk, as it should
        give_up = kind.give_up if self.disk is None else None
        if self.match is None:
            for line in self.counted(raw).splitlines():
                if m := self.expect.search(line):
                    self.match = m
                    break
        for line in ANSI.sub("", raw).splitlines():
            if self.panic is None and (p := PANIC.search(line)):
                self.panic = p.group(0)
            if self.fail is not None and self.guest_failure is None and (f := self.fail.search(line)):
                self.guest_failure = f.group(0)
            if give_up is not None and self.match is None and (g := give_up.search(line)):
                self.firmware_failure = g.group(0)

    def why(self) -> str:
        """Why it did not boot (for a report)."""
        if self.panic:
            return f"the kernel panicked: {self.panic}"
        if self.guest_failure:
            return f"the machine reported a failure: {self.guest_failure}"
        if self.firmware_failure:
            return f"the firmware gave up on this boot path: {self.firmware_failure}"
        after = f" after {self.reboots} reboot{'s' if self.reboots > 1 else ''}" if self.reboots else ""
        if self.timed_out:
            return f"nothing matched {self.expect.pattern!r}{after} within {self.timeout:.0f} s (QEMU killed)"
        if self.match:
            return "booted"
        return (f"QEMU exited ({self.proc.popen.returncode}) after {self.seconds:.0f} s without a match of "
                f"{self.expect.pattern!r}{after}")


# ---------------------------------------------------------------------------------- the lab


class Lab:
    """See the module doc. Call `up()` first and `down()` always (a context manager does both)."""

    def __init__(
        self,
        root: Path,
        *,
        config: Path | None = None,
        host: str = "second-address",
        http_port: int = HTTP_PORT,
        capture: bool = True,
        log_level: str = "debug",
        netbootd_argv: Sequence[str] = (sys.executable, "-m", "netbootd"),
        site_next_server: bool = False,
        ipv6: bool = False,
        site_ipxe_script: str | None = IPXE_SCRIPT_PATH,
    ) -> None:
        """`site_next_server`: the site's DHCP server names netbootd as next-server (BOOTP siaddr),
        as a site must for Debian's signed GRUB when netbootd runs on another host.
        `ipv6`: an IPv6-only segment (see the module doc); `site_ipxe_script` (IPv6 only): the
        path of netbootd's URL the site's DHCPv6 server gives iPXE clients in option 59 (None: none)."""
        if host not in ("second-address", "own-host", "site-address"):
            raise ValueError(f"host={host!r}: expected second-address, own-host or site-address")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.ipv6 = ipv6
        self.site_ipxe_script = site_ipxe_script
        self.net = Topology("nblab", error=LabError)  # its namespaces, and what runs in them
        self.ns = self.net.name
        self.boot_ns = f"{self.ns}b" if host == "own-host" else self.ns
        self.boot_if = "nb0" if host == "own-host" else "br0"
        if ipv6:
            self.site_ip, self.boot_ip = SITE_IP6, SITE_IP6 if host == "site-address" else BOOT_IP6
        else:
            self.site_ip, self.boot_ip = SITE_IP, SITE_IP if host == "site-address" else BOOT_IP
        self.http_port = http_port
        self.capture = capture and shutil.which("tcpdump") is not None
        self.netbootd_argv = list(netbootd_argv)
        self.site_next_server = site_next_server
        self.accel = accelerator()
        self.boots: list[Boot] = []
        self.taps = 0
        self.netbootd: Proc | None = None
        self.dnsmasq: Proc | None = None
        self.tcpdump: Proc | None = None
        self.pcap = root / "bridge.pcap"
        self.conf = root / "netbootd"
        self.conf.mkdir(exist_ok=True)
        self.settings_path = self.conf / "netbootd.toml"
        self.settings = self._settings(config, log_level)
        self.machines = self.settings.machines_dir
        self.files = self.settings.files_root
        self.write_settings(self.settings)

    # -- configuration

    def _settings(self, config: Path | None, log_level: str) -> Settings:
        """The lab's netbootd settings: the operator's (`config`) or the lab's own, with the lab's
        addresses, interface, ports, state and cache."""
        machines = self.conf / "machines"
        if config is None:
            base = Settings(machines_dir=machines, files_root=self.conf / "files")
            base.files_root.mkdir(exist_ok=True)
            machines.mkdir(exist_ok=True)
            (machines / "profiles").mkdir(exist_ok=True)
        else:
            from netbootd.config.discover import find_settings

            base = find_settings(str(config))
            if not base.machines_dir.is_dir():
                raise LabError(f"the machines directory {base.machines_dir} of {config} does not exist")
            # a snapshot: what the lab (or a test) writes never lands in the operator's directory
            shutil.copytree(base.machines_dir, machines, symlinks=False, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".*"))
        http = attrs.evolve(base.http, port=self.http_port, listen="", public_url="")
        advertise = "" if self.host == "site-address" else self.boot_ip
        return attrs.evolve(
            base,
            advertise="" if self.ipv6 else advertise,
            advertise6=advertise if self.ipv6 else "",
            machines_dir=machines,
            files_root=base.files_root.absolute(),
            # in the configuration directory: a lab's netbootd.toml works wherever that is mounted
            state_dir=self.conf / "state",
            cache_dir=self.conf / "cache",
            dhcp=attrs.evolve(base.dhcp, enabled=True, port=67, proxy_port=4011, interfaces=(self.boot_if,),
                              ipv6=True if self.ipv6 else base.dhcp.ipv6, port6=547),
            tftp=attrs.evolve(base.tftp, enabled=True, port=69, listen=""),
            http=http,
            # the timeline (/machines) is on the management listener only: the lab reads it there,
            # on loopback inside netbootd's namespace, without the operator's credentials
            ui=attrs.evolve(base.ui, listen=f"127.0.0.1:{UI_PORT}", auth_file=None),
            log=LogSettings(format="text", level=log_level),
            source=None,
        )

    def write_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.settings_path.write_text(to_toml(settings, relative_to=self.conf))

    def machine(self, mac: str, text: str) -> Path:
        """Write machines/<mac with dashes>.toml (atomically: a rename, as a ConfigMap or editor would)."""
        path = self.machines / (mac.lower().replace(":", "-") + ".toml")
        tmp = self.machines / f".{path.name}.tmp"
        tmp.write_text(textwrap.dedent(text))
        tmp.rename(path)
        return path

    @property
    def url(self) -> str:
        """netbootd's HTTP base URL, as the machines reach it."""
        host = f"[{self.boot_ip}]" if ":" in self.boot_ip else self.boot_ip
        return f"http://{host}:{self.http_port}"

    # -- plumbing

    def ip(self, *args: str) -> None:
        self.net.ip(*args)

    def start(self, name: str, argv: list[str], ns: str | None = None, **kw) -> Proc:
        return self.net.namespaces[ns or self.ns].start(name, argv, self.root / f"{name}.log", **kw)

    def add_host(self, ns: str, ifname: str, address: str, bridge_port: str) -> None:
        """A host of its own: namespace `ns` (the lab's name and a suffix), joined to the bridge by a veth pair."""
        if not ns.startswith(self.ns):
            raise ValueError(f"{ns}: a lab's namespaces are named {self.ns}<suffix>")
        host = self.net.namespace(ns.removeprefix(self.ns))
        self.net.veth(self.net.namespaces[self.ns], bridge_port, host, ifname, master="br0")
        host.address(ifname, prefixed(address))

    def up(self) -> Lab:
        lan = self.net.namespace()
        lan.bridge("br0", mac=BRIDGE_MAC6 if self.ipv6 else None)
        if not self.ipv6:
            lan.address("br0", f"{SITE_IP}/24")
        lan.address("br0", "fd77::1/64")
        if self.host == "own-host":
            self.add_host(self.boot_ns, "nb0", self.boot_ip, "vb0")
        elif self.host == "second-address":
            lan.address("br0", prefixed(self.boot_ip))
        if self.capture:
            self.tcpdump = self.start("tcpdump", ["tcpdump", "-i", "br0", "-n", "-U", "-s", "1600", "-w", str(self.pcap)])
        self.dnsmasq = dnsmasq = self.start("dnsmasq", self.dnsmasq_argv())
        self.wait_until(lambda: "started" in dnsmasq.text(), dnsmasq, 10, "dnsmasq to start")
        if self.tcpdump is not None:
            self.wait_until(lambda: self.pcap.exists(), self.tcpdump, 10, "tcpdump to start")
        return self

    def dnsmasq_argv(self) -> list[str]:
        """The site's address server: addresses only (IPv4 and router advertisements; or, IPv6-only,
        stateful DHCPv6 + RA), no boot options but the ones a site must give (see the module doc)."""
        common = [
            "dnsmasq",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-dhcp",
            "--port=0",  # no DNS: addresses only
            "--bind-interfaces",  # SO_REUSEADDR on 67 and 547, so netbootd can bind them too on this host
            "--interface=br0",
            "--except-interface=lo",
            f"--listen-address={self.site_ip}",
            "--dhcp-authoritative",
            f"--dhcp-leasefile={self.root / 'dnsmasq.leases'}",
            f"--pid-file={self.root / 'dnsmasq.pid'}",
            "--user=root",
            "--group=root",
        ]
        if self.ipv6:
            return [
                *common,
                # stateful (IA_NA addresses: EDK2 needs one), RA with the M flag; `slaac` adds the A
                # flag for the test guest's kernel
                f"--dhcp-range={PREFIX6}100,{PREFIX6}1ff,slaac,64,1h",
                "--enable-ra",
                *([
                    # iPXE boots option 59 of the address server's REPLY only: netbootd's script URL
                    "--dhcp-userclass=set:ipxe,iPXE",
                    f"--dhcp-option=tag:ipxe,option6:bootfile-url,{self.url}{self.site_ipxe_script}",
                ] if self.site_ipxe_script else []),
            ]
        return [
            *common,
            "--no-ping",  # else it pings ~3 s before each offer
            f"--dhcp-range={PREFIX}.100,{PREFIX}.199,255.255.255.0,1h",
            "--enable-ra",  # without a router advert iPXE waits ~13 s on IPv6
            "--dhcp-range=::,constructor:br0,ra-only",
            *([f"--dhcp-boot=,,{self.boot_ip}"] if self.site_next_server else []),  # siaddr only, no file
        ]

    def wait_until(self, predicate: Callable[[], Any], proc: Proc, timeout: float, what: str) -> None:
        wait_until(predicate, proc, timeout, what, LabError)

    def __enter__(self) -> Lab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- netbootd

    def check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run([*self.netbootd_argv, "check", "--config", str(self.settings_path)],
                              capture_output=True, text=True, timeout=120)

    def start_netbootd(self, check_config: bool = True, argv: Sequence[str] | None = None) -> Proc:
        """`netbootd check` first (unless the test means to start with a broken file), then serve.
        `argv`: another command that serves the lab's configuration (e.g. a container image's)."""
        if check_config:
            check = self.check_config()
            if check.returncode != 0:
                raise LabError(f"netbootd check {self.settings_path} failed:\n{check.stdout}{check.stderr}")
        self.netbootd = netbootd = self.start(
            "netbootd",
            list(argv or [*self.netbootd_argv, "serve", "--config", str(self.settings_path)]),
            ns=self.boot_ns,
            cwd=self.conf,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.wait_until(lambda: re.search(r"\blistening\b", netbootd.text()), netbootd, 30, "netbootd to listen")
        return netbootd

    @property
    def ui_url(self) -> str:
        """netbootd's management listener (the timeline, /healthz), as reached inside its namespace."""
        return f"http://127.0.0.1:{UI_PORT}"

    def get_json(self, path: str) -> Any:
        """GET <path> on netbootd's management listener (ui.listen) from inside its namespace, as JSON."""
        client = NetnsClient(self.boot_ns)
        try:
            r = client.get(f"{self.ui_url}{path}")
        finally:
            client.close()
        r.raise_for_status()
        return r.json()

    def dhcp_packets(self) -> list:
        """Every DHCP packet on the bridge so far (netbootd.testing.capture.DhcpPacket)."""
        from netbootd.testing.capture import dhcp_packets

        return dhcp_packets(self.pcap) if self.capture else []

    def dhcp6_datagrams(self) -> list:
        """Every DHCPv6 datagram on the bridge so far (netbootd.testing.capture.Dhcp6Datagram)."""
        from netbootd.testing.capture import dhcp6_datagrams

        return dhcp6_datagrams(self.pcap) if self.capture else []

    def netbootd_log(self) -> str:
        return self.netbootd.text() if self.netbootd else ""

    def netbootd_lines(self, mac: str) -> list[str]:
        """netbootd's log lines about one machine (they carry its MAC)."""
        forms = (mac.lower(), mac.lower().replace(":", "-"))
        return [line for line in self.netbootd_log().splitlines() if any(f in line.lower() for f in forms)]

    def wait_log(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match[str]:
        """Wait until netbootd's log (from character `after`) matches `pattern`."""
        assert self.netbootd is not None
        found: list[re.Match[str]] = []

        def match() -> bool:
            m = re.search(pattern, self.netbootd_log()[after:])
            if m:
                found.append(m)
            return bool(m)

        self.wait_until(match, self.netbootd, timeout, f"netbootd to log /{pattern}/")
        return found[0]

    # -- machines

    def add_tap(self) -> str:
        name = f"tap{self.taps}"
        self.taps += 1
        lan = self.net.namespaces[self.ns]
        lan.ip("tuntap", "add", "dev", name, "mode", "tap")
        lan.ip("link", "set", name, "master", "br0")
        lan.up(name)
        return name

    def launch(self, mac: str, firmware_name: str, timeout: float | None = None, expect: str | None = None,
               fail: str | None = None, *, disk: Disk | Path | str | None = None, memory: int | str | None = None,
               reboots: int = 0, follow_reboots: bool | None = None, qemu_args: Sequence[str] = ()) -> Boot:
        """Power on one machine (it runs while the caller does other things; see `wait`).

        `disk`: a disk after the network in its boot order (as a bare-metal fleet is set up) — a
        size ("64M", "2G": a new qcow2 `<machine>.qcow2` in the lab's directory), or an existing
        image (a Path, or a `Disk`), which the machine writes to. `memory`: MiB, or "1G" (default
        512 MiB; 1 GiB with a disk, what an installer needs). `follow_reboots` (default: when it has
        a disk, or `reboots` > 0): a reboot resets the machine instead of ending QEMU, and the run
        goes on through its power-ons; `reboots`: `expect` counts only from power-on `reboots` + 1
        on. `qemu_args`: appended to QEMU's command line."""
        kind = firmware(firmware_name)
        if kind.ipv6 != self.ipv6:
            fix = "use Lab(ipv6=True)" if kind.ipv6 else "pick an IPv6 firmware kind (uefi6, uefi-http6)"
            raise LabError(f"firmware {kind.name} boots over {'IPv6' if kind.ipv6 else 'IPv4'} and this lab is "
                           f"{'IPv6-only' if self.ipv6 else 'IPv4'}: {fix}")
        if reboots < 0 or (reboots and follow_reboots is False):
            raise LabError(f"reboots={reboots}: a count of reboots to follow (follow_reboots=False follows none)")
        try:
            memory_mb = parse_memory(memory) if memory is not None else None
        except ValueError as exc:
            raise LabError(str(exc)) from None
        n = len(self.boots)
        name = f"vm{n}-{kind.name}-{mac.replace(':', '')[-4:]}"
        image = self.disk(disk, name) if disk is not None else None
        follow = follow_reboots if follow_reboots is not None else (image is not None or reboots > 0)
        vm = Vm(mac=mac, tap=self.add_tap(), workdir=self.root, name=name, accel=self.accel,
                memory_mb=memory_mb or (1024 if image is not None else 512), disk=image, reboot=follow,
                extra=tuple(qemu_args))
        proc = self.start(name, kind.argv(vm))
        boot = Boot(name, mac, kind.name, proc, timeout or kind.timeout, re.compile(expect or DEFAULT_EXPECT),
                    re.compile(fail) if fail else None, disk=image, follow=follow, reboots=reboots)
        self.boots.append(boot)
        return boot

    def disk(self, disk: Disk | Path | str, name: str = "disk") -> Disk:
        """A `Disk` for `launch`: a size makes a new qcow2 `<name>.qcow2` in the lab's directory."""
        try:
            if isinstance(disk, Disk):
                return disk
            if isinstance(disk, str) and SIZE.match(disk):
                return new_disk(self.root / f"{name}.qcow2", disk)
            return existing_disk(Path(disk))
        except DiskError as exc:
            raise LabError(str(exc)) from None

    def wait(self, *boots: Boot, on_poll: Callable[[], None] | None = None) -> None:
        """Until every machine matched, failed, powered off, or ran out of time."""
        pending = list(boots)
        while pending:
            for boot in list(pending):
                boot.scan()
                elapsed = time.monotonic() - boot.proc.started
                done = not boot.proc.running()
                if boot.finished and not done:
                    # it printed what decides; let it power off by itself for a moment, no more
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
            if on_poll is not None:
                on_poll()
            time.sleep(0.2)

    def boot(self, mac: str, firmware: str = "bios", expect: str | None = None, timeout: float | None = None,
             *, fail: str | None = None, disk: Disk | Path | str | None = None, memory: int | str | None = None,
             reboots: int = 0, follow_reboots: bool | None = None, qemu_args: Sequence[str] = (),
             on_event: Callable[[dict], None] | None = None, on_console: Callable[[str], None] | None = None,
             on_power_on: Callable[[PowerOn], None] | None = None,
             on_downloads: Callable[[list[dict]], None] | None = None) -> BootResult:
        """Power on one machine and wait for it: the result says whether `expect` (a regular
        expression on its console; default: the kernel started the initramfs' init) matched.
        `disk`, `memory`, `reboots`, `follow_reboots`, `qemu_args`: see `launch`; the callbacks:
        `boot_many`."""
        return self.boot_many([(mac, firmware)], expect, timeout, fail=fail, disk=disk, memory=memory,
                              reboots=reboots, follow_reboots=follow_reboots, qemu_args=qemu_args,
                              on_event=on_event, on_console=on_console, on_power_on=on_power_on,
                              on_downloads=on_downloads)[0]

    def boot_many(self, machines: Sequence[tuple[str, str]], expect: str | None = None, timeout: float | None = None,
                  *, fail: str | None = None, disk: Disk | Path | str | None = None, memory: int | str | None = None,
                  reboots: int = 0, follow_reboots: bool | None = None, qemu_args: Sequence[str] = (),
                  on_event: Callable[[dict], None] | None = None, on_console: Callable[[str], None] | None = None,
                  on_power_on: Callable[[PowerOn], None] | None = None,
                  on_downloads: Callable[[list[dict]], None] | None = None) -> list[BootResult]:
        """Power on machines at the same time (each its own (mac, firmware)) and wait for all.
        `disk` etc. apply to each (see `launch`): a size gives each machine a new disk of its own; an
        existing image can serve one machine only. `on_event` gets netbootd's timeline events as
        they happen (with "mac" and "power_on", its number, added), `on_console` each new piece of
        console output (one machine at a time: for a terminal), `on_power_on` each power-on after
        the first as the lab sees it begin (a machine that follows its reboots), `on_downloads` a
        machine's downloads still running (path, sent, total, seconds; with "mac"), at each poll."""
        if disk is not None and not (isinstance(disk, str) and SIZE.match(disk)) and len(machines) > 1:
            raise LabError(f"disk={disk}: one existing image cannot serve {len(machines)} machines (a size gives "
                           "each a disk of its own)")
        if self.netbootd is None:
            # not refused for errors elsewhere in the configuration: netbootd holds a broken machine
            # (its boot then fails, saying why) and serves the others; `netbootd check` is the gate
            self.start_netbootd(check_config=False)
        boots = [self.launch(mac, fw, timeout, expect, fail, disk=disk, memory=memory, reboots=reboots,
                             follow_reboots=follow_reboots, qemu_args=qemu_args) for mac, fw in machines]
        client = NetnsClient(self.boot_ns)
        watches = []

        def announce(boot: Boot) -> list[PowerOn]:
            """The machine's power-ons; a new one is reported (and, when only the timeline showed
            it, where the console stood then is kept: its console begins there)."""
            power_ons = boot.power_ons()
            for power_on in power_ons[boot.announced:]:
                if power_on.how.startswith("timeline") and power_on.started not in boot.console_at:
                    boot.console_at[power_on.started] = len(boot.proc.text())
                if on_power_on is not None:
                    on_power_on(power_on)
            boot.announced = max(boot.announced, len(power_ons))
            return power_ons

        for boot in boots:
            def forward(event: dict, boot: Boot = boot) -> None:
                power_ons = announce(boot) if boot.follow else []
                if on_event is not None:
                    on_event({**event, "mac": boot.mac, "power_on": poweron.number_of(power_ons, event)})
            def downloads(running: list[dict], boot: Boot = boot) -> None:
                if on_downloads is not None:
                    on_downloads([{**d, "mac": boot.mac} for d in running])
            watch = TimelineWatch(client, self.ui_url, boot.mac, forward, downloads)
            boot.events = watch.events  # the power-ons are told apart with them
            watches.append(watch)
        offsets = [0] * len(boots)

        def poll() -> None:
            for boot in boots:
                if boot.follow:
                    announce(boot)  # a start the console showed, before the events that follow it
            for watch in watches:
                watch.poll()
            if on_console is not None:
                for i, boot in enumerate(boots):
                    text = boot.proc.text()
                    if len(text) > offsets[i]:
                        on_console(ANSI.sub("", text[offsets[i]:]))
                        offsets[i] = len(text)

        try:
            self.wait(*boots, on_poll=poll)
            poll()
        finally:
            client.close()
        return [self.result(boot) for boot in boots]

    def result(self, boot: Boot) -> BootResult:
        """What a finished machine's run tells its caller."""
        power_ons = boot.power_ons()
        if boot.proc.popen.returncode == 0 and power_ons[-1].path[-1] not in poweron.ENDS:
            power_ons[-1] = attrs.evolve(power_ons[-1], path=(*power_ons[-1].path, "power off"))  # QEMU exited by itself
        if boot.booted:
            power_ons[-1] = poweron.ended(power_ons[-1], "expect matched")
        elif boot.timed_out:
            power_ons[-1] = poweron.ended(power_ons[-1], "timed out")
        return BootResult(
            mac=boot.mac,
            firmware=boot.firmware,
            booted=boot.booted,
            seconds=round(boot.seconds, 2),
            reason=boot.why(),
            stages=stages_from(boot.events, boot.proc.started_wall, power_ons),
            console=boot.console(),
            timeline=list(boot.events),
            netbootd_log=self.netbootd_lines(boot.mac),
            match=boot.match.group(0) if boot.match else "",
            timed_out=boot.timed_out,
            power_ons=tuple(power_ons),
            disk=boot.disk.path if boot.disk is not None else None,
        )

    # -- reports and teardown

    def report(self) -> str:
        parts = [f"lab files: {self.root}"]
        for boot in self.boots:
            parts.append(f"--- serial {boot.name} ({boot.seconds:.0f} s): {boot.why()} ---\n{tail(boot.proc.text(), 30)}")
        if self.netbootd:
            parts.append(f"--- netbootd log ---\n{tail(self.netbootd.text(), 40)}")
        if self.dnsmasq:
            parts.append(f"--- dnsmasq (site DHCP) ---\n{tail(self.dnsmasq.text(), 15)}")
        if self.capture:
            from netbootd.testing.capture import summary

            parts.append(f"--- capture on br0 ({self.pcap.name}) ---\n{summary(self.pcap, 40, ipv6=self.ipv6)}")
        return "\n".join(parts)

    def keep(self, dest: Path) -> Path:
        """Copy the lab's logs, capture and configuration to `dest` (a failed test's artefacts)."""
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.root.iterdir():
            if path.is_file() and path.suffix in (".log", ".pcap", ".leases"):
                shutil.copy(path, dest / path.name)
        shutil.copytree(self.machines, dest / "machines", dirs_exist_ok=True)
        shutil.copy(self.settings_path, dest / "netbootd.toml")
        if self.capture and self.pcap.exists():
            from netbootd.testing.capture import decoded

            (dest / "capture.txt").write_text(decoded(self.pcap))
        return dest

    def down(self) -> None:
        self.net.close()  # deleting a namespace deletes its bridge, taps and veth ends
