"""Helpers for tests against a running daemon: its metrics, its open files, its [http] settings."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metric(daemon, name: str, **labels: str) -> float:
    """One sample from the daemon's /metrics (0.0 when absent). Retries while rate-limited."""
    for _ in range(100):
        r = httpx.get(daemon.url + "/metrics", timeout=10)
        if r.status_code != 429:
            break
        time.sleep(0.1)
    r.raise_for_status()
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def http_settings(daemon, text: str) -> None:
    """Add keys to the daemon's [http] table (before start)."""
    daemon.config.write_text(daemon.config.read_text().replace("[http]\n", "[http]\n" + text.strip() + "\n", 1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_http(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


def loopback_client(source: str) -> httpx.Client:
    """An HTTP client whose connections come from `source` (any 127.x.y.z): one simulated machine."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=20)


def machine_address(n: int) -> str:
    """Simulated machine n's own loopback address (127.0.x.y): on a real segment each has its own."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def boot_machines(count: int, boot: Callable[[int, str], list[str]]) -> list[str]:
    """`boot(n, address)` for `count` machines at once, a thread each; what they report as failed,
    and any exception they raise (which a thread would otherwise lose), in one list."""
    failures: list[str] = []

    def run(n: int) -> None:
        try:
            failures.extend(boot(n, machine_address(n)))
        except Exception as exc:
            failures.append(f"{n}: {exc!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures
