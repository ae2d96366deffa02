"""What `netbootd explain` prints, and the dashboard's machine page shows: for one machine and one
firmware, the DHCP answer, the loader's chain and what it renders, Ignition and BOOTy, and the
Secure Boot verdict of every binary offered. Read from the same plans the daemon answers with."""

from __future__ import annotations

import json
import time

from netbootd.config.machines import BootKind, Machine
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore, NoScript
from netbootd.core.secureboot import boot_binaries, findings
from netbootd.model import Arch, Client, Firmware

# The firmware names `netbootd explain --firmware` and `netbootd try --firmware` share (try's lab
# kinds, netbootd.testing.firmware.FIRMWARES, are these names), each with the firmware that first
# asks and the arch it reports. Secure Boot and IPv6 kinds ask as their plain kind does: what a
# machine with secure_boot = true is offered comes from its machine file, not from how it asks.
FIRMWARE_NAMES = {
    "bios": (Firmware.BIOS_PXE, Arch.BIOS),
    "uefi": (Firmware.EFI_PXE, Arch.EFI64),
    "uefi-http": (Firmware.HTTP_BOOT, Arch.EFI64),
    "uefi-secure": (Firmware.EFI_PXE, Arch.EFI64),
    "uefi-http-secure": (Firmware.HTTP_BOOT, Arch.EFI64),
    "arm64-uefi": (Firmware.EFI_PXE, Arch.ARM64),
    "arm64-http": (Firmware.HTTP_BOOT, Arch.ARM64),
    "arm64-secure": (Firmware.EFI_PXE, Arch.ARM64),
    "uefi6": (Firmware.EFI_PXE, Arch.EFI64),
    "uefi-http6": (Firmware.HTTP_BOOT, Arch.EFI64),
}
# The default of both commands: UEFI PXE on x86_64, what current servers boot with (BIOS is legacy)
DEFAULT_FIRMWARE = "uefi"
# explain's names before it shared try's (`explain --arch`; the dashboard's keys): each the same as
# a name above, but efi32, which only explain knows (a 32-bit UEFI; no lab kind boots one).
FIRMWARE_ALIASES = {"efi64": "uefi", "arm64": "arm64-uefi", "http": "uefi-http", "http-arm64": "arm64-http"}
# What explain accepts: the shared names, the aliases and efi32
FIRMWARES = {
    **FIRMWARE_NAMES,
    **{alias: FIRMWARE_NAMES[name] for alias, name in FIRMWARE_ALIASES.items()},
    "efi32": (Firmware.EFI_PXE, Arch.EFI32),
}
SAMPLE_SERVER = "192.0.2.1"


class _Accepts(list):
    """argparse choices that list (in usage, help and errors) the shared names, and accept more."""

    def __init__(self, shown, accepted) -> None:
        super().__init__(shown)
        self.accepted = set(accepted)

    def __contains__(self, value) -> bool:
        return value in self.accepted


def add_firmware_option(parser, *flags: str, accepted=FIRMWARE_NAMES, default: str | None = DEFAULT_FIRMWARE,
                        help: str) -> None:
    """`--firmware NAME` (and `flags`, its other spellings) as explain and try both take it: the
    shared names, the former explain names mapped to them; `accepted`: what this command can use."""
    parser.add_argument("--firmware", *flags, dest="firmware", metavar="{" + ",".join(FIRMWARE_NAMES) + "}",
                        type=lambda name: FIRMWARE_ALIASES.get(name, name),
                        choices=_Accepts(FIRMWARE_NAMES, accepted), default=default, help=help)


def secure_boot_findings(settings: Settings, core: BootCore, machines):
    """Every binary each Secure Boot machine is offered: its loader's chain, then its boot."""

    def chain(_settings: Settings, machine: Machine):
        return core.loaders[machine.loader].secure_boot_binaries(machine)

    return findings(settings, machines, (chain, boot_binaries))


def secure_boot_lines(core: BootCore, machine: Machine) -> list[str]:
    found = secure_boot_findings(core.settings, core, [machine])
    if not found:
        return []
    return ["--- Secure Boot signatures " + "-" * 38, *(finding.line(with_machine=False) for finding in found)]


def explain_lines(core: BootCore, mac: str, firmware_key: str, server: str, *, show_secrets: bool = False) -> list[str]:
    """The report for one machine and firmware (`firmware_key`: a key of FIRMWARES) on `core`'s
    catalog, as lines. Ignition contents only with `show_secrets`."""
    out: list[str] = []
    emit = out.append
    catalog = core.catalog
    firmware, arch = FIRMWARES[firmware_key]
    machine = core.find(mac, None)
    emit(f"machine   {mac}")
    held = catalog.held_for(mac)
    if held is not None:
        emit(f"config    HELD: {held.error}")
        emit("          this machine gets nothing (no DHCP answer, no TFTP file, /ipxe 404), never the default, "
             "until the file is fixed")
        return out
    if machine is None:
        emit(f"config    none: {core.no_machine_reason()} → netbootd does not answer")
        return out
    profile = f" (profile {machine.profile})" if machine.profile else ""
    emit(f"config    {machine.source}{profile}")
    if machine.name in catalog.stale:
        emit(f"          the file has errors ({catalog.stale[machine.name]}); this is its last good version, "
             f"kept in {core.settings.state_dir}")
    emit(f"boot      {machine.boot.kind.value}")
    if machine.lifecycle.once:
        out += lifecycle_lines(core, machine, mac)
    if machine.vars:
        emit("vars      " + ", ".join(f"{k}={v}" for k, v in machine.vars.items()))
    emit(f"firmware  {firmware.value}, arch {arch.value}; server {server}"
         + (" (pass --server to see real URLs)" if server == SAMPLE_SERVER else ""))
    decision = core.decide(Client(mac, arch, firmware, None), server)
    if decision.offer is None:
        emit(f"DHCP      no answer: {decision.reason}")
    else:
        where = "4011 ACK" if firmware is Firmware.EFI_PXE else "67 OFFER"
        emit(f"DHCP      {where}: {decision.offer.kind.value} {decision.offer.bootfile}")
    plan = core.plan(machine, arch, firmware)
    if decision.offer is not None and not plan.loader and firmware is Firmware.HTTP_BOOT:
        emit("          UEFI HTTP boot runs that EFI binary / UKI itself: no iPXE, no script")
    elif decision.offer is not None and plan.loader == "uki":
        emit("          UEFI HTTP boot runs that UKI, which netbootd assembles of the machine's kernel, initrds and "
             "command line: no iPXE, no script")
        out += core.loaders["uki"].explain(plan, core.rendering(plan, mac, None, server))
    elif decision.offer is not None and plan.loader and firmware is not Firmware.HTTP_BOOT and plan.loader != "ipxe":
        loader = core.loaders[plan.loader]
        render_plan = core.plan(machine, loader.config_arch(machine), Firmware.EFI_PXE)
        out += loader.explain(plan, core.rendering(render_plan, mac, None, server))
    else:
        if firmware is Firmware.HTTP_BOOT and decision.offer is not None:
            emit("          UEFI HTTP boot loads iPXE from that URL; iPXE then asks DHCP again:")
        out += _ipxe_lines(core, machine, mac, arch, server)
    if machine.ignition is not None:
        emit("--- Ignition " + "-" * 52)
        out += (machine.ignition.decode(errors="replace").rstrip().split("\n") if show_secrets
                else [f"({len(machine.ignition)} bytes; --show-secrets prints it)"])
    if machine.booty is not None:
        emit("--- BOOTy " + "-" * 55)
        out += (core.booty(mac) or b"").decode().split("\n")
    if firmware is Firmware.HTTP_BOOT and machine.boot.kind in (BootKind.EFI, BootKind.IMAGE):
        status, body = core.httpboot([mac], server)
        if status == 200:
            emit("--- /httpboot JSON (for a DHCP server extension) " + "-" * 16)
            out += json.dumps(body, indent=1).split("\n")
    out += secure_boot_lines(core, machine)
    return out


def lifecycle_lines(core: BootCore, machine: Machine, mac: str) -> list[str]:
    life = machine.lifecycle
    state = core.state(machine, mac)
    record = core.states.view().get(mac)
    since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.since))} by {record.by}" if record else ""
    done = "{{ done_url }}" + (f" or {life.done_on}" if life.done_on else "")
    lines = [f"lifecycle once: {state}{since}; done when {done}; on failure {life.on_failure}; "
             f"local boot {life.local_boot}"]
    if state == "unknown":
        lines.append(f"          the state store cannot be read: {core.states.status().reason}")
    note = getattr(core.states, "note", "")
    if note:
        lines.append(f"          state {note}")
    return lines


def _ipxe_lines(core: BootCore, machine: Machine, mac: str, arch: Arch, server: str) -> list[str]:
    """What iPXE, once running on this machine, is answered and runs."""
    if machine.secure_boot:
        return ["iPXE      not used: Secure Boot firmware runs only signed binaries, and iPXE is not signed"]
    decision = core.decide(Client(mac, arch, Firmware.IPXE, None), server)
    if decision.offer is None:
        return [f"iPXE      no answer: {decision.reason}"]
    lines = [f"iPXE      DHCP answer: script {decision.offer.bootfile}"]
    try:
        plan = core.plan(machine, arch, Firmware.IPXE)
        if plan.refusal is not None:
            raise NoScript(plan.refusal)
        lines += core.loaders["ipxe"].explain(plan, core.rendering(plan, mac, None, server))
    except NoScript as exc:
        lines.append(f"script    none: {exc}")
    return lines
