"""Shared fixtures: a netbootd daemon started as a real subprocess on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`python -m netbootd serve` on loopback ports, with a config directory the test writes."""

    def __init__(
        self, root: Path, extra_settings: str = "", top_settings: str = "", dhcp: bool = False, tftp: bool = False
    ) -> None:
        self.root = root
        self.machines = root / "machines"
        self.files = root / "files"
        self.machines.mkdir(parents=True, exist_ok=True)
        (self.machines / "profiles").mkdir(exist_ok=True)
        self.files.mkdir(exist_ok=True)
        self.http_port = free_port()
        self.tftp_port = free_port(socket.SOCK_DGRAM)
        self.dhcp_port = free_port(socket.SOCK_DGRAM)
        self.proxy_port = free_port(socket.SOCK_DGRAM)
        self.dhcp6_port = free_port(socket.SOCK_DGRAM)
        self.ui_port = free_port()  # each daemon its own dashboard port: tests run several at once
        self.config = root / "netbootd.toml"
        self.config.write_text(
            top_settings
            + textwrap.dedent(
                f"""
                machines_dir = "machines"
                files_root = "files"
                state_dir = "state"
                cache_dir = "cache"
                [http]
                port = {self.http_port}
                listen = "127.0.0.1"
                [ui]
                listen = "127.0.0.1:{self.ui_port}"
                [dhcp]
                enabled = {str(dhcp).lower()}
                port = {self.dhcp_port}
                proxy_port = {self.proxy_port}
                port6 = {self.dhcp6_port}
                [tftp]
                enabled = {str(tftp).lower()}
                port = {self.tftp_port}
                listen = "127.0.0.1"
                """
            )
            + extra_settings
        )
        self.log_path = root / "netbootd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    run_as: tuple[str, ...] = ()  # a command prefix, e.g. setpriv to drop root (tests/faults)

    def start(self, *args: str, env: dict[str, str] | None = None) -> Daemon:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.run_as, sys.executable, "-m", "netbootd", "serve", "--config", str(self.config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netbootd exited {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(self.url + "/healthz", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"netbootd did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[Daemon] = []

    def make(**kw) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def wait_for(predicate, timeout: float = 3.0, interval: float = 0.02):
    """Poll until predicate() is truthy; returns its value or raises with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
