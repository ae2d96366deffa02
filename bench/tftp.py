"""TFTP throughput: netbootd vs tftpd-hpa, same client (atftp), same run.

Scenarios: blksize 512/1468 x windowsize 1/16, one transfer and 50 concurrent transfers, on
loopback and over a veth pair between two network namespaces created here, with 1 ms of netem
delay on the server side (where windowing matters). tftpd-hpa does not implement windowsize:
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
NS_SRV = f"nbbench-srv-{os.getpid()}"
NS_CLI = f"nbbench-cli-{os.getpid()}"
VETH_SRV, VETH_CLI = f"nbbs{os.getpid() % 100000}", f"nbbc{os.getpid() % 100000}"
SRV_IP, CLI_IP = "10.213.77.1", "10.213.77.2"
PORT_NETBOOTD, PORT_HPA = 16969, 16970
CLIENT_TIMEOUT = 300


def serve(root: str, address: str, port: int, profile: str | None) -> None:
    """Run the netbootd TFTP server (child process)."""
    sys.path.insert(0, str(REPO))
    from twisted.internet import reactor

    from netbootd.config.settings import Settings, TftpSettings
    from netbootd.tftp import listen_tftp
    from netbootd.tftp.files import TftpFiles

    settings = Settings(tftp=TftpSettings(port=port, listen=address, root=Path(root), max_transfers=512))
    listen_tftp(reactor, settings, TftpFiles(settings))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    if profile:
        import cProfile

        cProfile.runctx("reactor.run(installSignalHandlers=False)", globals(), locals(), profile)
    else:
        reactor.run(installSignalHandlers=False)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nbbench-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        self.out = self.tmp / "out"
        self.out.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.netns = False

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

    def start_servers(self, ns: str | None, address: str) -> None:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        profile = str(self.tmp / "netbootd.prof") if self.args.profile and not ns else None
        cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--serve", str(self.root), address]
        cmd += [str(PORT_NETBOOTD)] + (["--profile-out", profile] if profile else [])
        self.procs.append(subprocess.Popen(cmd))
        hpa = shutil.which("in.tftpd") or "/usr/sbin/in.tftpd"
        self.procs.append(subprocess.Popen([*prefix, hpa, "-L", "-s", str(self.root), "-a", f"{address}:{PORT_HPA}"]))
        for port in (PORT_NETBOOTD, PORT_HPA):
            self.wait_ready(address, port)

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

    def setup_netns(self) -> None:
        sh("ip", "netns", "add", NS_SRV)
        sh("ip", "netns", "add", NS_CLI)
        self.netns = True
        sh("ip", "link", "add", VETH_SRV, "type", "veth", "peer", "name", VETH_CLI)
        sh("ip", "link", "set", VETH_SRV, "netns", NS_SRV)
        sh("ip", "link", "set", VETH_CLI, "netns", NS_CLI)
        for ns, dev, ip in ((NS_SRV, VETH_SRV, SRV_IP), (NS_CLI, VETH_CLI, CLI_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # 1 ms one way on the server's side; a queue long enough for 50 windows of 16
        sh("ip", "netns", "exec", NS_SRV, "tc", "qdisc", "add", "dev", VETH_SRV, "root", "netem", "delay", "1ms",
           "limit", "10000")  # fmt: skip

    def teardown_netns(self) -> None:
        if self.netns:
            sh("ip", "netns", "del", NS_SRV, check=False)
            sh("ip", "netns", "del", NS_CLI, check=False)
            self.netns = False

    def cleanup(self) -> None:
        self.stop_servers()
        self.teardown_netns()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------------

    def client_argv(self, ns: str | None, address: str, port: int, name: str, out: Path, blksize: int,
                    window: int) -> list[str]:  # fmt: skip
        argv = ["ip", "netns", "exec", ns] if ns else []
        argv += ["atftp", "--option", f"blksize {blksize}"]
        if window > 1:
            argv += ["--option", f"windowsize {window}"]
        return [*argv, "-g", "-r", name, "-l", str(out), address, str(port)]

    def wait_ready(self, address: str, port: int) -> None:
        ns = NS_CLI if address == SRV_IP else None
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

    def measure(self, ns, address, port, name, blksize, window, count) -> dict:
        repeat = 1 if (self.args.quick or count > 1) else self.args.repeat
        runs = [self.run_clients(ns, address, port, name, blksize, window, count) for _ in range(repeat)]
        wall = statistics.median(r[0] for r in runs)
        return {
            "mbps": self.sizes[name] * count / wall / 1e6,
            "failures": sum(r[1] for r in runs),
            "timeouts": sum(r[2] for r in runs),
        }

    # -- the run -------------------------------------------------------------------------------

    def scenarios(self, link: str):
        for count in (1, 50):
            for blksize in (512, 1468):
                for window in (1, 16):
                    if link == "loopback":
                        name = "single.bin" if count == 1 else "concurrent.bin"
                    else:
                        name = "slow.bin" if count == 1 else "concurrent.bin"
                    yield count, blksize, window, name

    def run(self) -> list[tuple]:
        self.make_files()
        rows = []
        links = [("loopback", None, "127.0.0.1")]
        if not self.args.no_netns:
            links.append(("veth+1ms", NS_CLI, SRV_IP))
        for link, client_ns, address in links:
            if link == "loopback":
                self.start_servers(None, address)
            else:
                self.setup_netns()
                self.start_servers(NS_SRV, address)
            for count, blksize, window, name in self.scenarios(link):
                nb = self.measure(client_ns, address, PORT_NETBOOTD, name, blksize, window, count)
                hpa = self.measure(client_ns, address, PORT_HPA, name, blksize, window, count)
                row = (link, blksize, window, count, nb, hpa)
                print(format_row(row), flush=True)
                rows.append(row)
            self.stop_servers()
            self.teardown_netns()
        return rows


HEADER = (
    f"{'link':<10} {'blksize':>7} {'window':>6} {'clients':>7} | {'netbootd MB/s':>13} {'tftpd-hpa MB/s':>14}"
    f" {'ratio':>6} | {'fail nb/hpa':>11} {'timeouts nb/hpa':>15}"
)


def format_row(row: tuple) -> str:
    link, blksize, window, count, nb, hpa = row
    ratio = nb["mbps"] / hpa["mbps"] if hpa["mbps"] else float("inf")
    return (
        f"{link:<10} {blksize:>7} {window:>6} {count:>7} | {nb['mbps']:>13.2f} {hpa['mbps']:>14.2f}"
        f" {ratio:>5.2f}x | {nb['failures']:>5}/{hpa['failures']:<5} {nb['timeouts']:>7}/{hpa['timeouts']:<7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-netns", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--serve", nargs=3, metavar=("ROOT", "ADDRESS", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]), args.profile_out)
        return
    if not args.no_netns and os.geteuid() != 0:
        raise SystemExit("the namespace scenarios need root (or use --no-netns)")
    bench = Bench(args)
    try:
        print(HEADER)
        print("-" * len(HEADER))
        bench.run()
        if args.profile:
            import pstats

            bench.stop_servers()
            pstats.Stats(str(bench.tmp / "netbootd.prof")).sort_stats("tottime").print_stats(25)
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main()
