"""Boot-storm benchmark of the proxy-DHCP edge: netbootd against dnsmasq in proxy mode.

    sudo python bench/dhcp.py [-v] [--seconds 5] [--steps 7] [--step-seconds 2] [--profile]
    sudo python -P bench/dhcp.py --netbootd-pythonpath /tmp/old-checkout   # this netbootd and that one, one run

Creates two network namespaces joined by a veth pair (server 10.79.0.2, client 10.79.0.100),
then for each server in turn (dnsmasq with `dhcp-range=10.79.0.0,proxy` + a `pxe-service`, then
netbootd's DHCP edge with the real boot core and a default machine):

1. sustained rate: the highest offered rate of DISCOVERs (a distinct MAC each) answered with
   <= 1% loss and p99 < 100 ms, found by doubling then bisecting over `--steps` runs of
   `--step-seconds`;
2. paced: `--seconds` at the rate dnsmasq sustained; p50/p99 latency (DISCOVER sent -> OFFER
   received, CLOCK_MONOTONIC in the one client process) and loss, for both servers.

The client is a BIOS PXE ROM's DISCOVER (arch 0, no user class), which both servers answer; it
sends in bursts every millisecond and sleeps in between, so it leaves the CPU to the servers.
Both servers log to a file at their default verbosity: dnsmasq one line per answer, netbootd one
"answered" line per answer up to 200 a second (its own limit, dhcp/answer.py; set
NETBOOTD_BENCH_LOG_LEVEL=warn to see netbootd without them). netbootd runs with
dhcp.unknown_rate 0 (no flood guard) but in the --flood runs. Each server's CPU time (utime +
stime) per answer is printed, over all its runs and over the paced run alone. CPU per answer
depends on how many datagrams each wakeup finds (on a 2-core host netbootd spent 2-3 times as
much at 1000/s as at 10000/s, and a server that falls behind reads big batches and spends less
per answer), so the paced figure is like-for-like only where every server kept up with the paced
rate (a p50 of a millisecond or so); the all-runs figure also depends on the rates its own search
tried.
Everything it starts is stopped by PID and the namespaces are deleted on exit. Needs root,
iproute2 and dnsmasq. `--profile` runs netbootd under cProfile.

--netbootd-pythonpath PATH (repeatable): also measure the netbootd package found in PATH (another
checkout: before/after a change) in the same run, after this checkout's (--others-first: before
it), with the same settings and the same paced rate. Each netbootd runs as `python -P
bench/dhcp.py serve` with PYTHONPATH=its checkout, writes the netbootd.__file__ it imported into
its log, and is refused unless that is under its checkout. The table adds this checkout's CPU per
answer over each other's (new/old). --paced-rate R: every server's paced run at R (pick one that
all keep up with on a busy host); with --steps 0, no rate search. On a shared host run it several
times, alternating the order: run-to-run noise in CPU per answer can exceed 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# netbootd is imported inside functions only: the orchestrator puts this checkout first on sys.path
# (main), a `serve` child imports the netbootd its PYTHONPATH names (run with -P: no script directory).
SERVER_IP = "10.79.0.2"
CLIENT_IP = "10.79.0.100"
NET = "10.79.0.0"
MAX_P99_MS = 100.0
KNOWN_MAC = "02:aa:00:00:00:01"  # the configured machine of the flood run


# ------------------------------------------------------------------------------ the client


def discover_template() -> bytearray:
    """A BIOS PXE ROM DISCOVER (options as in ../shared/captures, minus iPXE's user class)."""
    head = bytes([1, 1, 6, 0]) + bytes(4) + b"\x00\x00\x80\x00" + bytes(16)
    head += bytes.fromhex("020000000000") + bytes(10) + bytes(64 + 128)
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    opts = b"\x35\x01\x01" + b"\x39\x02\x05\xc0" + b"\x5d\x02\x00\x00" + b"\x5e\x03\x01\x02\x01"
    opts += bytes([60, len(vendor)]) + vendor
    opts += b"\x37\x08\x01\x03\x06\x2b\x3c\x42\x43\x61" + b"\x61\x11\x00" + bytes(range(16)) + b"\xff"
    return bytearray(head + b"\x63\x82\x53\x63" + opts)


def run_load(iface: str, count: int, rate: float, drain: float = 3.0, tick: float = 0.001, mac: str = "") -> dict:
    """Send `count` DISCOVERs at `rate`/s (in bursts every `tick` s, sleeping in between so the
    client does not take the CPU the server needs); return counts and per-answer latencies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("", 68))
    sock.setblocking(False)
    packet = discover_template()
    dest = ("255.255.255.255", 67)
    sent = [0] * count
    answered: dict[int, int] = {}
    base = int.from_bytes(os.urandom(2), "big") << 16
    now_ns = time.monotonic_ns
    recv = sock.recv

    def pump(timeout: float) -> None:
        if timeout > 0:
            select.select([sock], [], [], timeout)
        while True:
            try:
                data = recv(2048)
            except BlockingIOError:
                return
            t = now_ns()
            if len(data) > 240 and data[0] == 2:
                i = int.from_bytes(data[4:8], "big") - base
                if 0 <= i < count and i not in answered:
                    answered[i] = t

    start = now_ns()
    i = 0
    while i < count:
        due = min(count, int((now_ns() - start) / 1e9 * rate) + 1)
        while i < due:
            packet[4:8] = (base + i).to_bytes(4, "big")
            if mac:
                packet[28:34] = bytes.fromhex(mac.replace(":", ""))  # one machine asking again and again
            else:
                packet[30:34] = i.to_bytes(4, "big")  # chaddr 02:00:<i>: a distinct MAC per DISCOVER
            try:
                sock.sendto(packet, dest)
            except BlockingIOError:
                pump(0.0005)
                continue
            sent[i] = now_ns()
            i += 1
        pump(0)
        next_tick = start + int((i / rate) * 1e9) if i < count else 0
        while i < count and now_ns() < next_tick:
            pump(max(0.0, min(tick, (next_tick - now_ns()) / 1e9)))
    end_send = now_ns()
    deadline = time.monotonic() + drain
    while len(answered) < count and time.monotonic() < deadline:
        pump(0.05)
    latencies = sorted((answered[i] - sent[i]) / 1e6 for i in answered)
    return {
        "rate": rate,
        "sent": count,
        "answered": len(answered),
        "seconds": (end_send - start) / 1e9,
        "latencies_ms": latencies,
    }


# ------------------------------------------------------------------------------ the netbootd server


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (both servers are measured the same way)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(machines: Path, log_file: Path, profile: Path | None, unknown_rate: float = 0.0) -> None:
    from twisted.internet import reactor

    import netbootd

    try:
        from netbootd.config.catalog import build_catalog
        from netbootd.config.machinesdir import load_machines
    except ImportError:  # a checkout from before config/load.py was split (i22-config)
        from netbootd.config.load import build_catalog, load_machines  # type: ignore[no-redef]
    from netbootd.config.settings import DhcpSettings, HttpSettings, Settings
    from netbootd.core.decide import BootCore
    from netbootd.dhcp import listen_dhcp
    from netbootd.logs import start_logging

    stream = log_file.open("a")
    stream.write(f"bench: netbootd imported from {netbootd.__file__}\n")
    stream.flush()
    start_logging("text", os.environ.get("NETBOOTD_BENCH_LOG_LEVEL", "info"), stream)
    # unknown_rate 0 by default: the rate runs measure answers to new MACs, not the flood guard
    settings = Settings(machines_dir=machines, files_root=machines.parent, http=HttpSettings(port=8080),
                        dhcp=DhcpSettings(unknown_rate=unknown_rate))
    result = load_machines(settings)
    if result.errors:
        sys.exit("\n".join(map(str, result.errors)))
    listen_dhcp(reactor, settings, BootCore(settings, build_catalog(result)))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    print("READY", netbootd.__file__, flush=True)
    if profile is None:
        reactor.run(installSignalHandlers=False)
        return
    import cProfile

    prof = cProfile.Profile()
    prof.runcall(reactor.run, installSignalHandlers=False)
    prof.dump_stats(str(profile))


# ------------------------------------------------------------------------------ orchestration


class Bench:
    srv_if, cli_if = "nbbs0", "nbbc0"

    def __init__(self, args: argparse.Namespace) -> None:
        from netbootd.testing.netns import Topology

        self.args = args
        self.net = Topology("nbb")
        self.tmp = Path(tempfile.mkdtemp(prefix="netbootd-bench-"))
        self.procs: list[subprocess.Popen] = []
        # Both servers (never the client) at the same raised CPU weight, so that on a busy host
        # the comparison measures the servers rather than who the scheduler favours.
        self.nice = ["nice", "-n", str(args.nice)] if args.nice else []

    def up(self) -> None:
        self.srv, self.cli = self.net.namespace("s"), self.net.namespace("c")
        self.net.veth(self.srv, self.srv_if, self.cli, self.cli_if)
        self.srv.address(self.srv_if, f"{SERVER_IP}/24")
        self.cli.address(self.cli_if, f"{CLIENT_IP}/24")
        machines = self.tmp / "machines"
        (machines / "profiles").mkdir(parents=True)
        (machines / "default.toml").write_text('[boot]\nchain = "http://boot.example/menu.ipxe"\n')
        (machines / f"{KNOWN_MAC.replace(':', '-')}.toml").write_text('[boot]\nchain = "http://boot.example/x.ipxe"\n')

    def down(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.net.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # by PID: only what we started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start_netbootd(self, unknown_rate: float = 0.0, checkout: Path = REPO, tag: str = "") -> subprocess.Popen:
        """netbootd's DHCP edge from the package in `checkout` (PYTHONPATH, and -P so that nothing
        else comes first); refused unless the child says it imported that one."""
        argv = [
            *self.nice, *self.srv.argv(sys.executable, "-P", __file__, "serve"),
            "--machines", str(self.tmp / "machines"), "--log", str(self.tmp / f"netbootd{tag}.log"),
            "--unknown-rate", str(unknown_rate),
        ]  # fmt: skip
        if self.args.profile:
            argv += ["--profile", str(self.tmp / f"netbootd{tag}.prof")]
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop(proc)
            raise SystemExit(f"netbootd did not start: {proc.stderr.read()}")
        imported = Path(line.split(None, 1)[1].strip()).resolve()
        if not imported.is_relative_to(checkout.resolve()):
            self.stop(proc)
            raise SystemExit(f"netbootd imported {imported}, not the one in {checkout}")
        return proc

    def start_dnsmasq(self) -> subprocess.Popen:
        log = self.tmp / "dnsmasq.log"
        argv = [
            *self.nice, *self.srv.argv(shutil.which("dnsmasq") or "dnsmasq"),
            "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
            f"--interface={self.srv_if}", f"--dhcp-range={NET},proxy",
            '--pxe-service=x86PC,"netboot",undionly', "--pxe-prompt=netboot,0",
            f"--dhcp-leasefile={self.tmp / 'leases'}", f"--pid-file={self.tmp / 'dnsmasq.pid'}",
            "--user=root", "--group=root", f"--log-facility={log}",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not (log.exists() and "proxy on subnet" in log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dnsmasq did not start: {proc.stderr.read()}")
            time.sleep(0.05)
        return proc

    def load_argv(self, count: int, rate: float, mac: str = "") -> list[str]:
        return [
            *self.cli.argv(sys.executable, __file__, "load"),
            "--iface", self.cli_if, "--count", str(count), "--rate", str(rate), *(["--mac", mac] if mac else []),
        ]  # fmt: skip

    def load(self, count: int, rate: float) -> dict:
        out = subprocess.run(self.load_argv(count, rate), capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"load generator failed: {out.stderr}")
        self.wait_idle()
        return json.loads(out.stdout)

    def flood(self, rate: float, unknown_rate: float) -> tuple[dict, dict]:
        """A flood of spoofed-MAC DISCOVERs at `rate` for --seconds while one configured machine
        (KNOWN_MAC, a file of its own) asks 20 times a second: (its result, the flood's)."""
        proc = self.start_netbootd(unknown_rate)
        try:
            self.load(50, 1000)  # warm-up
            seconds = self.args.seconds
            flood = subprocess.Popen(self.load_argv(int(rate * seconds), rate), stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)  # the flood is on before the machine starts asking
            known = subprocess.run(self.load_argv(int(20 * (seconds - 1)), 20, KNOWN_MAC), capture_output=True,
                                   text=True, timeout=600)
            flood_out, _ = flood.communicate(timeout=600)
            self.wait_idle()
            return json.loads(known.stdout), json.loads(flood_out)
        finally:
            self.stop(proc)
            self.procs.remove(proc)

    def wait_idle(self, limit: float = 60.0) -> None:
        """Wait until the server has read every queued DISCOVER, so that one run's backlog does
        not slow the next (runs stay independent)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            table = self.srv.run("cat", "/proc/net/udp", check=False).stdout
            queued = [
                int(f[4].split(":")[1], 16)
                for f in (line.split() for line in table.splitlines()[1:])
                if len(f) > 4 and f[1].endswith(":0043")
            ]
            if not any(queued):
                time.sleep(0.2)  # the last datagram read may still be in processing
                return
            time.sleep(0.1)

    def sustained(self, first: float) -> tuple[float, list[dict]]:
        """The highest offered rate answered with <= 1% loss and p99 under MAX_P99_MS (no standing
        queue: netbootd's 4 MiB receive buffer would otherwise hide overload as latency)."""
        lo, hi, rate, steps = 0.0, 0.0, first, []
        for _ in range(self.args.steps):
            r = self.load(max(1, int(rate * self.args.step_seconds)), rate)
            steps.append(r)
            if r["answered"] >= 0.99 * r["sent"] and pct(r["latencies_ms"], 99) < MAX_P99_MS:
                lo = rate
                rate = rate * 2 if not hi else (lo + hi) / 2
            else:
                hi = rate
                rate = (lo + hi) / 2
        return lo, steps

    def run_server(self, name: str, paced_rate: float | None, checkout: Path = REPO, tag: str = "") -> dict:
        proc = self.start_netbootd(checkout=checkout, tag=tag) if name == "netbootd" else self.start_dnsmasq()
        result: dict = {}
        try:
            self.load(50, 1000)  # warm-up (imports, caches, neighbour entries)
            cpu_before = cpu_seconds(proc.pid)  # `nice` and `ip netns exec` exec: same PID
            result["sustained"], result["steps"] = self.sustained(self.args.start_rate)
            rate = paced_rate or result["sustained"]
            cpu_paced = cpu_seconds(proc.pid)
            result["paced"] = self.load(max(1, int(rate * self.args.seconds)), rate)
            paced_cpu = cpu_seconds(proc.pid) - cpu_paced
            result["cpu_us_per_paced_answer"] = 1e6 * paced_cpu / max(result["paced"]["answered"], 1)
            if name == "netbootd" and paced_rate and result["sustained"] and result["sustained"] < paced_rate:
                own = result["sustained"]
                result["paced_own"] = self.load(max(1, int(own * self.args.seconds)), own)
            answers = sum(r["answered"] for r in result["steps"]) + result["paced"]["answered"]
            answers += result.get("paced_own", {}).get("answered", 0)
            result["cpu_us_per_answer"] = 1e6 * (cpu_seconds(proc.pid) - cpu_before) / max(answers, 1)
        finally:
            self.stop(proc)
            self.procs.remove(proc)
        return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def flood_table(bench: Bench, args: argparse.Namespace, rate: float) -> None:
    from netbootd.config.settings import DhcpSettings

    guarded = DhcpSettings().unknown_rate
    print(f"\nflood: spoofed-MAC DISCOVERs at {rate:.0f}/s for {args.seconds:.0f} s; meanwhile one configured "
          f"machine asks 20 times a second (goal: its answers within 100 ms); load average {os.getloadavg()[0]:.1f}")
    print(f"{'flood guard':<26} {'machine asked':>13} {'answered':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"| {'flood answered':>14}")
    for label, unknown_rate in ((f"dhcp.unknown_rate {guarded:.0f}/s", guarded), ("off (unknown_rate 0)", 0.0)):
        known, flood = bench.flood(rate, unknown_rate)
        lat = known["latencies_ms"]
        print(f"{label:<26} {known['sent']:>13} {known['answered']:>9} {pct(lat, 50):>8.2f} {pct(lat, 99):>8.2f} "
              f"{(max(lat) if lat else float('nan')):>8.2f} | {flood['answered']:>7}/{flood['sent']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd")
    p_load = sub.add_parser("load")
    p_load.add_argument("--iface", required=True)
    p_load.add_argument("--count", type=int, required=True)
    p_load.add_argument("--rate", type=float, default=0.0)
    p_load.add_argument("--mac", default="", help="one MAC for every DISCOVER (default: a new one each)")
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--machines", type=Path, required=True)
    p_serve.add_argument("--log", type=Path, required=True)
    p_serve.add_argument("--profile", type=Path)
    p_serve.add_argument("--unknown-rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced run")
    parser.add_argument("--steps", type=int, default=7, help="runs in each server's rate search")
    parser.add_argument("--step-seconds", type=float, default=2.0, help="length of one search run")
    parser.add_argument("--start-rate", type=float, default=2000.0, help="first rate tried (DISCOVERs/s)")
    parser.add_argument("--profile", action="store_true", help="profile netbootd with cProfile")
    parser.add_argument("--nice", type=int, default=0, help="run both servers at this nice value (e.g. -10)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every run of the rate search")
    parser.add_argument("--flood-rate", type=float, default=0.0,
                        help="only the flood runs, at this rate (skips both servers' rate searches)")
    parser.add_argument("--flood", action="store_true",
                        help="also: a spoofed-MAC flood at dnsmasq's sustained rate while a configured machine "
                             "asks, with the flood guard (dhcp.unknown_rate default) and without it")
    parser.add_argument("--netbootd-pythonpath", type=Path, action="append", default=[], metavar="PATH",
                        help="also measure the netbootd package in PATH (another checkout), same run; repeatable")
    parser.add_argument("--others-first", action="store_true",
                        help="run the --netbootd-pythonpath netbootds before this checkout's (alternate the order)")
    parser.add_argument("--paced-rate", type=float, default=0.0,
                        help="the paced run's rate for every server (default: dnsmasq's sustained rate); with "
                             "--steps 0 the rate searches are skipped")
    args = parser.parse_args()

    if args.cmd == "load":
        print(json.dumps(run_load(args.iface, args.count, args.rate, mac=args.mac)))
        return
    if args.cmd == "serve":
        serve(args.machines, args.log, args.profile, args.unknown_rate)
        return

    sys.path.insert(0, str(REPO))  # the orchestrator: netbootd from this checkout, installed or not
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not args.steps and not args.paced_rate:
        raise SystemExit("--steps 0 needs --paced-rate")
    for path in args.netbootd_pythonpath:
        if not (path / "netbootd" / "__init__.py").is_file():
            raise SystemExit(f"--netbootd-pythonpath {path}: no netbootd package there")
    # (label, checkout, log/profile tag): this checkout's, then (or after) the others
    this = "netbootd"
    nbs = [(this, REPO, "")]
    if args.netbootd_pythonpath:
        this = f"netbootd@{REPO.name}"
        nbs = [(this, REPO, "-0")]
        others = []
        for i, path in enumerate(args.netbootd_pythonpath, 1):
            label = f"netbootd@{path.resolve().name}"
            others.append((label if label not in (this, *(o[0] for o in others)) else f"{label}#{i}", path, f"-{i}"))
        nbs = others + nbs if args.others_first else nbs + others
    bench = Bench(args)
    try:
        bench.up()
        if args.flood_rate:
            flood_table(bench, args, args.flood_rate)
            return
        load_start = os.getloadavg()[0]
        dnsmasq = bench.run_server("dnsmasq", args.paced_rate or None)
        rate = args.paced_rate or dnsmasq["sustained"]
        paced_at = "--paced-rate" if args.paced_rate else "dnsmasq's rate"
        results = {label: bench.run_server("netbootd", rate, checkout, tag) for label, checkout, tag in nbs}
        width = max(9, *(len(label) for label in results))
        print(
            f"\nboot storm of BIOS PXE DISCOVERs, a distinct MAC each, over a veth pair between two namespaces;\n"
            f"sustained = highest offered rate answered with <= 1% loss and p99 < {MAX_P99_MS:.0f} ms "
            f"({args.steps} runs of "
            f"{args.step_seconds:.0f} s);\npaced = {args.seconds:.0f} s at {paced_at} ({rate:.0f}/s); "
            "latency = DISCOVER sent -> OFFER received"
        )
        if args.netbootd_pythonpath:
            print("netbootd checkouts, in the order run: " + ", ".join(f"{label} = {checkout}" for label, checkout, _ in nbs))
        print(f"load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
        print(
            f"{'server':<{width}} {'sustained/s':>11} | {'paced/s':>8} {'sent':>7} {'answers':>8} {'lost':>7} "
            f"{'p50 ms':>8} {'p99 ms':>8}"
        )
        rows = [("dnsmasq", dnsmasq["paced"], f"{dnsmasq['sustained']:.0f}")]
        for label, res in results.items():
            rows.append((label, res["paced"], f"{res['sustained']:.0f}"))
            if "paced_own" in res:
                rows.append((label, res["paced_own"], ""))  # at its own sustained rate
        for name, r, sustained in rows:
            lat = r["latencies_ms"]
            print(
                f"{name:<{width}} {sustained:>11} | {r['rate']:>8.0f} {r['sent']:>7} {r['answered']:>8} "
                f"{100 * (1 - r['answered'] / r['sent']):>6.1f}% {pct(lat, 50):>8.2f} {pct(lat, 99):>8.2f}"
            )
        print()
        for label, res in results.items():
            if not args.steps:
                continue
            ratio = res["sustained"] / dnsmasq["sustained"] if dnsmasq["sustained"] else float("nan")
            p99 = pct(res["paced"]["latencies_ms"], 99)
            print(
                f"{label}/dnsmasq sustained-rate ratio: {ratio:.2f}; {label} p99 at {paced_at}: "
                f"{p99:.2f} ms (goal: ratio >= 1 and p99 < 5 ms)"
            )
        print(
            "\nCPU per answer (utime+stime of the server process, us): over all its runs (rate search, paced);\n"
            f"over the paced run alone ({rate:.0f}/s for every server; like-for-like only where each kept up: low p50)"
        )
        print(f"{'server':<{width}} {'all runs':>9} {'paced':>9}")
        for label, res in (("dnsmasq", dnsmasq), *results.items()):
            print(f"{label:<{width}} {res['cpu_us_per_answer']:>9.1f} {res['cpu_us_per_paced_answer']:>9.1f}")
        new = results[this]
        for label, old in results.items():
            if label != this:
                print(
                    f"CPU per answer {this} / {label} (new/old): "
                    f"{new['cpu_us_per_answer'] / old['cpu_us_per_answer']:.2f} over all runs, "
                    f"{new['cpu_us_per_paced_answer'] / old['cpu_us_per_paced_answer']:.2f} paced"
                )
        if args.flood:
            flood_table(bench, args, rate)
        if args.verbose:
            for name, res in (("dnsmasq", dnsmasq), *results.items()):
                for st in res["steps"]:
                    print(f"  {name} search: {st['rate']:.0f}/s -> {st['answered']}/{st['sent']}")
        if args.profile:
            import pstats

            for label, _, tag in nbs:
                print(f"\n{label}:")
                pstats.Stats(str(bench.tmp / f"netbootd{tag}.prof")).sort_stats("tottime").print_stats(25)
    finally:
        bench.down()


if __name__ == "__main__":
    main()
