"""Command line: argv → configuration → service, or a one-shot check/explain."""

from __future__ import annotations

import argparse
import sys

import attrs

from netbootd import __version__
from netbootd.config.catalog import build_catalog
from netbootd.config.discover import NoConfig, find_settings
from netbootd.config.errors import ConfigInvalid
from netbootd.config.machines import machine_count
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import Settings
from netbootd.config.settingsfile import DEFAULT_CONFIG
from netbootd.model import Arch, Client, Firmware, normalize_mac

EXPLAIN_ARCHS = {
    # --arch → the firmware that first asks, and the arch it reports
    "bios": (Firmware.BIOS_PXE, Arch.BIOS),
    "efi32": (Firmware.EFI_PXE, Arch.EFI32),
    "efi64": (Firmware.EFI_PXE, Arch.EFI64),
    "arm64": (Firmware.EFI_PXE, Arch.ARM64),
    "http": (Firmware.HTTP_BOOT, Arch.EFI64),
    "http-arm64": (Firmware.HTTP_BOOT, Arch.ARM64),
}
SAMPLE_SERVER = "192.0.2.1"


def _settings_or_exit(command: str, config: str | None, required: bool, signing_key: bool = True) -> Settings | int:
    try:
        return find_settings(config, required=required, signing_key=signing_key)
    except NoConfig as exc:
        print(f"netbootd {command}: {exc}", file=sys.stderr)
        return 2
    except ConfigInvalid as exc:
        print(f"netbootd {command}: the settings file has errors:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2


def cmd_check(args) -> int:
    if args.dir and args.config:
        print("netbootd check: give the configuration once (a path or --config)", file=sys.stderr)
        return 2
    try:
        settings = find_settings(args.dir or args.config, required=True)
    except NoConfig as exc:
        print(f"netbootd check: {exc}", file=sys.stderr)
        return 2
    except ConfigInvalid as exc:  # what check is for: the errors on stdout, exit 1, as for machine files
        for err in exc.errors:
            print(err)
        print(f"{len(exc.errors)} error(s) in the settings file", file=sys.stderr)
        return 1
    result = load_machines(settings)
    for err in result.errors:
        print(err)
    unresolved = 0
    if args.resolve:
        from netbootd.images.registry import RegistryClient
        from netbootd.images.resolve import image_machines, resolve_machines

        client = RegistryClient(settings.registry)
        try:
            for res in resolve_machines(client, image_machines(result.machines.values()),
                                        settings.registry.architecture):
                if res.required or res.ok:  # other architectures only when the image has them
                    print(res.line())
                unresolved += res.required and not res.ok
        finally:
            client.close()
    refused = _check_secure_boot(settings, result.machines.values())
    default = "default" in result.machines
    count = machine_count(len(result.machines) - default, default)
    if result.errors or unresolved or refused:
        failed = f", {len(result.causes)} machine file(s) failed" if result.causes else ""
        unsigned = f", {refused} binary(ies) Secure Boot would refuse" if refused else ""
        print(f"{len(result.errors)} error(s), {unresolved} image(s) not bootable{unsigned}; {count} OK{failed}",
              file=sys.stderr)
        return 1
    print(f"OK: {count}")
    return 0


def _check_secure_boot(settings: Settings, machines) -> int:
    """One line per binary a Secure Boot machine is offered; returns how many its firmware would refuse."""
    from netbootd.core.secureboot import findings

    refused = 0
    for finding in findings(settings, machines):
        print(finding.line())
        refused += finding.refused
    return refused


def _explain_secure_boot(settings: Settings, machine) -> None:
    """The signatures section of `explain`, for a Secure Boot machine."""
    for line in explain_secure_boot_lines(settings, machine):
        print(line)


def explain_secure_boot_lines(settings: Settings, machine) -> list[str]:
    from netbootd.core.secureboot import findings

    found = findings(settings, [machine])
    if not found:
        return []
    return ["--- Secure Boot signatures " + "-" * 38, *(finding.line(with_machine=False) for finding in found)]


def cmd_explain(args) -> int:
    from netbootd.config.lastgood import LastGoodStore
    from netbootd.core import BootCore

    try:
        mac = normalize_mac(args.mac)
    except ValueError as exc:
        print(f"netbootd explain: {exc}", file=sys.stderr)
        return 2
    settings = _settings_or_exit("explain", args.config, required=True, signing_key=False)
    if isinstance(settings, int):
        return settings
    if not settings.machines_dir.is_dir():
        print(f"netbootd explain: the machines directory {settings.machines_dir} does not exist "
              f"(set machines_dir in {settings.source or 'netbootd.toml'}, or pass --config)", file=sys.stderr)
        return 2
    result = load_machines(settings)
    # What a restarted daemon would serve: a broken file's last good version, if one was kept.
    catalog = build_catalog(result, None, LastGoodStore(settings.state_dir))
    core = BootCore(settings, catalog)
    for err in result.errors:
        print(f"warning: {err}")
    server = args.server or settings.advertise or SAMPLE_SERVER
    for line in explain_lines(core, mac, args.arch, server, show_secrets=args.show_secrets):
        print(line)
    return 0


def explain_lines(core, mac: str, arch_key: str, server: str, *, show_secrets: bool = False) -> list[str]:
    """What `netbootd explain` prints for one machine and firmware (`arch_key`: a key of
    EXPLAIN_ARCHS), as lines: also what the dashboard's machine page shows. `core` is a BootCore
    on the catalog to explain; Ignition contents only with `show_secrets`."""
    from netbootd.config.machines import BootKind
    from netbootd.core import NoScript

    out: list[str] = []
    emit = out.append
    settings, catalog = core.settings, core.catalog
    firmware, arch = EXPLAIN_ARCHS[arch_key]
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
             f"kept in {settings.state_dir}")
    emit(f"boot      {machine.boot.kind.value}")
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
    ipxe_decision = core.decide(Client(mac, arch, Firmware.IPXE, None), server)
    direct_efi = (
        firmware is Firmware.HTTP_BOOT
        and decision.offer is not None
        and decision.offer.bootfile == core.efi_url(machine, core.base_url(server))
    )
    grub_chain = (decision.offer is not None and machine.loader == "grub" and firmware is Firmware.EFI_PXE)
    if firmware is Firmware.HTTP_BOOT and decision.offer is not None and not direct_efi:
        emit("          UEFI HTTP boot loads iPXE from that URL; iPXE then asks DHCP again:")
    if grub_chain:
        out += explain_grub_lines(core, machine, mac, arch, server)
    elif direct_efi:
        emit("          UEFI HTTP boot runs that EFI binary / UKI itself: no iPXE, no script")
    elif machine.secure_boot:
        emit("iPXE      not used: Secure Boot firmware runs only signed binaries, and iPXE is not signed")
    elif ipxe_decision.offer is None:
        emit(f"iPXE      no answer: {ipxe_decision.reason}")
    else:
        emit(f"iPXE      DHCP answer: script {ipxe_decision.offer.bootfile}")
        try:
            script = core.script(mac, None, arch, server)
        except NoScript as exc:
            emit(f"script    none: {exc}")
        else:
            emit("--- iPXE script " + "-" * 48)
            out += script.rstrip().split("\n")
    if machine.ignition is not None:
        emit("--- Ignition " + "-" * 52)
        out += (machine.ignition.decode(errors="replace").rstrip().split("\n") if show_secrets
                else [f"({len(machine.ignition)} bytes; --show-secrets prints it)"])
    if machine.booty is not None:
        emit("--- BOOTy " + "-" * 55)
        out += core.booty(mac).decode().split("\n")
    if firmware is Firmware.HTTP_BOOT and machine.boot.kind in (BootKind.EFI, BootKind.IMAGE):
        status, body = core.httpboot([mac], server)
        if status == 200:
            import json

            emit("--- /httpboot JSON (for a DHCP server extension) " + "-" * 16)
            out += json.dumps(body, indent=1).split("\n")
    out += explain_secure_boot_lines(settings, machine)
    return out


def explain_grub_lines(core, machine, mac: str, arch: Arch, server: str) -> list[str]:
    """The shim → GRUB → grub.cfg chain a loader = "grub" machine gets over TFTP."""
    from netbootd.core import grub

    steps = [grub.shim_name(arch.value), grub.grub_name(arch.value)] if machine.secure_boot else [grub.grub_name(arch.value)]
    return [
        "GRUB      " + " → ".join([*steps, grub.GENERIC_CFG, grub.machine_cfg_name(mac)]) + " (all over TFTP)",
        "          Debian's signed GRUB asks the TFTP server in the site DHCP server's answer (next-server), "
        "not the proxy's: run netbootd on the DHCP server's host, or point next-server at it (README: Secure Boot)",
        f"--- /{grub.machine_cfg_name(mac)} " + "-" * 30,
        *core.grub_files.config(machine, mac, server).rstrip().split("\n"),
    ]


def cmd_serve(args) -> int:
    from twisted.internet import reactor

    from netbootd.logs import get_logger, start_logging
    from netbootd.service import Netbootd, StartupError

    settings = _settings_or_exit("serve", args.config, required=False)
    if isinstance(settings, int):
        return settings
    if args.log_format:
        settings = attrs.evolve(settings, log=attrs.evolve(settings.log, format=args.log_format))
    start_logging(settings.log.format, settings.log.level)
    log = get_logger("netbootd")
    log.info("starting", version=__version__, config=str(settings.source or "(built-in defaults)"))
    try:
        daemon = Netbootd(settings, reactor)
        daemon.start()
    except StartupError as exc:
        log.critical("{error}", error=str(exc))
        print(f"netbootd: {exc}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", daemon.shutdown)
    reactor.run()
    return 0


def cmd_try(args) -> int:
    from netbootd.testing.tryboot import run

    try:
        mac = normalize_mac(args.mac)
    except ValueError as exc:
        print(f"netbootd try: {exc}", file=sys.stderr)
        return 2
    try:
        return run(mac, args.config, args.firmware, args.expect, args.timeout, args.keep, args.quiet, ipv6=args.ipv6)
    except NoConfig as exc:
        print(f"netbootd try: {exc}", file=sys.stderr)
        return 2
    except ConfigInvalid as exc:
        print("netbootd try: the settings file has errors:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2


def cmd_status(args) -> int:
    from netbootd.status import status

    url = args.url
    if not url:
        settings = _settings_or_exit("status", args.config, required=False, signing_key=False)
        if isinstance(settings, int):
            return settings
        host = settings.http.listen if settings.http.listen not in ("", "0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{host}:{settings.http.port}"
    return status(url, args.mac, args.watch)


CONFIG_HELP = f"netbootd.toml, or its directory (default: {DEFAULT_CONFIG})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd", description="Network-boot server: proxy DHCP, TFTP, HTTP.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="serve, check, explain, try or status; `netbootd COMMAND --help` for its options")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help=CONFIG_HELP + "; without one, built-in defaults")
    serve.add_argument("--log-format", choices=["text", "json"], help="override log.format")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a configuration; non-zero exit on errors (for CI)")
    check.add_argument("dir", nargs="?", metavar="CONFIG",
                       help="the same as --config: netbootd.toml, its directory, a directory with machines/, "
                            "or the machines directory")
    check.add_argument("--config", help=CONFIG_HELP)
    check.add_argument("--resolve", action="store_true",
                       help="also resolve every boot.image in its registry and show the layers it boots")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show what a machine would be offered and the script it gets")
    explain.add_argument("mac", help="the machine's MAC address (any of 52:54:00:12:34:56, 52-54-00-12-34-56)")
    explain.add_argument("--arch", choices=sorted(EXPLAIN_ARCHS), default="efi64",
                         help="the firmware asking: bios (BIOS PXE), efi32/efi64/arm64 (UEFI PXE), "
                              "http/http-arm64 (UEFI HTTP boot); default efi64")
    explain.add_argument("--config", help=CONFIG_HELP)
    explain.add_argument("--server", help="address to put in URLs (default: advertise, else 192.0.2.1)")
    explain.add_argument("--show-secrets", action="store_true", help="print Ignition contents")
    explain.set_defaults(func=cmd_explain)

    tryp = sub.add_parser("try", help="boot a throwaway QEMU machine with that MAC against the configuration "
                                      "(in a private network namespace; needs root)")
    from netbootd.testing.tryboot import add_arguments

    add_arguments(tryp)
    tryp.set_defaults(func=cmd_try)

    st = sub.add_parser("status", help="problems and the boot timeline of a running netbootd (all machines, or one)")
    st.add_argument("mac", nargs="?", help="one machine's timeline instead of the summary")
    st.add_argument("--url", help="netbootd's HTTP address (default: from the configuration)")
    st.add_argument("--config", help=CONFIG_HELP)
    st.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2)")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
