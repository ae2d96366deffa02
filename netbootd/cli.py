"""Command line: argv → configuration → service, or a one-shot check/explain."""

from __future__ import annotations

import argparse
import os
import sys

import attrs

from netbootd import __version__
from netbootd.config.catalog import build_catalog
from netbootd.config.discover import ENV, SEARCHED, NoConfig, find_settings
from netbootd.config.errors import ConfigInvalid
from netbootd.config.machines import machine_count
from netbootd.config.machinesdir import load_machines
from netbootd.config.preflight import unit_credentials_absent
from netbootd.config.settings import Settings
from netbootd.core.explain import DEFAULT_FIRMWARE, FIRMWARE_ALIASES, FIRMWARES, add_firmware_option
from netbootd.model import normalize_mac


def _config_arg(command: str, args) -> str | int | None:
    """The configuration a command was given: its CONFIG argument (check, serve) or --config, once."""
    given = [c for c in (getattr(args, "dir", None), args.config) if c]
    if len(given) > 1:
        print(f"netbootd {command}: give the configuration once (a path or --config)", file=sys.stderr)
        return 2
    return given[0] if given else None


def _settings_or_exit(command: str, args, signing_key: bool = True) -> Settings | int:
    """Every subcommand's configuration, found one way (netbootd.config.discover), or its exit status
    (2) after one line saying what was missing or wrong."""
    config = _config_arg(command, args)
    if isinstance(config, int):
        return config
    try:
        return find_settings(config, signing_key=signing_key)
    except NoConfig as exc:
        print(f"netbootd {command}: {exc}", file=sys.stderr)
        return 2
    except ConfigInvalid as exc:
        print(f"netbootd {command}: the settings file has errors:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2


def cmd_check(args) -> int:
    config = _config_arg("check", args)
    if isinstance(config, int):
        return config
    try:
        settings = find_settings(config)
    except NoConfig as exc:
        print(f"netbootd check: {exc}", file=sys.stderr)
        return 2
    except ConfigInvalid as exc:  # what check is for: the errors on stdout, exit 1, as for machine files
        for err in exc.errors:
            print(err)
        print(f"{len(exc.errors)} error(s) in the settings file", file=sys.stderr)
        return 1
    for setting, path in unit_credentials_absent(settings):
        print(f"netbootd check: {setting} {path} not read: a systemd credential (LoadCredential=), there only while "
              f"{path.parent.name} runs", file=sys.stderr)
    if args.diff_running:
        from netbootd.reloadcheck import diff_running

        return diff_running(settings, args.url, args.user)
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
    for missing in _loader_problems(settings, result):
        print(f"warning: {missing['message']} (machines: {', '.join(missing['machines'])})", file=sys.stderr)
    default = "default" in result.machines
    count = machine_count(len(result.machines) - default, default)
    if result.errors or unresolved or refused:
        failed = f", {len(result.causes)} machine file(s) failed" if result.causes else ""
        unsigned = f", {refused} binary(ies) Secure Boot would refuse" if refused else ""
        print(f"{len(result.errors)} error(s), {unresolved} image(s) not bootable{unsigned}; {count} OK{failed}",
              file=sys.stderr)
        return 1
    print(f"OK: {count}")
    if not default:
        print(f"note: unknown machines get no answer (no default.toml in {settings.machines_dir}); {UNKNOWN_OPT_IN}",
              file=sys.stderr)
    return 0


def _check_secure_boot(settings: Settings, machines) -> int:
    """One line per binary a Secure Boot machine is offered; returns how many its firmware would refuse."""
    from netbootd.core.decide import BootCore
    from netbootd.core.explain import secure_boot_findings

    refused = 0
    for finding in secure_boot_findings(settings, BootCore(settings), machines):
        print(finding.line())
        refused += finding.refused
    return refused


def _loader_problems(settings: Settings, result) -> list[dict]:
    """What this host lacks for these machines' loaders (an iPXE binary, shim/GRUB, systemd's EFI
    stub): what /healthz would report once the daemon runs; not an error of the files."""
    from netbootd.core.decide import BootCore

    core = BootCore(settings, build_catalog(result))
    return [p for loader in core.loaders.values() for p in loader.problems(core.catalog)]


def cmd_explain(args) -> int:
    from netbootd.config.lastgood import LastGoodStore
    from netbootd.core.decide import BootCore
    from netbootd.core.explain import SAMPLE_SERVER, explain_lines

    try:
        mac = normalize_mac(args.mac)
    except ValueError as exc:
        print(f"netbootd explain: {exc}", file=sys.stderr)
        return 2
    settings = _settings_or_exit("explain", args, signing_key=False)
    if isinstance(settings, int):
        return settings
    if not settings.machines_dir.is_dir():
        print(f"netbootd explain: the machines directory {settings.machines_dir} does not exist "
              f"(set machines_dir in {settings.source or 'netbootd.toml'}, or pass --config)", file=sys.stderr)
        return 2
    result = load_machines(settings)
    # What a restarted daemon would serve: a broken file's last good version, if one was kept.
    catalog = build_catalog(result, None, LastGoodStore(settings.state_dir))
    from netbootd.manage import daemon_states

    core = BootCore(settings, catalog, states=daemon_states(settings, mac))
    for err in result.errors:
        print(f"warning: {err}")
    server = args.server or settings.advertise or SAMPLE_SERVER
    for line in explain_lines(core, mac, args.firmware, server, show_secrets=args.show_secrets):
        print(line)
    if core.find(mac) is None and catalog.default is None and not catalog.held_for(mac):
        print(f"unknown   {UNKNOWN_OPT_IN}")
    return 0


def cmd_serve(args) -> int:
    from twisted.internet import reactor

    from netbootd.logs import get_logger, logs_to_stderr, start_logging
    from netbootd.service import Netbootd, StartupError

    settings = _settings_or_exit("serve", args)
    if isinstance(settings, int):
        return settings
    if args.log_format:
        settings = attrs.evolve(settings, log=attrs.evolve(settings.log, format=args.log_format))
    start_logging(settings.log.format, settings.log.level)
    log = get_logger("netbootd")
    log.info("starting", version=__version__, config=str(settings.source or "(built-in defaults)"))

    def fatal(error: str) -> None:
        """Said once: the log's critical line (journald and JSON logs keep it), printed too only
        when the log does not go to stderr."""
        log.critical("cannot start", error=error)
        if not logs_to_stderr():
            print(f"netbootd: {error}", file=sys.stderr)
    try:
        daemon = Netbootd(settings, reactor)
    except StartupError as exc:
        fatal(str(exc))
        return 1
    daemon.log_format_override = args.log_format

    def failed(failure) -> None:
        error = failure.value if failure.check(StartupError) else failure.getTraceback()
        fatal(str(error))
        daemon.exit_code = 1
        reactor.stop()

    reactor.callWhenRunning(lambda: daemon.begin().addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", daemon.shutdown)
    reactor.run()
    return daemon.exit_code


def cmd_try(args) -> int:
    from netbootd.testing.tryboot import run

    try:
        mac = normalize_mac(args.mac)
    except ValueError as exc:
        print(f"netbootd try: {exc}", file=sys.stderr)
        return 2
    try:
        return run(mac, args.config, args.firmware, args.expect, args.timeout, args.keep, args.quiet, ipv6=args.ipv6,
                   disk=args.disk, memory=args.memory, reboots=args.reboots)
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
        url = _ui_url("status", args)
        if isinstance(url, int):
            return url
    from netbootd.manage import ManageError

    try:
        return status(url, args.mac, args.watch, args.user)
    except ManageError as exc:
        print(f"netbootd status: {exc}", file=sys.stderr)
        return 2


def _ui_url(command: str, args) -> str | int:
    """The management listener's URL: --url, else ui.listen from the configuration."""
    if args.url:
        return args.url.rstrip("/")
    settings = _settings_or_exit(command, args, signing_key=False)
    if isinstance(settings, int):
        return settings
    return ui_url(command, settings)


def ui_url(command: str, settings: Settings) -> str | int:
    """http://HOST:PORT of ui.listen, as a client on this host reaches it; 2 when it is off."""
    from netbootd.manage import ManageError, listener_url

    try:
        return listener_url(settings)
    except ManageError as exc:
        print(f"netbootd {command}: {exc}", file=sys.stderr)
        return 2


def _macs(command: str, texts: list[str]) -> list[str] | int:
    try:
        return [normalize_mac(t) for t in texts]
    except ValueError as exc:
        print(f"netbootd {command}: {exc}", file=sys.stderr)
        return 2


def _manage(command: str, args, call) -> int:
    """A management-API command: the listener's URL and the MACs from args, then `call(url, macs)`;
    what the daemon refuses, or cannot be asked, ends in one line on stderr."""
    from netbootd.manage import ManageError

    url, macs = _ui_url(command, args), _macs(command, args.mac)
    if isinstance(url, int):
        return url
    if isinstance(macs, int):
        return macs
    try:
        return call(url, macs)
    except ManageError as exc:
        print(f"netbootd {command}: {exc}", file=sys.stderr)
        return 1


def cmd_state(args) -> int:
    from netbootd.manage import state

    return _manage("state", args, lambda url, macs: state(url, macs, args.user))


def cmd_reprovision(args) -> int:
    from netbootd.manage import act

    chosen = [bool(args.mac), args.profile is not None, args.state is not None]
    if sum(chosen) != 1:
        print("netbootd reprovision: name the machines one way: MAC..., --profile P or --state S", file=sys.stderr)
        return 2

    def call(url: str, macs: list[str]) -> int:
        selection = {"macs": macs} if macs else ({"profile": args.profile} if args.profile is not None
                                                 else {"state": args.state})
        return act(url, args.action, selection, args.user)

    return _manage("reprovision", args, call)


CONFIG_HELP = (f"netbootd.toml, or its directory (default: ${ENV}, else the first of "
               + ", ".join(str(p) for p in SEARCHED) + ")")
UNKNOWN_OPT_IN = ("to answer them, create machines/default.toml (the example ships default.toml.example) and set "
                  "dhcp.interfaces to the boot network's interface(s)")
FIRMWARE_HELP = (f"the firmware asking, by the names `netbootd try` boots: bios (BIOS PXE), uefi (UEFI PXE), uefi-http "
                 f"(UEFI HTTP boot), arm64-uefi, arm64-http, and their -secure and IPv6 kinds, each asking as its plain "
                 f"kind does; default {DEFAULT_FIRMWARE} (UEFI PXE on x86_64: what current servers boot with). Also "
                 f"efi32 (32-bit UEFI PXE), and the former names "
                 + ", ".join(f"{old} ({new})" for old, new in FIRMWARE_ALIASES.items())
                 + "; --arch, the option's former name, still works")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd", description="Network-boot server: proxy DHCP, TFTP, HTTP.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="serve, check, explain, try, status, state or reprovision; "
                                "`netbootd COMMAND --help` for its options")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("dir", nargs="?", metavar="CONFIG", help="the same as --config")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument("--log-format", choices=["text", "json"], help="override log.format")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a configuration; non-zero exit on errors (for CI)")
    check.add_argument("dir", nargs="?", metavar="CONFIG",
                       help="the same as --config: netbootd.toml, its directory, a directory with machines/, "
                            "or the machines directory")
    check.add_argument("--config", help=CONFIG_HELP)
    check.add_argument("--resolve", action="store_true",
                       help="also resolve every boot.image in its registry and show the layers it boots")
    check.add_argument("--diff-running", action="store_true",
                       help="compare the settings file with the running daemon's (read from ui.listen): what "
                            "`systemctl reload` (SIGHUP) would apply, and what needs a restart; exit 1 when they differ")
    check.add_argument("--url", help="with --diff-running: the management listener (default: ui.listen)")
    check.add_argument("--user", help="with --diff-running: a ui.auth_file user (as for `netbootd state`)")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show what a machine would be offered and the script it gets")
    explain.add_argument("mac", help="the machine's MAC address (any of 52:54:00:12:34:56, 52-54-00-12-34-56)")
    add_firmware_option(explain, accepted=FIRMWARES, help=FIRMWARE_HELP)
    explain.add_argument("--arch", dest="firmware", type=lambda name: FIRMWARE_ALIASES.get(name, name),
                         choices=sorted(FIRMWARES), help=argparse.SUPPRESS)  # deprecated: --firmware's former name
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
    st.add_argument("--url", help="the management listener (default: ui.listen from the configuration)")
    st.add_argument("--config", help=CONFIG_HELP)
    st.add_argument("--user", help="a ui.auth_file user (password from NETBOOTD_PASSWORD, or asked); "
                                   "NETBOOTD_TOKEN: a bearer token")
    st.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2)")
    st.set_defaults(func=cmd_status)

    user_help = "a ui.auth_file user (password from NETBOOTD_PASSWORD, or asked); NETBOOTD_TOKEN: a bearer token"
    sp = sub.add_parser("state", help="the lifecycle state of machines that provision once ([lifecycle] once = true)")
    sp.add_argument("mac", nargs="*", help="only these machines")
    sp.add_argument("--url", help="the management listener (default: ui.listen from the configuration)")
    sp.add_argument("--config", help=CONFIG_HELP)
    sp.add_argument("--user", help=user_help)
    sp.set_defaults(func=cmd_state)

    rp = sub.add_parser("reprovision", help="install machines again on their next power-on (or mark them done or "
                                            "failed with --action)")
    rp.add_argument("mac", nargs="*", help="the machines (any MAC form)")
    rp.add_argument("--profile", help="every machine built on this profile")
    rp.add_argument("--state", choices=["provisioning", "provisioned", "failed"],
                    help="every machine in this state (e.g. failed)")
    rp.add_argument("--action", choices=["reprovision", "done", "failed"], default="reprovision",
                    help="what to do: reprovision (default), or mark done / failed by hand")
    rp.add_argument("--url", help="the management listener (default: ui.listen from the configuration)")
    rp.add_argument("--config", help=CONFIG_HELP)
    rp.add_argument("--user", help=user_help)
    rp.set_defaults(func=cmd_reprovision)
    return p


# The exit status of a command whose reader went away (`netbootd status | head -1`), as a shell
# reports a program SIGPIPE ended: 128 + SIGPIPE
CLOSED_PIPE = 128 + 13


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # what is still buffered fails here, not at exit (where Python prints a traceback)
        return code
    except BrokenPipeError:
        # The reader closed the pipe: nothing more to say to it. Point stdout at /dev/null so that
        # Python's own flush at exit has nowhere to fail (Python's documentation, "Note on SIGPIPE").
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing buffered to lose
            pass
        return CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
