"""Image proxy throughput: one large layer (1 GiB by default) four ways, same client (curl).

    python bench/image_proxy.py [--size-mib 1024] [--runs 3] [--profile]

1. direct: curl GET of the blob from the registry (Debian's docker-registry on loopback);
2. cold:   GET /image through netbootd with an empty cache (one upstream fetch, verified,
           written to the cache while streaming);
3. warm:   GET /image again (served from the cache file);
4. files:  GET /files/<same bytes> (netbootd's static file route) as the local-file baseline.

Everything runs on loopback; the blob sits in the page cache for every row. Cold runs restart
netbootd on an empty cache each time. Prints MB/s (best of --runs), the ratios the design
aims for (cold >= 0.8x direct, warm >= 0.9x files) and netbootd's peak RSS growth (VmHWM at
the end minus VmRSS after start-up; aim < 64 MiB). Starts a registry and netbootd, stops them
by PID and deletes its temp directory on exit. `--profile` runs one cold and one warm transfer
under cProfile and prints netbootd's top functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import Daemon  # noqa: E402
from tests.images import harness as h  # noqa: E402


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def curl(url: str) -> tuple[float, int]:
    """(MB/s, bytes) of one GET to /dev/null."""
    out = subprocess.run(["curl", "-sfS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True, timeout=600)
    size, seconds = out.stdout.split()
    return int(size) / float(seconds) / 1e6, int(size)


def make_blob(path: Path, size: int) -> None:
    chunk = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(chunk), size - written)
            f.write(chunk[:n])
            written += n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if h.REGISTRY_BIN is None or shutil.which("curl") is None:
        print("needs docker-registry and curl", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="netbootd-bench-images-"))
    registry = None
    daemon = None
    try:
        size = args.size_mib * 1024 * 1024
        print(f"making a {args.size_mib} MiB layer and pushing it ...", flush=True)
        blob_path = tmp / "layer.bin"
        make_blob(blob_path, size)
        registry = h.Registry(tmp / "registry").start()
        pusher = h.Pusher(registry.url)
        pusher.image("bench/big", "v1", [(h.SQUASHFS, blob_path)])
        digest, _ = pusher.blob("bench/big", blob_path)
        pusher.close()
        direct_url = f"{registry.url}/v2/bench/big/blobs/{digest}"

        settings = (f'[registry]\nallowed = ["{registry.host}"]\ninsecure = ["{registry.host}"]\n'
                    f"cache_max_bytes = {4 * size}\n")
        daemon = Daemon(tmp / "netbootd", extra_settings=settings)
        os.link(blob_path, daemon.files / "layer.bin") if blob_path.stat().st_dev == daemon.files.stat().st_dev \
            else shutil.copy(blob_path, daemon.files / "layer.bin")
        image_url = (f"{daemon.url}/image?imageName={registry.host}/bench/big&version=v1"
                     f"&layerName=application/vnd.ironcore.image.squashfs")
        files_url = f"{daemon.url}/files/layer.bin"
        cache_dir = daemon.root / "cache"

        extra_args: tuple[str, ...] = ()
        results: dict[str, list[float]] = {"direct": [], "cold": [], "warm": [], "files": []}
        rss_growth: list[int] = []

        def start_daemon(empty_cache: bool) -> int:
            if empty_cache and cache_dir.exists():
                shutil.rmtree(cache_dir)
            daemon.start(*extra_args)
            assert daemon.proc is not None
            subprocess.run(["curl", "-sfS", "-o", "/dev/null", "-I", image_url], check=True)  # resolve the manifest
            return proc_status(daemon.proc.pid, "VmRSS")

        for _ in range(2):  # warm the page cache for the registry's file and ours
            curl(direct_url)
            subprocess.run(["cat", str(blob_path)], stdout=subprocess.DEVNULL, check=True)

        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} ...", flush=True)
            results["direct"].append(curl(direct_url)[0])
            base_rss = start_daemon(empty_cache=True)
            speed, got = curl(image_url)
            assert got == size, f"cold transfer returned {got} bytes"
            results["cold"].append(speed)
            results["warm"].append(curl(image_url)[0])
            results["files"].append(curl(files_url)[0])
            assert daemon.proc is not None
            rss_growth.append(proc_status(daemon.proc.pid, "VmHWM") - base_rss)
            daemon.stop()

        best = {k: max(v) for k, v in results.items()}
        print()
        print(f"layer {args.size_mib} MiB, best of {args.runs} (all runs: MB/s)")
        print(f"{'path':<8} {'MB/s':>8}   {'ratio':<22} runs")
        print(f"{'direct':<8} {best['direct']:8.0f}   {'':<22} {' '.join(f'{x:.0f}' for x in results['direct'])}")
        ratio = f"{best['cold'] / best['direct']:.2f}x direct (goal 0.8)"
        print(f"{'cold':<8} {best['cold']:8.0f}   {ratio:<22} {' '.join(f'{x:.0f}' for x in results['cold'])}")
        ratio = f"{best['warm'] / best['files']:.2f}x files (goal 0.9)"
        print(f"{'warm':<8} {best['warm']:8.0f}   {ratio:<22} {' '.join(f'{x:.0f}' for x in results['warm'])}")
        print(f"{'files':<8} {best['files']:8.0f}   {'':<22} {' '.join(f'{x:.0f}' for x in results['files'])}")
        print(f"netbootd peak RSS growth: {max(rss_growth) / 2**20:.1f} MiB (goal < 64; VmHWM - VmRSS after start, "
              f"per run: {' '.join(f'{x / 2**20:.1f}' for x in rss_growth)})")

        if args.profile:
            prof = tmp / "netbootd.prof"
            daemon.proc = None
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            profiled = Daemon.__new__(Daemon)
            profiled.__dict__.update(daemon.__dict__)
            import signal

            cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "netbootd", "serve", "--config", str(daemon.config)]
            log = open(daemon.log_path, "wb")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=daemon.root)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    subprocess.run(["curl", "-sf", "-o", "/dev/null", daemon.url + "/healthz"], check=True)
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            print(f"profiled cold {curl(image_url)[0]:.0f} MB/s, warm {curl(image_url)[0]:.0f} MB/s")
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            log.close()
            import pstats

            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
        return 0
    finally:
        if daemon is not None:
            daemon.stop()
        if registry is not None:
            registry.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
