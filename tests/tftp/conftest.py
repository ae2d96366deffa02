"""Fixtures for the TFTP tests: a real server on a loopback port inside the test process
(driven by pytest-twisted's reactor), real clients in subprocesses, and a raw UDP client for
protocol-level checks."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from tftpy.TftpPacketFactory import TftpPacketFactory
from twisted.internet import defer, protocol, reactor, task

from netbootd.config.settings import IpxeBinaries, Settings, TftpSettings
from netbootd.tftp import codec
from netbootd.tftp.files import TftpFiles
from netbootd.tftp.server import TftpServer

BIG = 33 * 1024 * 1024 + 1234  # > 65535 blocks of 512: the block number rolls over


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def check_codec(data: bytes) -> None:
    """The codec's contract on any bytes: a packet of a known kind, or MalformedPacket with a reason."""
    try:
        packet = codec.parse(data)
    except codec.MalformedPacket as e:
        assert e.reason
        return
    assert isinstance(
        packet,
        codec.ReadRequest | codec.WriteRequest | codec.Ack | codec.Error | codec.Data | codec.OptionAck,
    )
    if isinstance(packet, codec.Ack):
        # same block number as tftpy's own decoder
        assert TftpPacketFactory().parse(bytes(data)).blocknumber == packet.block
    if isinstance(packet, codec.ReadRequest | codec.WriteRequest):
        assert all(k == k.lower() for k in packet.options)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, timeout: float = 20.0, step: float = 0.02) -> bool:
    """Spin the reactor until predicate() is true; False after `timeout` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            return False
        await sleep(step)
    return True


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


@pytest.fixture(scope="session")
def big_file(tmp_path_factory) -> Path:
    return write_random(tmp_path_factory.mktemp("big") / "big.bin", BIG)


@pytest.fixture
def tftp_root(tmp_path: Path, big_file: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for name, size in {
        "empty.bin": 0,
        "one512.bin": 512,
        "one1468.bin": 1468,
        "ten512.bin": 5120,
        "three1468.bin": 3 * 1468,
        "odd.bin": 1_000_003,
        "mid.bin": 300_001,
        "loss.bin": 100_003,
    }.items():
        write_random(root / name, size)
    try:
        os.link(big_file, root / "big.bin")
    except OSError:
        shutil.copy(big_file, root / "big.bin")
    (root / "52-54-00-12-34-56").mkdir()
    write_random(root / "52-54-00-12-34-56" / "ipxe.efi", 4000)
    return root


@pytest.fixture
def ipxe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ipxe"
    write_random(d / "undionly.kpxe", 70_000)
    write_random(d / "snponly.efi", 200_000)
    return d


def make_settings(tftp_root: Path, ipxe_dir: Path, **tftp: object) -> Settings:
    # rate_limit=0: these tests run dozens of clients from one address (127.0.0.1); the per-client
    # limit has its own tests (tests/limits)
    base = dict(port=0, listen="127.0.0.1", root=tftp_root, ipxe_dir=ipxe_dir, timeout=0.3, retries=5, rate_limit=0)
    base.update(tftp)
    return Settings(ipxe=IpxeBinaries(), tftp=TftpSettings(**base))  # type: ignore[arg-type]


class Running:
    """A TftpServer listening on 127.0.0.1:<port>."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = TftpServer(reactor, settings.tftp, TftpFiles(settings))
        self.port_obj = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.port = self.port_obj.getHost().port

    def stop(self) -> None:
        pytest_twisted.blockon(defer.maybeDeferred(self.port_obj.stopListening))
        # let the transfer ports finish closing
        pytest_twisted.blockon(sleep(0.05))


@pytest.fixture
def server_factory(tftp_root: Path, ipxe_dir: Path):
    started: list[Running] = []

    def start(**tftp: object) -> Running:
        running = Running(make_settings(tftp_root, ipxe_dir, **tftp))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        assert not running.server.sessions


@pytest.fixture
def server(server_factory) -> Running:
    return server_factory()


# -- subprocess clients --------------------------------------------------------------------


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.done.callback(reason.value.exitCode)


class Result:
    def __init__(self, code: int | None, out: bytes, err: bytes, timed_out: bool) -> None:
        self.code, self.out, self.err, self.timed_out = code, out, err, timed_out

    def __repr__(self) -> str:
        return f"Result(code={self.code}, timed_out={self.timed_out}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


class Proc:
    """A client process started by the test; stopped only by its own PID."""

    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
        assert exe, f"{argv[0]} not installed"
        self._proto = _Collect()
        self.transport = reactor.spawnProcess(
            self._proto, exe, [exe, *argv[1:]], env=dict(os.environ), path=str(cwd) if cwd else None
        )
        self.pid = self.transport.pid

    def kill(self) -> None:
        if self.transport.pid is not None:
            os.kill(self.transport.pid, signal.SIGKILL)

    async def wait(self, timeout: float = 120.0) -> Result:
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            self.kill()

        timer = reactor.callLater(timeout, expire)
        code = await self._proto.done
        if timer.active():
            timer.cancel()
        return Result(code, bytes(self._proto.out), bytes(self._proto.err), bool(timed_out))


async def run(argv: list[str], timeout: float = 120.0) -> Result:
    return await Proc(argv).wait(timeout)


def curl_argv(port: int, name: str, out: Path, blksize: int | None = None) -> list[str]:
    argv = ["curl", "-sS", "--fail", "--max-time", "100", "-o", str(out)]
    if blksize:
        argv += ["--tftp-blksize", str(blksize)]
    return [*argv, f"tftp://127.0.0.1:{port}/{name}"]


def atftp_argv(port: int, name: str, out: Path, options: dict[str, int] | None = None) -> list[str]:
    argv = ["atftp"]
    for k, v in (options or {}).items():
        argv += ["--option", f"{k} {v}"]
    return [*argv, "-g", "-r", name, "-l", str(out), "127.0.0.1", str(port)]


def hpa_argv(port: int, name: str, out: Path, mode: str = "binary") -> list[str]:
    return ["tftp", "127.0.0.1", str(port), "-m", mode, "-c", "get", name, str(out)]


TFTPY_CLIENT = """
import sys, tftpy, logging
logging.disable(logging.CRITICAL)
host, port, name, out, blksize = sys.argv[1:6]
options = {"blksize": int(blksize)} if int(blksize) else {}
tftpy.TftpClient(host, int(port), options).download(name, out, timeout=5)
"""


def tftpy_argv(port: int, name: str, out: Path, blksize: int = 0) -> list[str]:
    return [sys.executable, "-c", TFTPY_CLIENT, "127.0.0.1", str(port), name, str(out), str(blksize)]


# -- raw protocol client ---------------------------------------------------------------------


class RawClient(protocol.DatagramProtocol):
    """A real UDP socket in the test process speaking TFTP by hand (via our codec)."""

    noisy = False

    def __init__(self) -> None:
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.port_obj = reactor.listenUDP(0, self, interface="127.0.0.1")
        self.server_addr: tuple[str, int] | None = None

    def datagramReceived(self, data: bytes, addr) -> None:
        self.queue.put((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(data, addr)

    async def recv(self, timeout: float = 5.0):
        """(packet, raw bytes, addr), or None after `timeout` seconds."""
        d = self.queue.get()
        d.addTimeout(timeout, reactor)
        try:
            data, addr = await d
        except defer.TimeoutError:
            return None
        return codec.parse(data), data, addr

    def close(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port_obj.stopListening)


@pytest.fixture
def raw_client():
    clients: list[RawClient] = []

    def make() -> RawClient:
        c = RawClient()
        clients.append(c)
        return c

    yield make
    for c in clients:
        if c.transport is not None and c.port_obj.connected:
            pytest_twisted.blockon(c.close())
