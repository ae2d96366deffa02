"""Network namespaces made for a test, a benchmark or a lab, and talking to a daemon inside one.

`Topology` is the one place namespaces are made and removed. Each namespace it adds has loopback
up and is named after the topology (a prefix, this process's PID and a counter: parallel runs, and
a crashed run's leftovers, never collide); veth pairs are created straight inside their namespaces,
so nothing ever touches the host's own network. `close()` (or leaving the `with`) stops every
process started through it, by PID, then deletes only the namespaces it added (and with them their
bridges, veths and taps):

    with Topology("nbd") as net:
        srv, cli = net.namespace("s"), net.namespace("c")
        net.veth(srv, "nbs0", cli, "nbc0")
        srv.address("nbs0", "10.77.0.2/24")
        server = srv.start("netbootd", [sys.executable, "-m", "netbootd", "serve", ...], tmp / "netbootd.log")
        server.wait_for(r"\blistening\b")
        out = cli.run(sys.executable, "client.py")     # subprocess.CompletedProcess

A lab's netbootd listens inside its namespace, which has no route to the host (on purpose: nothing
the lab does touches the host's networks). To read its boot timeline without a subprocess per
request, one thread enters the namespace with setns(2) — which changes only the calling thread —
and makes its HTTP requests there (`NetnsClient`; os.setns arrives in Python 3.12; on 3.11 it is
libc's, via ctypes).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

CLONE_NEWNET = 0x40000000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")

_tags = itertools.count()  # one per Topology in this process: names stay unique without a clock


class NetnsError(RuntimeError):
    """An `ip` command failed; the message says which and what it answered."""


def exec_argv(namespace: str, *argv: str) -> list[str]:
    """`argv` run inside network namespace `namespace` (`ip netns exec` execs it: same PID)."""
    return ["ip", "netns", "exec", namespace, *argv]


def tail(text: str, lines: int = 40) -> str:
    text = ANSI.sub("", text)
    rows = [r for r in text.splitlines() if r.strip()]
    cut = rows[-lines:]
    return ("[...]\n" if len(rows) > lines else "") + "\n".join(cut)


class Proc:
    """A process started here (usually inside a namespace), its output (stdout and stderr) in a file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None, env=None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._out = open(log, "wb")  # closed in stop()
        self.popen = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
        self.started = time.monotonic()
        self.started_wall = time.time()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 30.0, error: type[Exception] = RuntimeError) -> re.Match[str]:
        """Until its output matches the regular expression `pattern`; `error` if it exits first or time runs out."""
        found: list[re.Match[str]] = []

        def match() -> bool:
            m = re.search(pattern, self.text())
            if m:
                found.append(m)
            return bool(m)

        wait_until(match, self, timeout, f"{self.name} to print /{pattern}/", error)
        return found[0]

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)  # by PID: only ever a process started here
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()


def wait_until(predicate: Callable[[], Any], proc: Proc, timeout: float, what: str,
               error: type[Exception] = RuntimeError) -> None:
    """Until `predicate()` is true; `error` (with the tail of `proc`'s output) if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if not proc.running():
            raise error(f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n{tail(proc.text())}")
        time.sleep(0.05)
    raise error(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail(proc.text())}")


class Namespace:
    """One network namespace of a `Topology` (made by `Topology.namespace`)."""

    def __init__(self, topology: Topology, name: str) -> None:
        self.topology = topology
        self.name = name

    def ip(self, *args: str, input: str | None = None) -> str:
        """`ip -n <this namespace> ARGS`; its output."""
        return self.topology.ip("-n", self.name, *args, input=input)

    def up(self, iface: str) -> None:
        self.ip("link", "set", iface, "up")

    def address(self, iface: str, address: str) -> None:
        """Add `address` (with its prefix length, e.g. 10.77.0.2/24) to `iface`. IPv6 without duplicate
        address detection: the addresses of a test network are unique, and a tentative address cannot
        be bound for a second."""
        if ":" in address:
            self.ip("-6", "addr", "add", address, "dev", iface, "nodad")
        else:
            self.ip("addr", "add", address, "dev", iface)

    def bridge(self, name: str = "br0", mac: str | None = None) -> None:
        """A bridge (no STP, no forwarding delay: ports forward at once), up; `mac` fixes its
        address (a Linux bridge otherwise takes the lowest of its ports', which changes as they join)."""
        self.ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        if mac:
            self.ip("link", "set", name, "address", mac)
        self.up(name)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def argv(self, *argv: str) -> list[str]:
        """`argv` as a command that runs inside this namespace (for Popen)."""
        return exec_argv(self.name, *argv)

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this namespace to its end; its output captured (text)."""
        return subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout, input=input,
                              check=check)

    def start(self, name: str, argv: Sequence[str], log: Path, **popen: Any) -> Proc:
        """Start `argv` inside this namespace (output in `log`); stopped by the topology's close()."""
        proc = Proc(name, self.argv(*argv), log, **popen)
        self.topology.procs.append(proc)
        return proc


class Topology:
    """Namespaces, and the links between them, made for one run; see the module doc.
    `error`: what a failed `ip` command raises (the lab raises its LabError)."""

    def __init__(self, prefix: str, *, error: type[Exception] = NetnsError) -> None:
        self.name = f"{prefix}{os.getpid()}x{next(_tags)}"
        self.error = error
        self.namespaces: dict[str, Namespace] = {}  # by name, in the order they were made
        self.procs: list[Proc] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ip(self, *args: str, input: str | None = None) -> str:
        # a generous bound: a batch of thousands of addresses (bench/storm.py) takes seconds
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=120, input=input)
        if proc.returncode != 0:
            raise self.error(f"ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def namespace(self, role: str = "") -> Namespace:
        """A new namespace named after this topology and `role`, its loopback up."""
        ns = Namespace(self, f"{self.name}{role}")
        self.ip("netns", "add", ns.name)
        self.namespaces[ns.name] = ns
        ns.up("lo")
        return ns

    def veth(self, a: Namespace, a_if: str, b: Namespace, b_if: str, *, master: str | None = None,
             mac: str | None = None) -> None:
        """A veth pair, both ends up: `a_if` in `a` (a port of bridge `master` there, when given;
        MAC address `mac`, when given), `b_if` in `b`."""
        a.ip("link", "add", a_if, *(["address", mac] if mac else []), "type", "veth", "peer", "name", b_if,
             "netns", b.name)
        if master:
            a.ip("link", "set", a_if, "master", master)
        a.up(a_if)
        b.up(b_if)

    def close(self) -> None:
        """Stop what was started (last first, by PID), then delete the namespaces this topology added."""
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep tearing down the rest
                print(f"{self.name}: stopping {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)
        self.procs = []
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.namespaces = {}



# ---------------------------------------------------------------------------------- setns


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (made with `ip netns add`)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)
        if setns is not None:
            setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsClient:
    """HTTP GETs made from inside a namespace, by one worker thread that lives there."""

    def __init__(self, netns: str, timeout: float = 5.0) -> None:
        self._jobs: queue.Queue[tuple[str, queue.Queue] | None] = queue.Queue()
        self._timeout = timeout
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(netns, ready), daemon=True, name=f"netns-{netns}")
        self._thread.start()
        err = ready.get()
        if err is not None:
            raise err

    def _run(self, netns: str, ready: queue.Queue) -> None:
        try:
            enter_netns(netns)
            client = httpx.Client(timeout=self._timeout)
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        with client:
            while (job := self._jobs.get()) is not None:
                url, reply = job
                try:
                    reply.put(client.get(url))
                except httpx.HTTPError as exc:
                    reply.put(exc)

    def get(self, url: str) -> httpx.Response:
        """GET `url` from inside the namespace; raises httpx.HTTPError like httpx would."""
        reply: queue.Queue[Any] = queue.Queue()
        self._jobs.put((url, reply))
        result = reply.get(timeout=self._timeout + 5)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)


class TimelineWatch:
    """Polls one machine's /machines/<mac> and hands each new event to `on_event` (and its
    downloads still running to `on_downloads`)."""

    def __init__(self, client: NetnsClient, base_url: str, mac: str, on_event: Callable[[dict], None],
                 on_downloads: Callable[[list[dict]], None] | None = None) -> None:
        self.client, self.url, self.on_event = client, f"{base_url}/machines/{mac}", on_event
        self.on_downloads = on_downloads  # the machine's downloads still running, at each poll
        self.events: list[dict] = []

    def poll(self) -> None:
        try:
            r = self.client.get(self.url)
        except httpx.HTTPError:
            return  # netbootd not up yet, or busy: the next poll catches up
        if r.status_code != 200:
            return
        doc = r.json()
        events = doc.get("events", [])
        # the timeline keeps the last 64 events per machine: match the new ones by time and stage
        seen = {(e.get("time"), e.get("stage")) for e in self.events}
        for event in events:
            if (event.get("time"), event.get("stage")) not in seen:
                self.events.append(event)
                self.on_event(event)
        if self.on_downloads is not None:
            self.on_downloads(doc.get("downloads", []))
