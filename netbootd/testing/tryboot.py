"""`netbootd try MAC`: boot a throwaway QEMU machine with that MAC against a configuration.

Everything happens in a private lab (netbootd.testing.lab): a network namespace with a bridge, a
tap, an address-only dnsmasq as the site's DHCP server and a private netbootd on the same
configuration with its own state and cache. The console streams to the terminal, netbootd's
timeline for the machine is printed as stages complete (a large download also while it runs:
netbootd.testing.progress), and the exit status says whether it booted.

Before QEMU starts, the configuration is asked what the machine would get: a held, ignored or
unknown machine, or one whose kernel is a remote URL the isolated lab cannot reach, is reported
at once (exit 1) instead of after a timeout.

`--disk SIZE|PATH`: the machine gets a disk after the network in its boot order (as a bare-metal
fleet is set up), 1 GiB unless `--memory` says otherwise, and QEMU runs without `-no-reboot`: the
run follows the machine through its reboots (provision, then boot from the disk) until `--expect`
matches (`--reboots N`: after N reboots), and prints each power-on's path
(netbootd.testing.poweron says how a power-on is told apart). A new disk lives in the try's
directory and goes with it, unless `--keep`.

`--ipv6` (or an IPv6 firmware kind): the lab is IPv6-only — the site's server gives stateful DHCPv6
addresses and router advertisements, and iPXE its script URL (see netbootd.testing.lab) — and OVMF
boots with IPv4 PXE off (uefi6, the default then) or IPv4 off (uefi-http6).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import attrs

from netbootd.config.discover import config_path
from netbootd.core.explain import DEFAULT_FIRMWARE, FIRMWARE_NAMES, add_firmware_option
from netbootd.testing import progress
from netbootd.testing.firmware import FIRMWARES, firmware
from netbootd.testing.results import DEFAULT_EXPECT, BootResult, PowerOn, describe, stage_names

# the client each firmware kind presents on its first request (the names explain shares)
_CLIENTS = {name: (fw.name, arch.name) for name, (fw, arch) in FIRMWARE_NAMES.items()}
IPV6_DEFAULT = "uefi6"


class Refused(Exception):
    """The machine cannot boot in the lab; the message says why (before QEMU starts)."""


def preflight(config: str | None, mac: str, firmware_name: str, server_ip: str = "10.77.0.2",
              http_port: int | None = None) -> str:
    """What the configuration gives this machine, as one line; raises Refused when it cannot boot
    in a lab (held, ignored, unknown, or its artefacts are out of the lab's reach). `http_port`:
    the port the lab's netbootd serves HTTP on (as the lab sets it), for the URLs in the line."""
    from netbootd.config.catalog import build_catalog
    from netbootd.config.discover import find_settings
    from netbootd.config.machines import BootKind
    from netbootd.config.machinesdir import load_machines
    from netbootd.core.decide import BootCore
    from netbootd.model import Arch, Client, Firmware

    settings = find_settings(config)
    if http_port is not None:  # the lab's netbootd listens there, whatever the configuration says (Lab.settings)
        settings = attrs.evolve(settings, http=attrs.evolve(settings.http, port=http_port, public_url=""))
    core = BootCore(settings, build_catalog(load_machines(settings)))  # a fresh daemon: no last good versions
    fw, arch = _CLIENTS.get(firmware_name, ("EFI_PXE", "EFI64"))
    decision = core.decide(Client(mac, Arch[arch], Firmware[fw]), server_ip)
    if decision.offer is None:
        raise Refused(f"netbootd would not answer {mac}: {decision.reason}")
    machine = decision.machine
    assert machine is not None
    remote = []
    boot = machine.boot
    if boot.kind is BootKind.KERNEL:
        remote = [loc for loc in (boot.kernel, *boot.initrds) if "://" in loc]
    elif boot.kind is BootKind.EFI and "://" in boot.efi:
        remote = [boot.efi]
    elif boot.kind is BootKind.CHAIN:
        remote = ["the chain URL of boot.chain"]
    elif boot.kind is BootKind.IMAGE:
        remote = [f"{boot.image} (netbootd fetches image layers from the registry {boot.image.registry if boot.image else ''})"]
    if remote:
        raise Refused(
            f"{mac} ({machine.source.name}) boots from outside the lab: {', '.join(remote)}. The lab is an isolated "
            "network namespace with no route out (it never touches this host's networks), so neither the machine "
            "nor the lab's netbootd could fetch it. Put the files under files_root (and name them by path in the "
            "machine file) to try this boot here."
        )
    return f"{machine.name}: {boot.kind.value}; {decision.offer.describe()}"


def step(event: dict) -> str:
    """A timeline event as try's stage stream says it. The firmware's REQUEST on 67 that takes the
    site server's lease is a normal step (netbootd, a proxy, leaves it to that server), not a
    refusal: said so, not as `answered=False reason=...`."""
    from netbootd.dhcp.answer import SITE_REQUEST

    if event.get("bytes") and event.get("path"):  # a download: its size and time first
        rest = {k: v for k, v in event.items() if k not in ("mac", "power_on", "bytes", "seconds", "mbps")}
        return f"{progress.done_line(event)}  {describe(rest)}"
    if event.get("answered") is False and str(event.get("reason", "")).startswith(SITE_REQUEST):
        server = str(event["reason"]).removeprefix(SITE_REQUEST).strip(" ()").removeprefix("server id ")
        return (f"the firmware takes its address from the site's DHCP server ({server}): normal, that server's to "
                f"answer (port={event.get('port', 67)} firmware={event.get('firmware', '')})")
    return describe({k: v for k, v in event.items() if k not in ("mac", "power_on")})


class Printer:
    """The terminal side: console text, and the timeline lines in between."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.started = time.time()
        self.events: list[dict] = []  # the current power-on's
        self.power_on = 1
        self.progress = progress.ProgressLines(lambda line: self.say(f"+{time.time() - self.started:6.2f} s  "
                                                                     f"{'download':<9} {line}"))

    def console(self, text: str) -> None:
        if not self.quiet:
            self.out.write(text)
            self.out.flush()

    def event(self, event: dict) -> None:
        if event.get("power_on", 1) != self.power_on:
            self.power_on, self.events = event.get("power_on", 1), []  # each power-on's stages named anew
        self.events.append(event)
        name = stage_names(self.events)[-1]
        at = event.get("time", time.time()) - self.started
        self.say(f"+{at:6.2f} s  {name:<9} {step(event)}")

    def powered_on(self, power_on: PowerOn) -> None:
        self.say(f"+{power_on.started - self.started:6.2f} s  power-on {power_on.number} ({power_on.how})")

    def say(self, line: str) -> None:
        prefix = "\n" if not self.quiet else ""
        self.out.write(f"{prefix}==> {line}\n")
        self.out.flush()


def run(mac: str, config: str | None, firmware_name: str | None, expect: str | None, timeout: float | None,
        keep: bool, quiet: bool, out: TextIO = sys.stdout, ipv6: bool = False, disk: str | None = None,
        memory: str | None = None, reboots: int = 0) -> int:
    """The command; returns the exit status (0 booted, 1 did not, 2 cannot try here)."""
    from netbootd.testing.lab import BOOT_IP, BOOT_IP6, HTTP_PORT, PREFIX6, Lab, LabError, missing_requirements

    firmware_name = firmware_name or (IPV6_DEFAULT if ipv6 else DEFAULT_FIRMWARE)
    if ipv6 and not firmware(firmware_name).ipv6:
        ipv6_kinds = ", ".join(name for name, kind in FIRMWARES.items() if kind.ipv6)
        print(f"netbootd try: --ipv6 makes the lab IPv6-only, which --firmware {firmware_name} cannot boot on: "
              f"use one of {ipv6_kinds}", file=sys.stderr)
        return 2
    ipv6 = ipv6 or firmware(firmware_name).ipv6  # an IPv6 firmware kind needs the IPv6-only lab
    reason = missing_requirements(firmware_name)
    if reason:
        print(f"netbootd try: {reason}", file=sys.stderr)
        return 2
    problem = _disk_problem(disk, memory, reboots)
    if problem:
        print(f"netbootd try: {problem}", file=sys.stderr)
        return 2
    try:
        offered = preflight(config, mac, firmware_name, BOOT_IP6 if ipv6 else BOOT_IP, HTTP_PORT)
    except Refused as exc:
        print(f"netbootd try: {exc}", file=sys.stderr)
        return 1
    kind = firmware(firmware_name)
    printer = Printer(out, quiet)
    root = Path(tempfile.mkdtemp(prefix="netbootd-try-"))
    lab = Lab(root, config=Path(config) if config else config_path(), log_level="debug", ipv6=ipv6)
    result: BootResult | None = None
    try:
        lab.up()
        lab.start_netbootd(check_config=False)  # errors in other machines' files must not stop this one
        printer.say(f"{mac}: {kind.description}, {lab.accel.upper()}{' (no usable KVM)' if lab.accel == 'tcg' else ''}; "
                    f"netbootd offers {offered}")
        if ipv6:
            printer.say(f"IPv6-only lab: the site's DHCPv6 server ({lab.site_ip}) leases addresses in {PREFIX6}/64 "
                        f"(stateful) and gives iPXE its script URL {lab.url}{lab.site_ipxe_script}; netbootd at "
                        f"{lab.boot_ip}")
        if disk is not None or reboots:
            printer.say(_following(lab, disk, memory, reboots, expect))
        printer.started = time.time()
        result = lab.boot(mac, kind.name, expect, timeout, disk=disk, memory=memory, reboots=reboots,
                          on_event=printer.event, on_console=printer.console, on_power_on=printer.powered_on,
                          on_downloads=printer.progress.update)
    except LabError as exc:
        print(f"netbootd try: the lab could not be set up: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnetbootd try: interrupted", file=sys.stderr)
        return 130
    finally:
        lab.down()
        if not (keep or (quiet and result is not None)):
            shutil.rmtree(root, ignore_errors=True)
    report(printer, result, expect)
    if keep or quiet:
        disk_kept = f", disk: {result.disk}" if result.disk is not None and result.disk.parent == root else ""
        printer.say(f"lab files kept in {root} (console: {root}/{lab.boots[0].name}.log, netbootd.log, bridge.pcap"
                    f"{disk_kept})")
    return 0 if result.booted else 1


def _disk_problem(disk: str | None, memory: str | None, reboots: int) -> str | None:
    """Why --disk, --memory or --reboots cannot be used as given (before a lab is made)."""
    from netbootd.testing.firmware import SIZE, parse_memory

    if disk is not None and not SIZE.match(disk):
        if not Path(disk).is_file():
            return f"--disk {disk}: neither a size (64M, 2G: a new qcow2) nor an existing disk image"
    if disk is not None and shutil.which("qemu-img") is None:
        return "--disk needs qemu-img (apt-get install qemu-utils)"
    if memory is not None:
        try:
            parse_memory(memory)
        except ValueError as exc:
            return f"--memory: {exc}"
    if reboots < 0:
        return f"--reboots {reboots}: a number of reboots (0 or more)"
    return None


def _following(lab, disk: str | None, memory: str | None, reboots: int, expect: str | None) -> str:
    """The line that says what a run with a disk or reboots does."""
    from netbootd.testing.firmware import SIZE, parse_memory

    where = ""
    if disk is not None:
        where = (f"a new {disk} qcow2 disk in {lab.root}" if SIZE.match(disk) else f"the disk image {disk} (written to)")
        where += ", booted after the network; "
    mib = parse_memory(memory) if memory else (1024 if disk is not None else 512)
    until = f"--expect '{expect}'" if expect else "the default test"
    after = f" after {reboots} reboot{'s' if reboots != 1 else ''}" if reboots else ""
    hint = ("; the default test matches at the first kernel start: give --expect (what the installed system prints) "
            "or --reboots to follow the machine further") if not expect and not reboots else ""
    return f"{where}{mib} MiB; reboots are followed until {until} matches{after} (or --timeout){hint}"


def report(printer: Printer, result: BootResult, expect: str | None) -> None:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.stages.items()) or "none"
    many = len(result.power_ons) > 1 or result.disk is not None
    if result.booted:
        printer.say(f"BOOTED in {result.seconds:.1f} s: {result.match.strip()!r}")
        for line in result.paths() if many else ():
            printer.say(line)
        printer.say(f"stages: {stages}")
        return
    printer.say(f"DID NOT BOOT ({result.seconds:.1f} s): {result.reason}")
    printer.say(f"stopped after: {result.stopped_at()}")
    for line in result.paths() if many else ():
        printer.say(line)
    printer.say(f"stages: {stages}")
    if expect is None and "quiet" in result.console and not result.match:
        printer.say(f"(the default test {DEFAULT_EXPECT!r} needs the kernel's info messages, which `quiet` hides: "
                    "pass --expect with something your system prints)")
    from netbootd.testing.results import tail

    printer.out.write("--- last console lines ---\n" + tail(result.console, 15) + "\n")
    printer.out.write("--- netbootd log lines for this machine ---\n" + "\n".join(result.netbootd_log[-15:]) + "\n")


def add_arguments(parser) -> None:
    parser.add_argument("mac", help="the MAC the virtual machine gets (its machine file decides what it boots)")
    parser.add_argument("--config", help="netbootd.toml, or its directory (found as every subcommand finds it: "
                                          "$NETBOOTD_CONFIG, ./netbootd.toml, ./etc/netbootd, /etc/netbootd)")
    add_firmware_option(parser, default=None,
                        help="; ".join(f"{k}: {v.description}" for k, v in FIRMWARES.items())
                        + f" (default {DEFAULT_FIRMWARE}, the firmware current servers boot with; {IPV6_DEFAULT} "
                          "with --ipv6). `netbootd explain --firmware` takes the same names")
    parser.add_argument("--ipv6", action="store_true",
                        help="an IPv6-only lab: no IPv4, the site's DHCPv6 server gives stateful addresses and iPXE its "
                             f"script URL, OVMF boots with IPv4 PXE off (firmware {IPV6_DEFAULT} or uefi-http6)")
    parser.add_argument("--expect", help=f"a regular expression on the console that means success (default: the "
                                         f"kernel started the initramfs' init: {DEFAULT_EXPECT!r})")
    parser.add_argument("--timeout", type=float, help="seconds before giving up (default: per firmware, 90-180 under TCG)")
    parser.add_argument("--disk", metavar="SIZE|PATH",
                        help="give the machine a disk, booted after the network (BIOS order=nc, UEFI bootindex 2): a "
                             "size (64M, 2G) makes a new qcow2 in the lab's directory, a path uses that image (it is "
                             "written to); the run then follows the machine's reboots, printing each power-on's path")
    parser.add_argument("--memory", help="the machine's memory: MiB, or 1G (default 512 MiB; 1 GiB with --disk)")
    parser.add_argument("--reboots", type=int, default=0,
                        help="follow the machine's reboots, and count --expect only after this many (default 0: "
                             "anywhere; reboots are followed anyway with --disk)")
    parser.add_argument("--keep", action="store_true", help="keep the lab's files (logs, capture, configuration)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not stream the console (it is kept in the lab's files, whose path is printed)")

