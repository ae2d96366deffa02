"""Command line: argv → configuration → service, or a one-shot check/explain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrs

from netbootd import __version__
from netbootd.config.errors import ConfigInvalid
from netbootd.config.load import build_catalog, load_machines, load_settings
from netbootd.config.settings import Settings
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


def _settings_for_dir(directory: Path) -> Settings:
    """`netbootd check DIR`: DIR is a config directory (with netbootd.toml), or one with a
    machines/ subdirectory, or the machines directory itself."""
    if (directory / "netbootd.toml").is_file():
        return load_settings(directory / "netbootd.toml")
    if (directory / "machines").is_dir():
        return Settings(machines_dir=directory / "machines", files_root=directory / "files")
    return Settings(machines_dir=directory, files_root=directory.parent / "files")


def cmd_check(args) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        print(f"netbootd check: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        settings = _settings_for_dir(directory)
    except ConfigInvalid as exc:
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
            for res in resolve_machines(client, image_machines(result.machines.values())):
                print(res.line())
                unresolved += not res.ok
        finally:
            client.close()
    if result.errors or unresolved:
        print(f"{len(result.errors)} error(s), {unresolved} image(s) not bootable; "
              f"{len(result.machines)} machine file(s) OK", file=sys.stderr)
        return 1
    default = " + default.toml" if "default" in result.machines else " (no default.toml: unknown machines get no answer)"
    print(f"OK: {len(result.machines) - ('default' in result.machines)} machine file(s){default}")
    return 0


def cmd_explain(args) -> int:
    from netbootd.config.machines import BootKind
    from netbootd.core import BootCore, NoScript

    try:
        settings = load_settings(Path(args.config) if args.config else None, signing_key=False)
        mac = normalize_mac(args.mac)
    except ConfigInvalid as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"netbootd explain: {exc}", file=sys.stderr)
        return 2
    result = load_machines(settings)
    core = BootCore(settings, build_catalog(result))
    for err in result.errors:
        print(f"warning: {err}")
    server = args.server or settings.advertise or SAMPLE_SERVER
    firmware, arch = EXPLAIN_ARCHS[args.arch]
    machine = core.find(mac, None)
    print(f"machine   {mac}")
    if machine is None:
        print("config    none: no machine file and no default.toml → netbootd does not answer")
        return 0
    profile = f" (profile {machine.profile})" if machine.profile else ""
    print(f"config    {machine.source}{profile}")
    print(f"boot      {machine.boot.kind.value}")
    if machine.vars:
        print("vars      " + ", ".join(f"{k}={v}" for k, v in machine.vars.items()))
    print(f"firmware  {firmware.value}, arch {arch.value}; server {server}"
          + (" (pass --server to see real URLs)" if server == SAMPLE_SERVER else ""))
    decision = core.decide(Client(mac, arch, firmware, None), server)
    if decision.offer is None:
        print(f"DHCP      no answer: {decision.reason}")
    else:
        where = "4011 ACK" if firmware is Firmware.EFI_PXE else "67 OFFER"
        print(f"DHCP      {where}: {decision.offer.kind.value} {decision.offer.bootfile}")
    ipxe_decision = core.decide(Client(mac, arch, Firmware.IPXE, None), server)
    direct_efi = firmware is Firmware.HTTP_BOOT and machine.boot.kind is BootKind.EFI
    if ipxe_decision.offer is None:
        print(f"iPXE      no answer: {ipxe_decision.reason}")
    elif not direct_efi:
        print(f"iPXE      DHCP answer: script {ipxe_decision.offer.bootfile}")
        try:
            script = core.script(mac, None, arch, server)
        except NoScript as exc:
            print(f"script    none: {exc}")
        else:
            print("--- iPXE script " + "-" * 48)
            print(script.rstrip())
    if machine.ignition is not None:
        print("--- Ignition " + "-" * 52)
        print(machine.ignition.decode(errors="replace").rstrip() if args.show_secrets
              else f"({len(machine.ignition)} bytes; --show-secrets prints it)")
    if machine.booty is not None:
        print("--- BOOTy " + "-" * 55)
        print(core.booty(mac).decode())  # type: ignore[union-attr]
    if firmware is Firmware.HTTP_BOOT:
        status, body = core.httpboot([mac], server)
        import json

        print(f"--- /httpboot JSON (HTTP {status}) " + "-" * 31)
        print(json.dumps(body, indent=1))
    return 0


def cmd_serve(args) -> int:
    from twisted.internet import reactor

    from netbootd.logs import get_logger, start_logging
    from netbootd.service import Netbootd, StartupError

    try:
        settings = load_settings(Path(args.config) if args.config else None)
    except ConfigInvalid as exc:
        print("netbootd: the settings file has errors:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2
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


def cmd_status(args) -> int:
    from netbootd.status import status

    url = args.url
    if not url:
        try:
            settings = load_settings(Path(args.config) if args.config else None, signing_key=False)
        except ConfigInvalid as exc:
            print(exc, file=sys.stderr)
            return 2
        host = settings.http.listen if settings.http.listen not in ("", "0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{host}:{settings.http.port}"
    return status(url, args.mac, args.watch)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd", description="Network-boot server: proxy DHCP, TFTP, HTTP.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="netbootd.toml (default: /etc/netbootd/netbootd.toml, else built-in defaults)")
    serve.add_argument("--log-format", choices=["text", "json"], help="override log.format")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a configuration directory; non-zero exit on errors")
    check.add_argument("dir", help="directory with netbootd.toml, or with machines/, or the machines directory")
    check.add_argument("--resolve", action="store_true",
                       help="also resolve every boot.image in its registry and show the layers it boots")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show what a machine would be offered and the script it gets")
    explain.add_argument("mac")
    explain.add_argument("--arch", choices=sorted(EXPLAIN_ARCHS), default="efi64")
    explain.add_argument("--config", help="netbootd.toml")
    explain.add_argument("--server", help="address to put in URLs (default: advertise)")
    explain.add_argument("--show-secrets", action="store_true", help="print Ignition contents")
    explain.set_defaults(func=cmd_explain)

    st = sub.add_parser("status", help="the boot timeline of a running netbootd (all machines, or one)")
    st.add_argument("mac", nargs="?")
    st.add_argument("--url", help="netbootd's HTTP address (default: from --config)")
    st.add_argument("--config", help="netbootd.toml")
    st.add_argument("--watch", nargs="?", type=float, const=2.0, help="refresh every N seconds (default 2)")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
