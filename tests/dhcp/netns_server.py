"""Run netbootd's DHCP edge (with the real boot core) in the current network namespace.

Used by test_netns.py as `ip netns exec NS python netns_server.py --machines DIR ...`: the test
process stays in the root namespace. Prints READY once both ports listen; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twisted.internet import reactor

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import DhcpSettings, HttpSettings, Settings
from netbootd.core.decide import BootCore
from netbootd.dhcp import listen_dhcp
from netbootd.logs import start_logging


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=Path, required=True)
    parser.add_argument("--port", type=int, default=67)
    parser.add_argument("--proxy-port", type=int, default=4011)
    parser.add_argument("--interfaces", default="")
    parser.add_argument("--advertise", default="")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    start_logging("text", args.log_level, sys.stderr)
    settings = Settings(
        advertise=args.advertise,
        machines_dir=args.machines,
        files_root=args.machines.parent,
        http=HttpSettings(port=args.http_port),
        dhcp=DhcpSettings(
            port=args.port,
            proxy_port=args.proxy_port,
            interfaces=tuple(i for i in args.interfaces.split(",") if i),
        ),
    )
    result = load_machines(settings)
    if result.errors:
        sys.exit("\n".join(map(str, result.errors)))
    core = BootCore(settings, build_catalog(result))
    listen_dhcp(reactor, settings, core)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    print("READY", flush=True)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
