"""TFTP throughput: netbootd vs tftpd-hpa, same client (atftp), same run.

Scenarios: blksize 512/1468 x windowsize 1/16, one transfer and 50 concurrent transfers, on
loopback and over a veth pair between two network namespaces created here, with 1 ms of netem
delay on the server side (where windowing matters). Kernels without sch_netem (Firecracker
guests) get the delay from a user-space UDP relay in the server namespace instead; the table
says which was used. tftpd-hpa does not implement windowsize:
it ignores the option and the client falls back to lock-step, which is the point of the row.

Needs root (namespaces), atftp, in.tftpd (tftpd-hpa), tc, ip. Everything started here is
stopped by PID and the namespaces are deleted on exit.

    python bench/tftp.py               # full run
    python bench/tftp.py --quick       # smaller files, one repetition
    python bench/tftp.py --no-netns    # loopback only
    python bench/tftp.py --profile     # also cProfile the netbootd server (loopback, lock-step 512)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # netbootd from this checkout, installed or not
from netbootd.testing.netns import Namespace, Topology  # noqa: E402

VETH_SRV, VETH_CLI = "nbbs0", "nbbc0"
SRV_IP, CLI_IP = "10.213.77.1", "10.213.77.2"
PORT_NETBOOTD, PORT_HPA = 16969, 16970
CLIENT_TIMEOUT = 300


def serve(root: str, address: str, port: int, profile: str | None) -> None:
    """Run the netbootd TFTP server (child process)."""
    from twisted.internet import reactor

    from netbootd.config.settings import Settings, TftpSettings
    from netbootd.tftp import listen_tftp
    from netbootd.tftp.files import TftpFiles

    # rate_limit 0: every client of this benchmark shares one source address, which the per-client
    # limit (20 new transfers a second) would otherwise throttle: the table measures transfers, not it
    settings = Settings(tftp=TftpSettings(port=port, listen=address, root=Path(root), max_transfers=512, rate_limit=0))
    listen_tftp(reactor, settings, TftpFiles(settings))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    if profile:
        import cProfile

        cProfile.runctx("reactor.run(installSignalHandlers=False)", globals(), locals(), profile)
    else:
        reactor.run(installSignalHandlers=False)


def relay(listen_ip: str, pairs: list[tuple[int, int]], delay: float) -> None:
    """User-space stand-in for netem (child process): UDP relay adding `delay` server→client.

    Each front port forwards to 127.0.0.1:<backend port>; every client address gets its own
    backend socket, which follows the server's transfer port (TID) from its first answer.
    epoll's timeout has millisecond granularity, so due packets are released by an interval
    timer (setitimer, microseconds) whose signal wakes the loop through set_wakeup_fd.
    """
    import heapq
    import selectors
    import socket

    sel = selectors.EpollSelector()
    for front_port, backend_port in pairs:
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        front.bind((listen_ip, front_port))
        front.setblocking(False)
        sel.register(front, selectors.EVENT_READ, ("front", front, backend_port))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    sel.register(wake_r, selectors.EVENT_READ, ("wake", None, None))
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGALRM, lambda *_: None)
    flows: dict[tuple[int, tuple], socket.socket] = {}
    back_state: dict[socket.socket, list] = {}  # back socket -> [front, client addr, server addr, last use]
    queue: list = []
    seq = 0
    armed_for = None
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    last_sweep = time.monotonic()
    while running[0]:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, data, addr = heapq.heappop(queue)
            try:
                sock.sendto(data, addr)
            except OSError:
                pass
        if queue and armed_for != queue[0][0]:
            armed_for = queue[0][0]
            signal.setitimer(signal.ITIMER_REAL, max(armed_for - now, 1e-5))
        for key, _ in sel.select(None if queue else 0.5):
            kind, sock, info = key.data
            if kind == "wake":
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                armed_for = None
                continue
            while True:
                try:
                    data, addr = sock.recvfrom(70000)
                except OSError:
                    break
                if kind == "front":
                    flow = flows.get((sock.fileno(), addr))
                    if flow is None:
                        flow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        flow.bind(("127.0.0.1", 0))
                        flow.setblocking(False)
                        flows[(sock.fileno(), addr)] = flow
                        back_state[flow] = [sock, addr, ("127.0.0.1", info), now]
                        sel.register(flow, selectors.EVENT_READ, ("back", flow, None))
                    state = back_state[flow]
                    state[3] = now
                    if data[:2] in (b"\x00\x01", b"\x00\x02"):
                        # a new request (client ports get reused across runs): to port 69 again
                        state[2] = ("127.0.0.1", info)
                    try:
                        flow.sendto(data, state[2])
                    except OSError:
                        pass
                else:
                    state = back_state[sock]
                    state[2] = addr  # the server's transfer port
                    state[3] = now
                    seq += 1
                    heapq.heappush(queue, (time.monotonic() + delay, seq, state[0], data, state[1]))
        if now - last_sweep > 5:
            last_sweep = now
            for flow, state in list(back_state.items()):
                if now - state[3] > 30:
                    sel.unregister(flow)
                    flow.close()
                    del back_state[flow]
                    flows.pop((state[0].fileno(), state[1]), None)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nbbench-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        self.out = self.tmp / "out"
        self.out.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.net: Topology | None = None  # the veth scenarios' namespaces, while they run
        self.client_ns: Namespace | None = None  # where the clients run (None: here, on loopback)
        self.delay = ""

    # -- setup / teardown --------------------------------------------------------------------

    def make_files(self) -> None:
        q = self.args.quick
        sizes = {
            "single.bin": (8 if q else 32) << 20,
            "slow.bin": (1 if q else 2) << 20,  # lock-step over the delayed link is slow
            "concurrent.bin": (1 if q else 2) << 20,
            "ready.txt": 10,
        }
        for name, size in sizes.items():
            with open(self.root / name, "wb") as f:
                f.write(os.urandom(size))
        self.sizes = sizes

    def start_servers(self, ns: Namespace | None, address: str) -> None:
        prefix = ns.argv() if ns else []
        public = address
        if ns and self.delay.startswith("relay"):
            address = "127.0.0.1"  # servers behind the relay
        profile = str(self.tmp / "netbootd.prof") if self.args.profile and not ns else None
        cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--serve", str(self.root), address]
        cmd += [str(PORT_NETBOOTD)] + (["--profile-out", profile] if profile else [])
        self.procs.append(subprocess.Popen(cmd))
        hpa = shutil.which("in.tftpd") or "/usr/sbin/in.tftpd"
        self.procs.append(subprocess.Popen([*prefix, hpa, "-L", "-s", str(self.root), "-a", f"{address}:{PORT_HPA}"]))
        if public != address:
            pairs = f"{PORT_NETBOOTD}:{PORT_NETBOOTD},{PORT_HPA}:{PORT_HPA}"
            self.procs.append(
                subprocess.Popen([*prefix, sys.executable, str(Path(__file__).resolve()), "--relay", public, pairs])
            )
        for port in (PORT_NETBOOTD, PORT_HPA):
            self.wait_ready(public, port)

    def stop_servers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []

    def setup_netns(self) -> tuple[Namespace, Namespace]:
        """The server and client namespaces, joined by a veth pair: (server, client)."""
        self.net = Topology("nbbench")
        srv, cli = self.net.namespace("s"), self.net.namespace("c")
        self.net.veth(srv, VETH_SRV, cli, VETH_CLI)
        srv.address(VETH_SRV, f"{SRV_IP}/24")
        cli.address(VETH_CLI, f"{CLI_IP}/24")
        # 1 ms one way on the server's side; a queue long enough for 50 windows of 16
        r = srv.run("tc", "qdisc", "add", "dev", VETH_SRV, "root", "netem", "delay", "1ms", "limit", "10000", check=False)
        if r.returncode == 0:
            self.delay = "netem 1ms"
        else:
            # kernels without sch_netem (e.g. Firecracker guests): a user-space relay instead
            print(f"# netem unavailable ({r.stderr.strip()}): delaying with a user-space relay", flush=True)
            self.delay = "relay 1ms"
        return srv, cli

    def teardown_netns(self) -> None:
        if self.net is not None:
            self.net.close()
            self.net = None

    def cleanup(self) -> None:
        self.stop_servers()
        self.teardown_netns()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------------

    def client_argv(self, ns: Namespace | None, address: str, port: int, name: str, out: Path, blksize: int,
                    window: int) -> list[str]:  # fmt: skip
        argv = ns.argv() if ns else []
        argv += ["atftp", "--option", f"blksize {blksize}"]
        if window > 1:
            argv += ["--option", f"windowsize {window}"]
        return [*argv, "-g", "-r", name, "-l", str(out), address, str(port)]

    def wait_ready(self, address: str, port: int) -> None:
        ns = self.client_ns if address == SRV_IP else None
        for _ in range(50):
            r = subprocess.run(
                self.client_argv(ns, address, port, "ready.txt", self.out / "ready", 512, 1),
                capture_output=True,
                timeout=30,
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit(f"server on {address}:{port} did not answer")

    def run_clients(self, ns, address, port, name, blksize, window, count) -> tuple[float, int, int]:
        """Start `count` clients at once; (wall seconds, failures, clients that saw timeouts)."""
        procs = []
        start = time.perf_counter()
        for i in range(count):
            out = self.out / f"{port}-{i}"
            argv = self.client_argv(ns, address, port, name, out, blksize, window)
            procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
        failures = timeouts = 0
        deadline = start + CLIENT_TIMEOUT
        for p, out in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                _, err = p.communicate()
                failures += 1
                continue
            if b"timeout" in err:
                timeouts += 1
            if p.returncode != 0 or out.stat().st_size != self.sizes[name]:
                failures += 1
        elapsed = time.perf_counter() - start
        for _, out in procs:
            out.unlink(missing_ok=True)
        return elapsed, failures, timeouts

    def measure(self, ns, address, name, blksize, window, count) -> tuple[dict, dict]:
        """netbootd and tftpd-hpa, interleaved run by run (the host's load drifts): medians."""
        repeat = 1 if (self.args.quick or count > 1) else self.args.repeat
        runs: dict[int, list] = {PORT_NETBOOTD: [], PORT_HPA: []}
        for _ in range(repeat):
            for port in runs:
                runs[port].append(self.run_clients(ns, address, port, name, blksize, window, count))
        out = []
        for port in (PORT_NETBOOTD, PORT_HPA):
            wall = statistics.median(r[0] for r in runs[port])
            out.append(
                {
                    "mbps": self.sizes[name] * count / wall / 1e6,
                    "failures": sum(r[1] for r in runs[port]),
                    "timeouts": sum(r[2] for r in runs[port]),
                }
            )
        return out[0], out[1]

    # -- the run -------------------------------------------------------------------------------

    def scenarios(self, link: str):
        for count in self.args.clients:
            for blksize in self.args.blksizes:
                for window in self.args.windows:
                    if link == "loopback":
                        name = "single.bin" if count == 1 else "concurrent.bin"
                    else:
                        name = "slow.bin" if count == 1 else "concurrent.bin"
                    yield count, blksize, window, name

    def run(self) -> list[tuple]:
        self.make_files()
        rows = []
        links = []
        if "loopback" in self.args.links:
            links.append(("loopback", "127.0.0.1"))
        if "veth" in self.args.links and not self.args.no_netns:
            links.append(("veth", SRV_IP))
        for link, address in links:
            if link == "loopback":
                self.client_ns = None
                self.start_servers(None, address)
            else:
                server_ns, self.client_ns = self.setup_netns()
                self.start_servers(server_ns, address)
            for count, blksize, window, name in self.scenarios(link):
                nb, hpa = self.measure(self.client_ns, address, name, blksize, window, count)
                row = (link if link == "loopback" else f"veth {self.delay}", blksize, window, count, nb, hpa)
                print(format_row(row), flush=True)
                rows.append(row)
            self.stop_servers()
            self.teardown_netns()
        return rows


NOTE = ("netbootd runs with tftp.rate_limit = 0 (the clients share one source address; the per-client limit "
        "would otherwise be what the multi-client rows measure)")
HEADER = (
    f"{'link':<16} {'blksize':>7} {'window':>6} {'clients':>7} | {'netbootd MB/s':>13} {'tftpd-hpa MB/s':>14}"
    f" {'ratio':>6} | {'fail nb/hpa':>11} {'timeouts nb/hpa':>15}"
)


def format_row(row: tuple) -> str:
    link, blksize, window, count, nb, hpa = row
    ratio = nb["mbps"] / hpa["mbps"] if hpa["mbps"] else float("inf")
    return (
        f"{link:<16} {blksize:>7} {window:>6} {count:>7} | {nb['mbps']:>13.2f} {hpa['mbps']:>14.2f}"
        f" {ratio:>5.2f}x | {nb['failures']:>5}/{hpa['failures']:<5} {nb['timeouts']:>7}/{hpa['timeouts']:<7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-netns", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--links", default="loopback,veth", help="comma-separated: loopback, veth")
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--clients", type=ints, default=[1, 50], help="concurrent clients (default 1,50)")
    parser.add_argument("--blksizes", type=ints, default=[512, 1468])
    parser.add_argument("--windows", type=ints, default=[1, 16])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--serve", nargs=3, metavar=("ROOT", "ADDRESS", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--relay", nargs=2, metavar=("ADDRESS", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        pairs = [tuple(int(x) for x in p.split(":")) for p in args.relay[1].split(",")]
        relay(args.relay[0], pairs, 0.001)  # type: ignore[arg-type]
        return
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]), args.profile_out)
        return
    if not args.no_netns and os.geteuid() != 0:
        raise SystemExit("the namespace scenarios need root (or use --no-netns)")
    bench = Bench(args)
    try:
        load = os.getloadavg()
        print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
        print(NOTE)
        print(HEADER)
        print("-" * len(HEADER))
        bench.run()
        load = os.getloadavg()
        print(f"# load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")
        if args.profile:
            import pstats

            bench.stop_servers()
            pstats.Stats(str(bench.tmp / "netbootd.prof")).sort_stats("tottime").print_stats(25)
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main()
