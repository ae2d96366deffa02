"""Shared fixtures: a netbootd daemon started as a real subprocess on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTS = REPO / "tests"


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
        """GET on the boot network's HTTP port (what machines reach)."""
        return httpx.get(self.url + path, timeout=10, **kw)

    def ui_get(self, path: str, **kw) -> httpx.Response:
        """GET on the management listener (ui.listen): the timeline, /healthz, /api/settings."""
        return httpx.get(self.ui_url + path, timeout=10, **kw)

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


# ---------------------------------------------------------------------------------- markers
#
# A test that needs a real resource carries its marker (registered in pyproject.toml, where each is
# described): `pytest -m "not integration"`, `-m "not root"` (as an ordinary user) and so on select
# what can run. Where the need can be read from a test's place or fixtures the marker is added here;
# other tests carry it in `pytestmark` (or on the test). A marker implies the ones it needs
# (IMPLIES). While a test runs, every process the test process starts is checked against the
# markers (`resource_markers`): a test that starts QEMU, docker-registry, podman, Chromium, or
# uses namespaces, mounts or setpriv without its marker fails, naming the marker to add.

DIRECTORY_MARKERS = {"integration": ("integration",)}  # tests/<directory>: markers of every test in it
RESOURCE_FIXTURES = {  # a fixture (anywhere in a test's fixture closure) -> the markers it needs
    "assets": ("integration",),
    "postgres_server": ("postgres",),  # tests/state/conftest.py: a private PostgreSQL server
    "lab": ("integration",),
    "lab_separate_host": ("integration",),
    "lab_shared_address": ("integration",),
    "lab6": ("integration",),
    "lab_pair": ("integration",),
    "netboot_lab": ("integration",),
    "browser": ("browser",),
    "lab_browser": ("browser", "integration"),
    "registry": ("registry",),  # tests/images: the shared registry; tests/integration: LabRegistry
    "basic_registry": ("registry",),
    "token_realm": ("registry",),
    "fresh_registry": ("registry",),
    "image_run": ("container",),
    "mounted_image": ("container",),
}
# postgres: Debian's server runs as its own user (setpriv), which needs root
IMPLIES = {"integration": ("netns",), "netns": ("root",), "container": ("root",), "postgres": ("root",)}
# xdist (--dist loadgroup): tests of one group run on one worker, one after the other
XDIST_GROUPS = {
    # one `podman image mount` of the image at a time, and test_container.py's module-scoped mount made once
    "container": "container",
}
# Longest first, so that the workers finish together: QEMU boots, then the other tests that start
# real programs, then those that start a netbootd (daemon_factory), then the rest, which are short
# (each group in collection order).
ORDER = ("integration", "browser", "netns", "registry", "container")


def markers_needed(argv: Sequence[str]) -> set[str]:
    """The markers a test must carry to start the process `argv` (every word is looked at: the
    labs start their programs through `ip netns exec NS ...`)."""
    words = [str(w) for w in argv]
    names = [os.path.basename(w) for w in words]
    needed: set[str] = set()
    if names and names[0] == "ip" and ("netns" in words[1:3] or "-n" in words[1:3]):
        needed.add("netns")
    for name in names:
        if name.startswith("qemu-system-"):
            needed.add("integration")
        elif name == "docker-registry":
            needed.add("registry")
        elif name == "podman":
            needed.add("container")
        elif name == "chromium":
            needed.add("browser")
    # the program itself (also behind `ip netns exec NS`): these names are common words as arguments
    programs = {names[0], names[4]} if names[:3] == ["ip", "netns", "exec"] and len(names) > 4 else set(names[:1])
    if programs & {"setpriv", "mount", "umount", "unshare", "chroot", "nsenter"}:
        needed.add("root")
    if any("/playwright/driver/" in w for w in words):  # Playwright's driver, which starts Chromium
        needed.add("browser")
    return needed


def _implied(markers: set[str]) -> set[str]:
    out = set(markers)
    while True:
        more = {m for name in out for m in IMPLIES.get(name, ())} - out
        if not more:
            return out
        out |= more


def markers_of(item: pytest.Item) -> set[str]:
    """The resource markers a test gets from its directory and fixtures (before implications)."""
    found: set[str] = set()
    try:
        parts = Path(str(item.path)).relative_to(TESTS).parts
    except ValueError:
        parts = ()
    if len(parts) > 1:
        found.update(DIRECTORY_MARKERS.get(parts[0], ()))
    for name in getattr(item, "fixturenames", ()):
        found.update(RESOURCE_FIXTURES.get(name, ()))
    return found


# `slow`: a long boot kept out of the default run (the representative amd64 one runs in CI); these
# run with --run-slow or NETBOOTD_SLOW=1, and skip otherwise, saying so.
SLOW_ENV = "NETBOOTD_SLOW"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help=f"run the `slow` tests too (or set {SLOW_ENV}=1)")


def slow_wanted(run_slow: bool, environ: Mapping[str, str]) -> bool:
    return run_slow or environ.get(SLOW_ENV) == "1"


@pytest.hookimpl(tryfirst=True)  # before -m deselects, and before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not slow_wanted(config.getoption("--run-slow"), os.environ):
        skip = pytest.mark.skip(reason=f"slow: a long boot, run with --run-slow or {SLOW_ENV}=1")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for name in sorted(_implied(markers_of(item) | have) - have):
            item.add_marker(name)
        have = {m.name for m in item.iter_markers()}
        groups = {XDIST_GROUPS[name] for name in have if name in XDIST_GROUPS}
        if groups and "xdist_group" not in have:
            item.add_marker(pytest.mark.xdist_group(sorted(groups)[0]))

    def rank(item: pytest.Item) -> int:
        have = {m.name for m in item.iter_markers()}
        daemon = "daemon_factory" in getattr(item, "fixturenames", ())
        return next((i for i, name in enumerate(ORDER) if name in have), len(ORDER) + (0 if daemon else 1))

    items.sort(key=rank)  # stable: collection order within each rank


_started: list[list[str]] | None = None  # the processes the current test started (setup and call)


def _record_start(original):
    def _execute_child(self, args, *rest, **kw):
        if _started is not None:
            _started.append([os.fsdecode(a) for a in args] if isinstance(args, list | tuple) else [os.fsdecode(args)])
        return original(self, args, *rest, **kw)

    return _execute_child


def pytest_configure(config: pytest.Config) -> None:
    if not getattr(subprocess.Popen._execute_child, "_netbootd_tests", False):  # type: ignore[attr-defined]
        patched = _record_start(subprocess.Popen._execute_child)  # type: ignore[attr-defined]
        patched._netbootd_tests = True  # type: ignore[attr-defined]
        subprocess.Popen._execute_child = patched  # type: ignore[attr-defined,method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    global _started
    _started = []
    try:
        return (yield)
    finally:
        _started = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    global _started
    started, _started = _started, None  # what teardown starts (cleanup) is not counted
    result = yield
    have = {m.name for m in item.iter_markers()}
    missing: dict[str, str] = {}
    for argv in started or ():
        for name in sorted(markers_needed(argv) - have):
            missing.setdefault(name, " ".join(argv)[:200])
    if missing:
        pytest.fail(
            f"{item.nodeid} started real resources without their markers: "
            + "; ".join(f"`{argv}` needs `{name}`" for name, argv in missing.items())
            + " — add `pytestmark = pytest.mark.<name>` to its module (or the marker to the test), or list its "
            "fixture in RESOURCE_FIXTURES (tests/conftest.py)",
            pytrace=False,
        )
    return result
