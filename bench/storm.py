"""Boot storm: N simulated machines boot at once from netbootd, and from dnsmasq + nginx, same run.

    sudo python bench/storm.py                          # N=500 against both stacks (~2 min)
    sudo python bench/storm.py --find-limit 1000,2000   # then both at N=1000, 2000, each until it fails
    sudo python bench/storm.py -n 200 --kernel-mib 2 --initrd-mib 8      # quicker
    sudo python bench/storm.py --dnsmasq-tftp-max 1024  # dnsmasq's TFTP cap raised to netbootd's order
    sudo python bench/storm.py --netbootd-setting '[tftp]' --netbootd-setting 'max_transfers = 1024'  # a setting
    sudo python bench/storm.py --only netbootd --profile                 # cProfile netbootd's storm
    sudo python bench/storm.py --only netbootd --netbootd-pythonpath /tmp/patched   # storm a patch
    sudo python bench/storm.py --only netbootd --dashboard both   # netbootd without, then with, a dashboard

Both stacks run with their shipped defaults unless told otherwise (netbootd: tftp.max_transfers
4096, beyond which requests are dropped (the machine resends), http.max_transfers 1024, beyond
which downloads wait in a queue (8192, 60 s, then 503); dnsmasq: tftp-max 50, beyond which
requests are not answered). The host's other load shows in the results (2 cores):
the load average is printed at the start and end.

Network: two namespaces created here, "server" and "clients", joined by one veth pair; the
server has 10.88.0.1/16, every simulated machine a "leased" secondary address 10.88.x.y on the
clients' veth (no address server is simulated). All machines live in one asyncio process
(bench/storm_client.py) in the clients' namespace: one port-68 socket for every broadcast
answer, one socket per 4011 request, TFTP transfer and HTTP connection, bound to the machine's
own address. One process because the host has 2 cores: the server under test gets one, the
machines the other (their CPU time is printed, to show when they, not the server, are the limit).
The server namespace gets a permanent neighbour entry per machine address: the kernel's ARP table
is shared by all namespaces and overflows past gc_thresh3 (1024 by default) — a real site with
more than 1024 machines on one segment has to raise it, for any boot server.

What each machine does (firmware-like, bounded retries; see storm_client.py): DISCOVER -> proxy
OFFER (EFI PXE: and REQUEST/ACK on 4011 from its leased address), TFTP of the iPXE binary it was
offered (HTTP-boot machines: HEAD + GET over HTTP), DISCOVER as iPXE -> script URL, GET script,
then the script's kernel, initrd and beacon. Default mix 40% BIOS PXE, 40% EFI PXE, 20% UEFI
HTTP boot; machines power on spread uniformly over --ramp seconds.

The stacks, one after the other on the same namespaces and files, each on standard ports:
- netbootd: `python -m netbootd serve` with a generated config (machines/default.toml: a kernel
  boot of files/vmlinuz + files/initrd.img), its defaults otherwise.
- classic: dnsmasq in proxy mode with its own TFTP (pxe-service per arch, user class iPXE ->
  dhcp-boot of the script URL, HTTPClient -> the EFI binary URL) and nginx serving the same script,
  kernel, initrd and iPXE binary (sendfile on, 2 workers: `worker_processes auto`).
  Both log one line per answer/request as shipped.

--dashboard on|both: one dashboard client (netbootd.ui) watches netbootd's storm: an SSE reader on
ui.listen (its default, 127.0.0.1:9180, in the server's namespace) that reads and parses every
update, as a browser tab would, from before the storm until it ends; "both" runs netbootd's storm
without it, then with it ("netbootd+ui"), in the same run. Without the option, nothing reads the
dashboard (netbootd still serves it: it is on by default).

Reported: completion-time percentiles of the whole flow and per stage, failed machines (and at
which stage, why), stage retries and packet retransmissions, the server's CPU seconds and peak
RSS (VmHWM, reset before the storm via /proc/<pid>/clear_refs), the client's CPU seconds.
Everything started here is stopped by PID; the namespaces and temporary files are removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # netbootd from this checkout, installed or not
from netbootd.testing.netns import Namespace, Topology  # noqa: E402

CLIENT = HERE / "storm_client.py"
IPXE_DIR = Path("/usr/lib/ipxe")
NET_PREFIX = "10.88"
SERVER_IP = f"{NET_PREFIX}.0.1"
CLIENT_PRIMARY = f"{NET_PREFIX}.0.2"
STAGES = ("dhcp", "4011", "nbp", "ipxe-dhcp", "script", "kernel", "initrd", "beacon")
FIRMWARES = ("bios", "efi", "http")
BIOS_NBP, EFI_NBP = "undionly.kpxe", "snponly.efi"
DROP_COUNTERS = (
    "Udp.RcvbufErrors", "Udp.SndbufErrors", "Udp.InErrors", "Udp.NoPorts", "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops", "TcpExt.TCPReqQFullDrop", "TcpExt.TCPTimeouts", "TcpExt.TCPSynRetrans", "Tcp.AttemptFails",
)  # fmt: skip


def machine_ip(i: int) -> str:
    return f"{NET_PREFIX}.{1 + i // 250}.{1 + i % 250}"


# ------------------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


# ------------------------------------------------------------------------------ the bench


class Storm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.net = Topology("nbstorm")
        self.if_srv, self.if_cli = "nbsts0", "nbstc0"
        self.tmp = Path(tempfile.mkdtemp(prefix="netbootd-storm-"))
        self.tmp.chmod(0o755)  # nginx's workers (nobody) read the files
        self.procs: list[subprocess.Popen] = []
        self.addresses = 0  # machine addresses configured so far
        self.sizes: dict[str, int] = {}

    # -- network ---------------------------------------------------------------------------

    def up(self) -> None:
        self.ns_srv, self.ns_cli = self.net.namespace("s"), self.net.namespace("c")
        self.net.veth(self.ns_srv, self.if_srv, self.ns_cli, self.if_cli)
        self.ns_srv.address(self.if_srv, f"{SERVER_IP}/16")
        self.ns_cli.address(self.if_cli, f"{CLIENT_PRIMARY}/16")
        self.cli_mac = self.ns_cli.run("cat", f"/sys/class/net/{self.if_cli}/address").stdout.strip()

    def ensure_addresses(self, n: int) -> None:
        """Machine addresses (secondary, on the clients' veth) and the server's neighbour entries."""
        if n <= self.addresses:
            return
        ips = [machine_ip(i) for i in range(self.addresses, n)]
        self.ns_cli.ip("-batch", "-", input="".join(f"addr add {ip}/16 dev {self.if_cli}\n" for ip in ips))
        neigh = "".join(f"neigh replace {ip} lladdr {self.cli_mac} dev {self.if_srv} nud permanent\n" for ip in ips)
        self.ns_srv.ip("-batch", "-", input=neigh)
        self.addresses = n

    def down(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        self.net.close()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- files -----------------------------------------------------------------------------

    def make_files(self) -> None:
        files = self.tmp / "files"
        files.mkdir()
        for name, mib in (("vmlinuz", self.args.kernel_mib), ("initrd.img", self.args.initrd_mib)):
            with open(files / name, "wb") as f:
                for _ in range(int(mib)):
                    f.write(os.urandom(1 << 20))
                f.write(os.urandom(int((mib % 1) * (1 << 20))))
        tftp = self.tmp / "tftp"
        tftp.mkdir()
        for name in (BIOS_NBP, EFI_NBP):
            shutil.copy(self.args.ipxe_dir / name, tftp / name)
        # nginx's docroot: the same files, the same EFI binary, a static script like netbootd's
        www = self.tmp / "www"
        www.mkdir()
        for name in ("vmlinuz", "initrd.img"):
            os.link(files / name, www / name)
        shutil.copy(tftp / EFI_NBP, www / EFI_NBP)
        (www / "beacon").write_text("")
        (www / "boot.ipxe").write_text(
            "#!ipxe\n"
            f"kernel --name kernel http://{SERVER_IP}/vmlinuz initrd=initrd console=ttyS0 || goto failed\n"
            f"initrd --name initrd http://{SERVER_IP}/initrd.img || goto failed\n"
            f"imgfetch --name beacon http://{SERVER_IP}/beacon?mac=${{mac}}&stage=loaded && imgfree beacon || echo no\n"
            "boot || goto failed\n:failed\nsleep 10\nreboot\n"
        )
        self.sizes = {n: (files / n).stat().st_size for n in ("vmlinuz", "initrd.img")}
        self.sizes.update({n: (tftp / n).stat().st_size for n in (BIOS_NBP, EFI_NBP)})

    # -- servers ---------------------------------------------------------------------------

    def spawn(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab")
        proc = subprocess.Popen(self.ns_srv.argv(*argv), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=self.tmp)  # fmt: skip
        out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)  # by PID: only what we started (`ip netns exec` execs, same PID)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def start_netbootd(self) -> list[subprocess.Popen]:
        conf = self.tmp / "netbootd"
        (conf / "machines" / "profiles").mkdir(parents=True, exist_ok=True)
        (conf / "machines" / "default.toml").write_text(
            '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img"]\ncmdline = "console=ttyS0"\n'
        )
        extra = "".join(f"{line}\n" for line in self.args.netbootd_setting)
        (conf / "netbootd.toml").write_text(
            f'machines_dir = "machines"\nfiles_root = "{self.tmp / "files"}"\nstate_dir = "state"\ncache_dir = "cache"\n{extra}'
        )
        notify = self.tmp / "notify.sock"
        notify.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        pythonpath = str(self.args.netbootd_pythonpath or REPO)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify), "PYTHONPATH": pythonpath}
        argv = [sys.executable, "-P", "-m", "netbootd", "serve", "--config", str(conf / "netbootd.toml")]
        if self.args.profile:
            argv = [sys.executable, "-P", "-m", "cProfile", "-o", str(self.tmp / "netbootd.prof"), *argv[2:]]
        if self.args.server_nofile:
            argv = ["prlimit", f"--nofile={self.args.server_nofile}", "--", *argv]
        proc = self.spawn(argv, self.tmp / "netbootd.log", env)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if select.select([sock], [], [], 0.2)[0] and b"READY=1" in sock.recv(4096):
                    return [proc]
            self.stop(proc)
            raise SystemExit(f"netbootd did not start:\n{(self.tmp / 'netbootd.log').read_text()[-3000:]}")
        finally:
            sock.close()

    def start_classic(self) -> list[subprocess.Popen]:
        log = self.tmp / "dnsmasq.log"
        log.unlink(missing_ok=True)
        url = f"http://{SERVER_IP}"
        argv = [
            shutil.which("dnsmasq") or "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--bind-interfaces", f"--interface={self.if_srv}", f"--dhcp-range={NET_PREFIX}.0.0,proxy,255.255.0.0",
            "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-vendorclass=set:http,HTTPClient",
            "--dhcp-pxe-vendor=PXEClient,HTTPClient",
            f"--pxe-service=tag:!ipxe,x86PC,netboot,{BIOS_NBP}",
            f"--pxe-service=tag:!ipxe,X86-64_EFI,netboot,{EFI_NBP}",
            f"--dhcp-boot=tag:ipxe,{url}/boot.ipxe", f"--dhcp-boot=tag:http,{url}/{EFI_NBP}",
            "--dhcp-option-force=tag:http,60,HTTPClient",
            "--enable-tftp", f"--tftp-root={self.tmp / 'tftp'}", f"--tftp-max={self.args.dnsmasq_tftp_max}",
            f"--dhcp-leasefile={self.tmp / 'leases'}", f"--pid-file={self.tmp / 'dnsmasq.pid'}",
            "--user=root", "--group=root", f"--log-facility={log}",
        ]  # fmt: skip
        dnsmasq = self.spawn(argv, self.tmp / "dnsmasq.out")
        nginx_dir = self.tmp / "nginx"
        nginx_dir.mkdir(exist_ok=True)
        (nginx_dir / "nginx.conf").write_text(
            f"worker_processes {self.args.nginx_workers};\npid {nginx_dir}/nginx.pid;\n"
            f"error_log {nginx_dir}/error.log;\nworker_rlimit_nofile 65536;\n"
            "events { worker_connections 16384; }\n"
            "http {\n"
            f"  access_log {nginx_dir}/access.log;\n  client_body_temp_path {nginx_dir}/body;\n"
            f"  proxy_temp_path {nginx_dir}/proxy;\n  fastcgi_temp_path {nginx_dir}/fastcgi;\n"
            f"  uwsgi_temp_path {nginx_dir}/uwsgi;\n  scgi_temp_path {nginx_dir}/scgi;\n"
            "  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n"
            "  types { application/efi efi; text/plain ipxe; }\n  default_type application/octet-stream;\n"
            f"  server {{ listen {SERVER_IP}:80; root {self.tmp / 'www'}; }}\n"
            "}\n"
        )
        nginx = self.spawn([shutil.which("nginx") or "nginx", "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir),
                            "-g", "daemon off;"], nginx_dir / "nginx.out")  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if dnsmasq.poll() is not None or nginx.poll() is not None:
                break
            text = log.read_text() if log.exists() else ""
            if "proxy on subnet" in text and "TFTP root" in text and (nginx_dir / "nginx.pid").exists():
                return [dnsmasq, nginx]
            time.sleep(0.05)
        for p in (dnsmasq, nginx):
            self.stop(p)
        raise SystemExit(
            f"classic stack did not start:\n{(self.tmp / 'dnsmasq.out').read_text()}\n{log.read_text() if log.exists() else ''}"
            f"\n{(nginx_dir / 'nginx.out').read_text()}"
        )

    def kernel_counters(self, ns: Namespace) -> dict[str, int]:
        """The namespace's UDP and TCP drop counters (/proc/net/snmp and netstat are per namespace)."""
        text = ns.run("cat", "/proc/net/snmp", "/proc/net/netstat").stdout.splitlines()
        out: dict[str, int] = {}
        for names, values in zip(text[::2], text[1::2], strict=False):
            proto, _, keys = names.partition(": ")
            for k, v in zip(keys.split(), values.split(": ", 1)[1].split(), strict=False):
                out[f"{proto}.{k}"] = int(v)
        return out

    def udp_drops_by_port(self) -> dict[str, int]:
        """Datagrams dropped by the server's long-lived UDP sockets (ports 67, 69, 4011), from
        /proc/net/udp's per-socket drop counter (sockets of finished TFTP transfers are gone)."""
        text = self.ns_srv.run("cat", "/proc/net/udp").stdout.splitlines()[1:]
        out: dict[str, int] = {}
        for line in text:
            f = line.split()
            port = int(f[1].split(":")[1], 16)
            if port in (67, 69, 4011) and int(f[-1]):
                out[f"port {port}"] = out.get(f"port {port}", 0) + int(f[-1])
        return out

    # -- one storm ---------------------------------------------------------------------------

    def mix(self, n: int) -> list[str]:
        weights = [float(x) for x in self.args.mix.split(":")]
        total = sum(weights)
        out: list[str] = []
        acc = 0.0
        for i in range(n):  # evenly interleaved, deterministic
            acc_before = acc
            acc = (i + 1) / n * total
            pos = (acc_before + acc) / 2
            edge = 0.0
            for fw, w in zip(FIRMWARES, weights, strict=True):
                edge += w
                if pos <= edge:
                    out.append(fw)
                    break
            else:
                out.append(FIRMWARES[-1])
        return out

    def clients(self, n: int, ramp: float, seed: int = 1, attempts: int = 0, deadline: float = 0.0, mac_offset: int = 0) -> dict:
        self.ensure_addresses(n)
        spec = {
            "iface": self.if_cli,
            "firmware": self.mix(n),
            "ips": [machine_ip(i) for i in range(n)],
            "ramp": ramp,
            "seed": seed,
            "mac_offset": mac_offset,
            "sizes": self.sizes,
            "attempts": attempts or self.args.attempts,
            "deadline": deadline or self.args.deadline,
        }
        path = self.tmp / "spec.json"
        path.write_text(json.dumps(spec))
        argv = self.ns_cli.argv(sys.executable, str(CLIENT), str(path))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=spec["deadline"] + 120)
        if out.returncode:
            raise SystemExit(f"storm client failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout)

    def start_dashboard_reader(self) -> tuple[subprocess.Popen, Path]:
        """One dashboard client: this script's --read-dashboard, in the server's namespace."""
        out = self.tmp / "dashboard.json"
        out.unlink(missing_ok=True)
        proc = self.spawn([sys.executable, str(Path(__file__).resolve()), "--read-dashboard", "http://127.0.0.1:9180",
                           str(out)], self.tmp / "dashboard.log")  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not out.exists():  # it writes once it has the snapshot
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if not out.exists():
            self.stop(proc)
            raise SystemExit(f"the dashboard reader got no snapshot:\n{(self.tmp / 'dashboard.log').read_text()[-2000:]}")
        return proc, out

    def storm(self, stack: str, n: int, dashboard: bool = False) -> dict:
        procs = self.start_netbootd() if stack == "netbootd" else self.start_classic()
        reader: subprocess.Popen | None = None
        try:
            warm = None
            for _ in range(5):  # warm-up: one machine of each kind; also proves the stack answers
                warm = self.clients(3, 0.0, seed=99, attempts=1, deadline=30.0)
                if all(m["ok"] for m in warm["machines"]):
                    break
                time.sleep(1)
            else:
                bad = [m for m in warm["machines"] if not m["ok"]] if warm else []
                raise SystemExit(f"{stack}: warm-up boot failed: {bad}")
            if dashboard:
                reader, reader_out = self.start_dashboard_reader()
                reader_cpu0 = cpu_seconds(reader.pid)
            pids = [p.pid for p in procs]
            pids += [c for p in procs for c in children(p.pid)]  # nginx workers
            for pid in pids:
                reset_peak_rss(pid)
            cpu0 = {pid: cpu_seconds(pid) for pid in pids}
            load0 = os.getloadavg()[0]
            k0 = {ns: self.kernel_counters(ns) for ns in (self.ns_srv, self.ns_cli)}
            t0 = time.monotonic()
            result = self.clients(n, self.args.ramp, seed=self.args.seed)
            result["bench_wall"] = time.monotonic() - t0
            result["server_cpu"] = sum(cpu_seconds(pid) - cpu0[pid] for pid in pids)
            result["server_hwm_mib"] = sum(status_kib(pid, "VmHWM") for pid in pids) / 1024
            result["server_fds"] = sum(open_fds(pid) for pid in pids)
            result["load"] = (load0, os.getloadavg()[0])
            for side, ns in (("server", self.ns_srv), ("clients", self.ns_cli)):
                k1 = self.kernel_counters(ns)
                result[f"{side}_drops"] = {k: k1[k] - k0[ns].get(k, 0) for k in DROP_COUNTERS if k1.get(k, 0) - k0[ns].get(k, 0)}
            result["stack"], result["n"] = stack + ("+ui" if dashboard else ""), n
            result["udp_drops_by_port"] = self.udp_drops_by_port()
            if reader is not None:
                time.sleep(1)  # the last ticks' diffs
                reader_cpu = cpu_seconds(reader.pid) - reader_cpu0
                self.stop(reader)
                result["dashboard"] = {**json.loads(reader_out.read_text()), "reader_cpu": reader_cpu}
        finally:
            if reader is not None:
                self.stop(reader)
            for proc in procs:
                self.stop(proc)
        if stack == "netbootd":
            log = (self.tmp / "netbootd.log").read_text(errors="replace")
            bad = [line for line in log.splitlines() if line.split(" ", 2)[1:2] in (["warn"], ["error"], ["critical"])
                   or line.startswith("Traceback")]  # fmt: skip
            result["server_log_errors"] = bad[:20]
            result["server_log_error_count"] = len(bad)
        return result


# ------------------------------------------------------------------------------ report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(res: dict) -> dict:
    ms = res["machines"]
    ok = [m for m in ms if m["ok"]]
    out = {
        "n": len(ms),
        "failed": len(ms) - len(ok),
        "retries": sum(m["retries"] for m in ms),
        "retransmits": sum(m["retransmits"] for m in ms),
        "total": [m["total"] for m in ok],
        "stages": {s: [m["stages"][s][1] for m in ok if s in m["stages"]] for s in STAGES},
        "failures": {},
        "retried": {},
        "makespan": max((m["start"] + m["total"] for m in ms), default=0.0),
    }
    for m in ms:
        for e in m.get("retry_errors", ()):
            out["retried"][e] = out["retried"].get(e, 0) + 1
        if not m["ok"]:
            key = f"{m['failed_stage']}: {m['error']}"
            out["failures"][key] = out["failures"].get(key, 0) + 1
    return out


def fmt(v: float) -> str:
    return "-" if v != v else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def print_report(results: list[dict], args: argparse.Namespace) -> None:
    sums = [(r, summary(r)) for r in results]
    print()
    print(
        f"boot storm: {args.mix.replace(':', '/')} % BIOS PXE / EFI PXE / UEFI HTTP boot, power-on spread over "
        f"{args.ramp:g} s; kernel {args.kernel_mib:g} MiB + initrd {args.initrd_mib:g} MiB over HTTP; "
        f"{os.cpu_count()} CPUs"
    )
    head = (
        f"{'stack':<9} {'N':>5} {'failed':>6} {'retries':>7} {'rexmit':>6} | {'p50 s':>6} {'p90 s':>6} {'p99 s':>6} "
        f"{'max s':>6} {'all done':>8} | {'srv CPU s':>9} {'srv RSS MiB':>11} {'cli CPU s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r, s in sums:
        t = s["total"]
        print(
            f"{r['stack']:<9} {s['n']:>5} {s['failed']:>6} {s['retries']:>7} {s['retransmits']:>6} | "
            f"{fmt(pct(t, 50)):>6} {fmt(pct(t, 90)):>6} {fmt(pct(t, 99)):>6} {fmt(max(t, default=float('nan'))):>6} "
            f"{fmt(s['makespan']):>8} | {r['server_cpu']:>9.1f} {r['server_hwm_mib']:>11.1f} {r['client_cpu']:>9.1f}"
        )
    print(
        "p50..max: one machine's whole flow (power-on to beacon), booted machines; all done: first power-on to last\n"
        f"machine done; failed: not booted after {args.attempts} tries of a stage; retries: stage tries that failed\n"
        "(each one a failed boot attempt for firmware that does not retry); rexmit: DHCP/TFTP packets resent after\n"
        "a timeout; srv CPU: utime+stime of the server processes during the storm; srv RSS: their VmHWM (peak)"
    )
    print()
    print("per stage, seconds (successful machines; first try to success): p50 / p90 / p99 / max")
    head2 = f"{'stage':<10}" + "".join(f" | {r['stack'] + ' N=' + str(s['n']):^27}" for r, s in sums)
    print(head2)
    print("-" * len(head2))
    for st in STAGES:
        cells = []
        for _, s in sums:
            v = s["stages"][st]
            cells.append(
                f"{fmt(pct(v, 50))}/{fmt(pct(v, 90))}/{fmt(pct(v, 99))}/{fmt(max(v, default=float('nan')))}" if v else "-"
            )
        print(f"{st:<10}" + "".join(f" | {c:^27}" for c in cells))
    # ratios netbootd / classic at the same N
    by = {(r["stack"], summary(r)["n"]): summary(r) for r in results}
    ratio_rows = [(n, by[("netbootd", n)], by[("classic", n)]) for (st, n) in by if st == "netbootd" and ("classic", n) in by]
    for n, nb, cl in ratio_rows:
        print()
        print(f"netbootd / classic at N={n} (< 1: netbootd faster)")
        for label, key in (("whole flow", None), *((st, st) for st in STAGES)):
            a = nb["total"] if key is None else nb["stages"][key]
            b = cl["total"] if key is None else cl["stages"][key]
            if not a or not b:
                continue
            r50 = pct(a, 50) / pct(b, 50) if pct(b, 50) else float("nan")
            r99 = pct(a, 99) / pct(b, 99) if pct(b, 99) else float("nan")
            print(f"  {label:<10} p50 {r50:5.2f}x   p99 {r99:5.2f}x")
        print(f"  {'all done':<10} {nb['makespan'] / cl['makespan']:5.2f}x   failed {nb['failed']} vs {cl['failed']}")
    for r, s in sums:
        if r.get("dashboard"):
            d = r["dashboard"]
            print(f"\n{r['stack']} N={s['n']}: the dashboard client read {d['snapshots']} snapshot(s) and {d['diffs']} "
                  f"diff(s) ({d['rows']} rows, {d['bytes'] / 1e6:.1f} MB, at most {d['max_per_second']} updates in a "
                  f"second); it knew {d['machines']} machines at the end, {d['done']} of them booted; "
                  f"reader CPU {d['reader_cpu']:.1f} s")
            if "ticks" in d:
                print(f"  netbootd's side (netbootd_ui_update_seconds): {d['ticks']} ticks, {d['tick_seconds']:.2f} s of "
                      f"reactor time in all, {d['ticks_over_20ms']} over 20 ms, {d['ticks_over_50ms']} over 50 ms; "
                      f"{d['resyncs']} resync(s)")
        for side in ("server", "clients"):
            if r.get(f"{side}_drops"):
                counters = ", ".join(f"{k} {v}" for k, v in r[f"{side}_drops"].items())
                print(f"\n{r['stack']} N={s['n']}: kernel counters in the {side}' namespace: {counters}")
                if side == "server" and r.get("udp_drops_by_port"):
                    print(f"  UDP drops by socket: {r['udp_drops_by_port']}")
        if s["retried"]:
            print(f"\n{r['stack']} N={s['n']}: retried stages by error:")
            for k, v in sorted(s["retried"].items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {v:>5}  {k}")
        if s["failures"]:
            print(f"\n{r['stack']} N={s['n']}: failed machines by stage and error:")
            for k, v in sorted(s["failures"].items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {v:>5}  {k}")
        if r.get("server_log_errors"):
            print(f"\n{r['stack']} N={s['n']}: {r['server_log_error_count']} warn/error lines in its log; the first:")
            for line in r["server_log_errors"][:8]:
                print("  " + line[:200])


def read_dashboard(url: str, out: str) -> None:
    """The dashboard client: read /api/events until SIGTERM, parse every update as the fleet page
    does (rows by MAC), then write what it read to OUT (first once the snapshot is in). Updates a
    second are counted by the server's `now` in each (TCP may hand over several at once)."""
    import urllib.parse

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n".encode())
    sock.settimeout(0.2)
    stats = {"snapshots": 0, "diffs": 0, "health": 0, "rows": 0, "bytes": 0, "max_per_second": 0}
    rows: dict[str, dict] = {}
    buf = pending = b""
    per_second: dict[int, int] = {}
    head_done = False

    def write() -> None:
        stats["machines"] = len(rows)
        stats["done"] = sum(1 for r in rows.values() if r.get("state") == "done")
        stats["max_per_second"] = max(per_second.values(), default=0)
        Path(out).write_text(json.dumps(stats))

    while not stop:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except InterruptedError:
            break
        if not chunk:
            break
        stats["bytes"] += len(chunk)
        buf += chunk
        if not head_done:
            if b"\r\n\r\n" not in buf:
                continue
            buf = buf.split(b"\r\n\r\n", 1)[1]
            head_done = True
        # chunked encoding: "<hex>\r\n<data>\r\n"; events end with a blank line
        while True:
            size_end = buf.find(b"\r\n")
            if size_end < 0:
                break
            size = int(buf[:size_end] or b"0", 16)
            if len(buf) < size_end + 2 + size + 2:
                break
            data, buf = buf[size_end + 2: size_end + 2 + size], buf[size_end + 2 + size + 2:]
            *events, pending = (pending + data).split(b"\n\n")
            for event in events:
                lines = event.decode().split("\n")
                name = next((line[7:] for line in lines if line.startswith("event: ")), "")
                body = next((line[6:] for line in lines if line.startswith("data: ")), "")
                if not name:
                    continue
                doc = json.loads(body)
                second = int(doc.get("now") or time.time())  # when the server sent it (not when read)
                per_second[second] = per_second.get(second, 0) + 1
                if name == "snapshot":
                    stats["snapshots"] += 1
                    rows = {r["mac"]: r for r in doc["machines"]}
                    stats["rows"] += len(doc["machines"])
                    write()
                elif name == "diff":
                    stats["diffs"] += 1
                    stats["rows"] += len(doc["rows"])
                    for r in doc["rows"]:
                        rows[r["mac"]] = r
                    for mac in doc["removed"]:
                        rows.pop(mac, None)
                else:
                    stats[name] = stats.get(name, 0) + 1
    stats.update(dashboard_cost(url))
    write()


def dashboard_cost(url: str) -> dict:
    """What netbootd says the live updates cost it (netbootd_ui_* in /metrics)."""
    import re
    import urllib.request

    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    except OSError as exc:
        return {"metrics_error": str(exc)}
    values = {}
    for name in ("netbootd_ui_update_seconds_sum", "netbootd_ui_update_seconds_count", "netbootd_ui_resyncs_total"):
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        values[name] = float(m.group(1)) if m else 0.0
    buckets = {float(le): float(v) for le, v in re.findall(r'^netbootd_ui_update_seconds_bucket\{le="([0-9.e+-]+)"\} (\S+)$',
                                                            text, re.MULTILINE)}
    count = values["netbootd_ui_update_seconds_count"]
    return {"ticks": int(count), "tick_seconds": values["netbootd_ui_update_seconds_sum"],
            "ticks_over_20ms": int(count - buckets.get(0.02, count)), "ticks_over_50ms": int(count - buckets.get(0.05, count)),
            "resyncs": int(values["netbootd_ui_resyncs_total"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--machines", type=int, default=500, help="machines in the storm (default 500)")
    parser.add_argument("--mix", default="40:40:20", help="BIOS:EFI:HTTP-boot weights (default 40:40:20)")
    parser.add_argument("--ramp", type=float, default=2.0, help="power-on spread, seconds (default 2)")
    parser.add_argument("--kernel-mib", type=float, default=8.0)
    parser.add_argument("--initrd-mib", type=float, default=32.0)
    parser.add_argument("--attempts", type=int, default=3, help="tries per stage before a machine fails (default 3)")
    parser.add_argument("--deadline", type=float, default=600.0, help="a storm's time limit, seconds (default 600)")
    parser.add_argument("--only", choices=("netbootd", "classic"), help="run one stack only")
    parser.add_argument("--find-limit", default="", help="then storms of these N, each stack until it fails: 1000,2000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ipxe-dir", type=Path, default=IPXE_DIR)
    parser.add_argument("--server-nofile", type=int, default=0,
                        help="netbootd's open-file limit (e.g. 1024, systemd's default soft limit); 0: inherited")  # fmt: skip
    parser.add_argument("--netbootd-setting", action="append", default=[],
                        help='extra netbootd.toml line, e.g. "[tftp]" then "max_transfers = 1024"')  # fmt: skip
    parser.add_argument("--dnsmasq-tftp-max", type=int, default=50, help="dnsmasq --tftp-max (its default: 50)")
    parser.add_argument("--nginx-workers", default="auto")
    parser.add_argument("--profile", action="store_true", help="cProfile netbootd; print the top functions")
    parser.add_argument("--profile-out", type=Path, help="with --profile: keep the pstats file here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep-tmp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--netbootd-pythonpath", type=Path, help="run the netbootd package found here (try a patch)")
    parser.add_argument("--dashboard", choices=("off", "on", "both"), default="off",
                        help="one dashboard client (SSE reader) attached to netbootd's storms: on, or both "
                             "(without, then with, same run); default off")
    parser.add_argument("--dashboard-first", action="store_true",
                        help="with --dashboard both: the storm with the dashboard first (the second storm of a run "
                             "meets the first's leftovers: run both orders)")
    parser.add_argument("--read-dashboard", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_dashboard:
        read_dashboard(*args.read_dashboard)
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, ports 67/69/80/4011 inside them)")
    for tool in ("ip", "dnsmasq", "nginx"):
        if not shutil.which(tool) and not (tool != "ip" and args.only == "netbootd"):
            raise SystemExit(f"needs {tool}")
    bench = Storm(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: list[dict] = []
    try:
        bench.up()
        bench.make_files()
        load = os.getloadavg()
        print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start", flush=True)
        stacks = [args.only] if args.only else ["classic", "netbootd"]
        runs = [(stack, False) for stack in stacks]
        if args.dashboard != "off" and "netbootd" in stacks:
            with_ui = ("netbootd", True)
            runs = [run for run in runs if args.dashboard == "both" or run[0] != "netbootd"] + [with_ui]
            if args.dashboard_first:
                runs.sort(key=lambda run: not run[1])
        for stack, dashboard in runs:
            r = bench.storm(stack, args.machines, dashboard)
            s = summary(r)
            print(f"# {r['stack']} N={args.machines}: {s['n'] - s['failed']} booted, {s['failed']} failed, "
                  f"all done in {s['makespan']:.1f} s", flush=True)  # fmt: skip
            results.append(r)
        # each stack goes on to the next N until it fails a boot
        climbing = [st for st in stacks if not summary(next(r for r in results if r["stack"].startswith(st)))["failed"]]
        for n in [int(x) for x in args.find_limit.split(",") if x]:
            for stack in list(climbing):
                r = bench.storm(stack, n)
                s = summary(r)
                print(f"# {stack} N={n}: {s['n'] - s['failed']} booted, {s['failed']} failed, "
                      f"all done in {s['makespan']:.1f} s", flush=True)  # fmt: skip
                results.append(r)
                if s["failed"]:
                    climbing.remove(stack)
            if not climbing:
                break
        print_report(results, args)
        if args.json:
            args.json.write_text(json.dumps(results))
        if args.profile:
            import pstats

            pstats.Stats(str(bench.tmp / "netbootd.prof")).sort_stats("tottime").print_stats(25)
            if args.profile_out:
                shutil.copyfile(bench.tmp / "netbootd.prof", args.profile_out)
        load = os.getloadavg()
        print(f"# load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")
    finally:
        bench.down()


if __name__ == "__main__":
    main()
