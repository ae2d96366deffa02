"""Soak: boot storms one after another against ONE long-running netbootd; are its RSS and fds flat?

    sudo python bench/soak.py                    # 10 minutes of storms of 200 machines
    sudo python bench/soak.py --minutes 3 -n 300 --interval 2

The namespaces, files, generated config and simulated machines are bench/storm.py's (see there).
netbootd is started once; storms of -n machines (same mix and sizes as storm.py) follow each other
until --minutes are used up (the last one is cut at the limit). The same fleet reboots each time
(same MACs, new SMBIOS UUIDs), or with --new-macs a new set of MACs every storm (per-machine state
must stay bounded too). A sampler reads /proc/<pid>/status (VmRSS) and /proc/<pid>/fd every
--interval seconds throughout; after each storm, once the last transfers are over, an "idle" sample
is taken too (under load the numbers move with the number of transfers in flight; idle ones must
come back to the same level).

Printed: one line per storm, the samples' start / middle / end, the least-squares slope of RSS and
fds over time (all samples, and the idle samples after a warm-up of the first quarter of the
storms, which fills caches and the boot timeline's bounded per-machine history), and a verdict:
flat when the median idle RSS of the last third of those storms is less than max(2 MiB, 2 %) above
that of the first third, and the median idle fds are within 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import storm  # bench/storm.py, beside this file


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.t0 = pid, interval, t0
        self.samples: list[tuple[float, float, int, float]] = []  # t, RSS MiB, fds, CPU s
        self.stopped = threading.Event()

    def sample(self) -> tuple[float, float, int, float]:
        return (
            time.monotonic() - self.t0,
            storm.status_kib(self.pid, "VmRSS") / 1024,
            storm.open_fds(self.pid),
            storm.cpu_seconds(self.pid),
        )

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.samples.append(self.sample())


def settle(pid: int, baseline_fds: int, limit: float = 15.0) -> None:
    """Wait (bounded) until the fds are back at the pre-storm count, or stop changing."""
    deadline = time.monotonic() + limit
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        fds = storm.open_fds(pid)
        if fds <= baseline_fds:
            return
        if fds != last:
            last, stable_since = fds, time.monotonic()
        elif time.monotonic() - stable_since > 3:
            return
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("-n", "--machines", type=int, default=200, help="machines per storm (default 200)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples (default 3)")
    parser.add_argument("--mix", default="40:40:20")
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--kernel-mib", type=float, default=8.0)
    parser.add_argument("--initrd-mib", type=float, default=32.0)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--new-macs", action="store_true", help="every storm a new set of MACs (default: the same fleet)")
    parser.add_argument("--ipxe-dir", type=Path, default=storm.IPXE_DIR)
    parser.add_argument("--netbootd-setting", action="append", default=[])
    parser.add_argument("--netbootd-pythonpath", type=Path)
    parser.add_argument("--server-nofile", type=int, default=0)
    args = parser.parse_args()
    # what storm.Storm reads besides the above
    args.profile, args.keep_tmp, args.deadline, args.dnsmasq_tftp_max, args.nginx_workers = False, False, 600.0, 50, "1"
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    bench = storm.Storm(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        bench.up()
        bench.make_files()
        bench.ensure_addresses(args.machines)
        proc = bench.start_netbootd()[0]
        pid = proc.pid
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        sampler = Sampler(pid, args.interval, t0)
        first = sampler.sample()
        sampler.samples.append(first)
        sampler.start()
        print(
            f"# soak: {args.minutes:g} min of storms of {args.machines} machines ({args.mix} BIOS:EFI:HTTP, kernel "
            f"{args.kernel_mib:g} MiB + initrd {args.initrd_mib:g} MiB) against netbootd pid {pid}; "
            f"sampled every {args.interval:g} s",
            flush=True,
        )
        print(f"{'storm':>5} {'t s':>6} {'booted':>6} {'failed':>6} {'retries':>7} {'all done s':>10} {'CPU s':>7} "
              f"{'load':>5} | {'idle RSS MiB':>12} {'idle fds':>8}")  # fmt: skip
        idle: list[tuple[float, float, int, float]] = []
        storms = failed = retries = 0
        last_wall, cpu_before = 0.0, first[3]
        while True:
            remaining = end - time.monotonic()
            if remaining < (1.3 * last_wall + 5 if storms else 5):
                break  # no time left for a whole storm: a cut storm would count as failed boots
            offset = storms * args.machines if args.new_macs else 0
            t_start = time.monotonic()
            res = bench.clients(args.machines, args.ramp, seed=storms + 1, deadline=remaining, mac_offset=offset)
            last_wall = time.monotonic() - t_start
            s = storm.summary(res)
            settle(pid, first[2])
            snap = sampler.sample()
            idle.append(snap)
            storms += 1
            failed += s["failed"]
            retries += s["retries"]
            print(f"{storms:>5} {snap[0]:>6.0f} {s['n'] - s['failed']:>6} {s['failed']:>6} {s['retries']:>7} "
                  f"{s['makespan']:>10.1f} {snap[3] - cpu_before:>7.1f} {os.getloadavg()[0]:>5.2f} | "
                  f"{snap[1]:>12.1f} {snap[2]:>8}", flush=True)  # fmt: skip
            cpu_before = snap[3]
            if proc.poll() is not None:
                print(f"netbootd exited with {proc.returncode}")
                break
        sampler.stopped.set()
        sampler.join()
        samples = sampler.samples
        print()
        print(f"samples ({len(samples)}, every {args.interval:g} s, under load and between storms):")
        print(f"  {'':<7} {'t s':>6} {'RSS MiB':>8} {'fds':>5} {'CPU s':>7}")
        for label, smp in (("start", samples[0]), ("middle", samples[len(samples) // 2]), ("end", samples[-1])):
            print(f"  {label:<7} {smp[0]:>6.0f} {smp[1]:>8.1f} {smp[2]:>5} {smp[3]:>7.1f}")
        rss_all = slope([(t / 60, r) for t, r, _, _ in samples])
        fds_all = slope([(t / 60, f) for t, _, f, _ in samples])
        print(f"  slope, all samples: RSS {rss_all:+.2f} MiB/min, fds {fds_all:+.2f} /min")
        # After a warm-up (the first quarter of the storms, at least one: caches, the boot timeline's
        # per-machine history filling up), the idle samples' first and last thirds are compared by
        # their medians (one idle sample may catch a garbage collection or a lingering transfer).
        warm = idle[max(1, len(idle) // 4) :]
        rss_idle = slope([(t / 60, r) for t, r, _, _ in warm])
        fds_idle = slope([(t / 60, f) for t, _, f, _ in warm])
        print(f"  slope, idle samples after the warm-up ({len(idle) - len(warm)} storms): "
              f"RSS {rss_idle:+.2f} MiB/min, fds {fds_idle:+.2f} /min")  # fmt: skip
        peak = max(samples, key=lambda x: x[1])
        print(f"  peak RSS {peak[1]:.1f} MiB at {peak[0]:.0f} s; VmHWM {storm.status_kib(pid, 'VmHWM') / 1024:.1f} MiB; "
              f"max fds {max(x[2] for x in samples)}")  # fmt: skip
        print(f"  {storms} storms, {storms * args.machines} boots, {failed} failed, {retries} stage retries; "
              f"netbootd CPU {samples[-1][3] - samples[0][3]:.0f} s")  # fmt: skip
        if len(warm) >= 3:
            third = max(1, len(warm) // 3)
            a_rss, b_rss = statistics.median(x[1] for x in warm[:third]), statistics.median(x[1] for x in warm[-third:])
            a_fds, b_fds = statistics.median(x[2] for x in warm[:third]), statistics.median(x[2] for x in warm[-third:])
            flat_rss = b_rss - a_rss < max(2.0, 0.02 * a_rss)
            flat_fds = abs(b_fds - a_fds) <= 2
            print(
                f"verdict: RSS {'flat' if flat_rss else 'NOT flat'} (idle median {a_rss:.1f} -> {b_rss:.1f} MiB, "
                f"{b_rss - a_rss:+.1f}); fds {'flat' if flat_fds else 'NOT flat'} (idle median {a_fds:g} -> {b_fds:g})"
            )
        else:
            print("verdict: too few storms to say (run longer)")
    finally:
        bench.down()


if __name__ == "__main__":
    main()
