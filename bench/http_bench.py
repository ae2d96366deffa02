"""HTTP: requests/s and server CPU per request, netbootd vs nginx, same run, same files.

(Not bench/http.py: a module named http.py in this directory would shadow the standard library's
`http` for every benchmark script here.)

    python bench/http_bench.py                 # the table (a few minutes)
    python bench/http_bench.py --quick         # fewer requests
    python bench/http_bench.py --netbootd-pythonpath /tmp/old-checkout   # another netbootd (before/after)

Routes: the iPXE script (netbootd renders it per request; nginx serves the same bytes as a static
file), a 100 KB file and a 64 MiB file; each with a new connection per request and with keep-alive.
Client: ApacheBench (`ab`, Debian's apache2-utils), 20 concurrent (4 for 64 MiB), on loopback.
Server CPU: utime+stime of the server's processes (/proc/<pid>/stat) over the run, per request.

What the table measures, and not: netbootd runs with http.rate_limit = 0 (every request comes from
127.0.0.1, which the per-client limit of 50/s would otherwise refuse) and its defaults otherwise;
nginx runs with sendfile on, access log on (as netbootd logs), and `worker_processes` as given
(--nginx-workers, default 1: the comparison the project's goal names; `auto` uses every core).
Both share the host's cores with ab.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAC = "52-54-00-00-00-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def ab(url: str, n: int, c: int, keepalive: bool) -> float:
    argv = ["ab", "-q", "-n", str(n), "-c", str(c), *(["-k"] if keepalive else []), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    m = re.search(r"Requests per second:\s+([\d.]+)", out.stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", out.stdout)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"ab failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    # ab counts a response whose length differs from the first as "failed (Length)": the script
    # carries a signed URL whose expiry can gain a digit; only connect/receive/exception failures count
    kinds = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", out.stdout)
    hard = sum(int(x) for x in kinds.groups()) if kinds else (int(failed.group(1)) if failed else 0)
    if hard or non2xx:
        raise RuntimeError(f"{url}: failed or non-2xx responses:\n{out.stdout[-1500:]}")
    return float(m.group(1))


class Server:
    def __init__(self, name: str, pids_of, url: str) -> None:
        self.name, self.pids_of, self.url = name, pids_of, url


def start_netbootd(root: Path, pythonpath: str | None, sendfile_threads: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # no dashboard: its port would clash with a netbootd running here (a checkout older than it has no [ui])
    ui_off = '[ui]\n        listen = ""' if (Path(pythonpath or REPO) / "netbootd" / "ui").is_dir() else ""
    (root / "netbootd.toml").write_text(textwrap.dedent(f"""
        machines_dir = "machines"
        files_root = "files"
        state_dir = "state"
        cache_dir = "cache"
        [http]
        port = {port}
        listen = "127.0.0.1"
        rate_limit = 0
        {f'sendfile_threads = "{sendfile_threads}"' if sendfile_threads is not None else ""}
        [dhcp]
        enabled = false
        [tftp]
        enabled = false
        {ui_off}
        """))
    env = {**os.environ}
    # -P: no current directory on sys.path, or `-m netbootd` run from a checkout imports that
    # checkout's package whatever PYTHONPATH says (a before/after comparison of one version)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen([sys.executable, "-P", "-m", "netbootd", "serve", "--config", str(root / "netbootd.toml")],
                            stdout=open(root / "netbootd.log", "wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("netbootd did not start: " + (root / "netbootd.log").read_text())


def start_nginx(root: Path, workers: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        daemon off;
        worker_processes {workers};
        pid {root}/nginx.pid;
        error_log {root}/nginx-error.log;
        events {{ worker_connections 4096; }}
        http {{
            access_log {root}/nginx-access.log;
            sendfile on;
            keepalive_requests 100000;
            default_type application/octet-stream;
            server {{
                listen 127.0.0.1:{port};
                root {root}/files;
                location = /ipxe {{ default_type text/plain; alias {root}/script.ipxe; }}
            }}
        }}
        """))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer requests per row")
    p.add_argument("--nginx-workers", default="1", help="nginx worker_processes (1, or auto)")
    p.add_argument("--netbootd-pythonpath", help="run another netbootd checkout (PYTHONPATH)")
    p.add_argument("--sendfile-threads", help='netbootd http.sendfile_threads ("auto", "0" = none; default: its default)')
    args = p.parse_args()
    if shutil.which("ab") is None or shutil.which("nginx") is None:
        print("needs ab (apache2-utils) and nginx (nginx-light)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="netbootd-bench-http-"))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user
    files = root / "files"
    (root / "machines").mkdir(parents=True)
    files.mkdir()
    (files / "100k.bin").write_bytes(os.urandom(100 * 1024))
    with open(files / "64m.bin", "wb") as f:
        f.write(os.urandom(64 * 1024 * 1024))
    (files / "vmlinuz").write_bytes(b"k" * 1000)
    (root / "machines" / f"{MAC}.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 ignition.config.url={{ ignition_url }}"\n')
    scale = 0.2 if args.quick else 1.0
    rows = [  # (label, netbootd path, nginx path, requests, concurrency)
        ("iPXE script", f"/ipxe?mac={MAC}&arch=efi64", "/ipxe", 5000, 20),
        ("100 KB file", "/files/100k.bin", "/100k.bin", 5000, 20),
        ("64 MiB file", "/files/64m.bin", "/64m.bin", 60, 4),
    ]
    procs = []
    try:
        nb, nb_url = start_netbootd(root, args.netbootd_pythonpath, args.sendfile_threads)
        procs.append(nb)
        # nginx serves the very script netbootd renders
        subprocess.run(["curl", "-s", "-o", str(root / "script.ipxe"), nb_url + rows[0][1]], check=True)
        ng, ng_url = start_nginx(root, args.nginx_workers)
        procs.append(ng)
        servers = [Server("netbootd", lambda: [nb.pid], nb_url), Server("nginx", lambda: [ng.pid, *children(ng.pid)], ng_url)]
        results: dict[tuple[str, str, str], tuple[float, float]] = {}
        for label, nb_path, ng_path, n, c in rows:
            n = max(int(n * scale), 10)
            for keepalive in (False, True):
                for server in servers:
                    path = nb_path if server.name == "netbootd" else ng_path
                    ab(server.url + path, max(n // 10, 5), c, keepalive)  # warm-up
                    before = cpu_seconds(server.pids_of())
                    rate = ab(server.url + path, n, c, keepalive)
                    cpu = cpu_seconds(server.pids_of()) - before
                    results[(label, "keep-alive" if keepalive else "new conn", server.name)] = (rate, cpu / n * 1e6)
        print(f"\nHTTP on loopback, ab -c 20 (64 MiB: -c 4); netbootd rate_limit 0, sendfile_threads "
              f"{args.sendfile_threads or 'default'}; nginx worker_processes "
              f"{args.nginx_workers}, sendfile on; load average before: {os.getloadavg()[0]:.2f}\n")
        print("| route | connection | netbootd req/s | nginx req/s | ratio | netbootd CPU µs/req | nginx CPU µs/req |")
        print("|---|---|---|---|---|---|---|")
        for label, *_ in rows:
            for conn in ("new conn", "keep-alive"):
                nb_rate, nb_cpu = results[(label, conn, "netbootd")]
                ng_rate, ng_cpu = results[(label, conn, "nginx")]
                print(f"| {label} | {conn} | {nb_rate:,.0f} | {ng_rate:,.0f} | {nb_rate / ng_rate:.2f}x "
                      f"| {nb_cpu:,.0f} | {ng_cpu:,.0f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
