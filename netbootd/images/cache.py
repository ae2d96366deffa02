"""The blob cache: content-addressed files under `<cache_dir>/blobs`, verified before they exist.

Layout: `blobs/sha256/<hex>` are committed blobs (their name is their sha256); `blobs/tmp/`
holds blobs being fetched. A fetch writes into a temp file pre-allocated to the blob's size
(so a full disk is known before the first byte, and the blob is then served pass-through
instead), hashes while writing, and only when size and sha256 match is the file renamed into
place (atomic): a bad or short blob is discarded, never committed. Temp files left by a crash
are removed at start; committed files survive restarts.

Size cap: `registry.cache_max_bytes`. Least recently used blobs are evicted to make room (a
hit sets the file's mtime, so the order survives restarts). A blob bigger than the cap is
never cached.

Single flight: the first request for an uncached blob starts one `Flight` (one upstream GET).
Every request for that blob while it runs, the first included, is a `TailReader` on the
growing temp file: it sends bytes as they land, at its client's own pace (a slow client never
slows the fetch or the other clients, and memory stays flat: the disk is the buffer). A reader
never sends the blob's last byte before the digest matched, so a failed verification aborts
every transfer short of its Content-Length.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from netbootd.images import metrics
from netbootd.images.registry import RegistryError, UpstreamError, VerificationFailed, is_digest
from netbootd.logs import get_logger

log = get_logger("netbootd.images")

CHUNK = 256 * 1024


class BlobCache:
    def __init__(self, root: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: dict[str, tuple[int, float]] = {}  # digest → (size, last use)
        self.reserved = 0
        self.usable = True
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            self.usable = False
            log.error("blob cache unusable; serving blobs pass-through", path=str(self.root), error=str(exc))
        self._gauges()

    def _scan(self) -> None:
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)  # an interrupted fetch: never trusted
        for entry in os.scandir(self.blobs):
            digest = "sha256:" + entry.name
            if not entry.is_file() or not is_digest(digest):
                continue
            st = entry.stat()
            self.entries[digest] = (st.st_size, st.st_mtime)
        if self.total > self.max_bytes:
            self._evict(0)

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.entries.values())

    def path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def _gauges(self) -> None:
        metrics.cache_bytes.set(self.total)
        metrics.cache_blobs.set(len(self.entries))

    def lookup(self, digest: str) -> Path | None:
        """The committed file, marked as just used; None when not cached."""
        entry = self.entries.get(digest)
        if entry is None:
            return None
        path = self.path(digest)
        now = self.clock()
        try:
            os.utime(path, (now, now))
        except FileNotFoundError:  # removed behind our back
            del self.entries[digest]
            self._gauges()
            return None
        except OSError:
            pass
        self.entries[digest] = (entry[0], now)
        return path

    def begin(self, digest: str, size: int) -> CacheWriter | None:
        """A writer for a blob about to be fetched, or None when it cannot be cached (too big,
        disk full, cache unusable): the caller then serves it pass-through."""
        if not self.usable:
            return None
        if size > self.max_bytes:
            log.info("blob larger than the cache; serving pass-through", digest=digest, size=size,
                     cache_max_bytes=self.max_bytes)
            return None
        self._evict(size)
        tmp = self.tmp / f"{digest.split(':', 1)[1]}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            log.error("cannot create a cache file; serving pass-through", path=str(tmp), error=str(exc))
            return None
        try:
            if size:
                os.posix_fallocate(fd, 0, size)  # the space is ours now, or we know it is not there
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                log.warn("cache disk full; serving pass-through", digest=digest, size=size, error=str(exc))
                return None
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # no fallocate here: write and see
        self.reserved += size
        return CacheWriter(self, digest, size, tmp, fd)

    def _evict(self, incoming: int) -> None:
        while self.entries and self.total + self.reserved + incoming > self.max_bytes:
            digest = min(self.entries, key=lambda d: self.entries[d][1])
            size, _ = self.entries.pop(digest)
            self.path(digest).unlink(missing_ok=True)  # readers holding it open keep reading
            metrics.cache_evictions.inc()
            log.info("evicted blob", digest=digest, size=size)
        self._gauges()

    def _committed(self, writer: CacheWriter) -> None:
        self.reserved -= writer.size
        self.entries[writer.digest] = (writer.size, self.clock())
        self._gauges()

    def _released(self, writer: CacheWriter) -> None:
        self.reserved -= writer.size


class CacheWriter:
    """One blob being written to its temp file and hashed, each by a thread of its own.

    The reactor only queues chunks (`write`); one thread writes them to disk, another feeds
    sha256 (both release the GIL, so they run beside the reactor and each other). Progress
    comes back on the reactor, coalesced: `on_progress(durable)`, then once both are through,
    `on_done(hexdigest or None, error)`. `backlog` is what is queued but not yet both written
    and hashed: the flight pauses the upstream when it grows (memory stays bounded when the disk
    or the CPU is slower than the network)."""

    def __init__(self, cache: BlobCache, digest: str, size: int, tmp: Path, fd: int) -> None:
        self.cache = cache
        self.digest = digest
        self.size = size
        self.tmp = tmp
        self.fd = fd
        self.queued = 0  # bytes handed to write() (reactor)
        self.durable = 0  # bytes on disk, as last reported to the reactor
        self.hashed = 0  # bytes hashed, as last reported to the reactor
        self.closed = False
        self._write_q: queue.SimpleQueue = queue.SimpleQueue()
        self._hash_q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._counts = {"written": 0, "hashed": 0}  # the threads' own counts (under _lock)
        self._report_pending = False
        self._aborted = False
        self._results: dict[str, object] = {}
        self.on_progress: Callable[[int], None] = lambda n: None
        self.on_done: Callable[[str | None, BaseException | None], None] = lambda d, e: None

    @property
    def backlog(self) -> int:
        return self.queued - min(self.durable, self.hashed)

    def start(self, reactor) -> None:
        self.reactor = reactor
        for name, target in (("write", self._write_loop), ("hash", self._hash_loop)):
            t = threading.Thread(target=target, name=f"cache-{name}-{self.digest[7:19]}", daemon=True)
            t.start()
            self._threads.append(t)

    def write(self, chunk: bytes) -> None:
        if self.queued + len(chunk) > self.size:
            raise VerificationFailed(f"blob {self.digest}: more than the {self.size} bytes the manifest declares")
        self.queued += len(chunk)
        self._write_q.put(chunk)
        self._hash_q.put(chunk)

    def finish(self) -> None:
        self._write_q.put(None)
        self._hash_q.put(None)

    def abort(self) -> None:
        self._aborted = True  # the threads stop at their next chunk, whatever is still queued
        self._write_q.put(False)
        self._hash_q.put(False)

    # --- the threads
    def _write_loop(self) -> None:
        try:
            while (chunk := self._write_q.get()) not in (None, False) and not self._aborted:
                view = memoryview(chunk)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                self._advance("written", len(chunk))
            if chunk is None and not self._aborted:
                self.reactor.callFromThread(self._part_done, "written", None)
        except OSError as exc:
            self.reactor.callFromThread(self._part_done, "written", exc)

    def _hash_loop(self) -> None:
        hasher = hashlib.sha256()
        while (chunk := self._hash_q.get()) not in (None, False) and not self._aborted:
            hasher.update(chunk)
            self._advance("hashed", len(chunk))
        if chunk is None and not self._aborted:
            self.reactor.callFromThread(self._part_done, "hashed", hasher.hexdigest())

    def _advance(self, what: str, n: int) -> None:
        with self._lock:
            self._counts[what] += n
            if self._report_pending:
                return
            self._report_pending = True
        self.reactor.callFromThread(self._report)

    def _report(self) -> None:
        with self._lock:
            self._report_pending = False
            self.durable, self.hashed = self._counts["written"], self._counts["hashed"]
        self.on_progress(self.durable)

    # --- the reactor again
    def _part_done(self, what: str, result: object) -> None:
        self._results[what] = result
        if isinstance(result, BaseException):
            self.on_done(None, result)
        elif len(self._results) == 2 and not any(isinstance(r, BaseException) for r in self._results.values()):
            self._report()
            self.on_done(str(self._results["hashed"]), None)

    def commit(self, hexdigest: str) -> Path:
        """Verify and rename into place; raises VerificationFailed (and discards) on a mismatch."""
        if self.durable != self.size:
            self.discard()
            raise VerificationFailed(f"blob {self.digest}: got {self.durable} bytes, the manifest declares {self.size}")
        if "sha256:" + hexdigest != self.digest:
            self.discard()
            raise VerificationFailed(f"blob {self.digest}: content has digest sha256:{hexdigest}")
        os.close(self.fd)
        self.closed = True
        final = self.cache.path(self.digest)
        os.rename(self.tmp, final)
        self.cache._committed(self)
        return final

    def discard(self) -> None:
        if not self.closed:
            self.closed = True
            self.abort()
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(5)  # each is between two chunks at most
            os.close(self.fd)
            self.tmp.unlink(missing_ok=True)
            self.cache._released(self)


BACKLOG_PAUSE = 16 * 1024 * 1024  # queued for the disk but not written: pause the upstream above this
BACKLOG_RESUME = 4 * 1024 * 1024


class Flight:
    """One upstream fetch of one blob into the cache, shared by every reader that wants it."""

    def __init__(self, writer: CacheWriter, reactor, on_end: Callable[[Flight], None]) -> None:
        self.writer = writer
        self.digest = writer.digest
        self.size = writer.size
        self.path = writer.tmp
        self.readers: set[TailReader] = set()
        self.waiters: list[Callable[[Flight], None]] = []  # called once at the end (range requests)
        self.state = "running"  # → "upstream-done" → "committed" | "failed"
        self.error: RegistryError | None = None
        self.final: Path | None = None
        self.received = 0
        self.on_end = on_end
        self.fetch: Any = None  # the UpstreamFetch feeding this flight
        self.throttled = False
        writer.on_progress = self._progress
        writer.on_done = self._written
        writer.start(reactor)

    @property
    def durable(self) -> int:
        return self.writer.durable

    @property
    def cap(self) -> int:
        """How far readers may send: everything once verified, else all but the last byte."""
        return self.size if self.state == "committed" else max(self.size - 1, 0)

    # Sink (the pump calls these)
    def data(self, chunk: bytes) -> None:
        if self.state != "running":
            return
        start = self.received
        self.received += len(chunk)
        try:
            self.writer.write(chunk)
        except VerificationFailed as exc:
            metrics.verification_failures.labels("blob").inc()
            log.error("blob failed verification; not cached, transfers aborted", digest=self.digest, error=exc.message)
            self._end("failed", exc)
            if self.fetch is not None:
                self.fetch.cancel()
            return
        for reader in list(self.readers):
            reader.offer(chunk, start)  # readers that are caught up get the bytes straight away
        if not self.throttled and self.writer.backlog > BACKLOG_PAUSE and self.fetch is not None:
            self.throttled = True
            self.fetch.pause()

    def done(self) -> None:
        if self.state != "running":
            return
        self.state = "upstream-done"
        self.writer.finish()  # → _written once the disk has it all

    def failed(self, err: RegistryError) -> None:
        if self.state not in ("running", "upstream-done"):
            return
        log.warn("blob fetch failed; nothing cached", digest=self.digest, error=err.message, received=self.received)
        self._end("failed", err)

    # CacheWriter callbacks (on the reactor)
    def _progress(self, durable: int) -> None:
        if self.throttled and self.writer.backlog < BACKLOG_RESUME and self.fetch is not None:
            self.throttled = False
            self.fetch.resume()
        for reader in list(self.readers):
            reader.pump()

    def _written(self, hexdigest: str | None, exc: BaseException | None) -> None:
        if self.state not in ("running", "upstream-done"):
            return
        if exc is not None or hexdigest is None:
            log.error("cache write failed", digest=self.digest, error=str(exc))
            self._end("failed", UpstreamError(f"blob {self.digest}: cache write failed: {exc}"))
            if self.fetch is not None:
                self.fetch.cancel()
            return
        try:
            self.final = self.writer.commit(hexdigest)
        except VerificationFailed as bad:
            metrics.verification_failures.labels("blob").inc()
            log.error("blob failed verification; not cached, transfers aborted", digest=self.digest, error=bad.message)
            self._end("failed", bad)
            return
        except OSError as oserr:
            self.writer.discard()
            self._end("failed", UpstreamError(f"blob {self.digest}: cache commit failed: {oserr.strerror or oserr}"))
            return
        log.info("blob cached", digest=self.digest, size=self.size)
        self._end("committed", None)

    def _end(self, state: str, err: RegistryError | None) -> None:
        self.state = state
        self.error = err
        if state == "failed":
            self.writer.discard()
        self.on_end(self)
        for reader in list(self.readers):
            reader.pump()
        for waiter in self.waiters:
            waiter(self)
        self.waiters = []


class Committed:
    """A committed blob, in the shape of a finished flight (warm hits are sent by a TailReader too)."""

    state = "committed"
    error: RegistryError | None = None

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = self.durable = self.cap = size
        self.readers: set[TailReader] = set()


SENDFILE_BUDGET = 4 * 1024 * 1024  # per turn of the reactor, so one fast client cannot starve the others
NO_SENDFILE = os.environ.get("NETBOOTD_NO_SENDFILE", "") not in ("", "0")  # tests of the buffered path


def _sendfile_socket(request) -> int | None:
    """The client socket when the body can go out with sendfile(2): plain TCP, HTTP/1.x."""
    from twisted.internet import tcp

    transport = getattr(getattr(request, "channel", None), "transport", None)
    if NO_SENDFILE or not hasattr(os, "sendfile") or not isinstance(transport, tcp.Connection):
        return None
    if getattr(transport, "TLS", False) or request.clientproto not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    return transport.fileno()


class _Uncounted:
    def inc(self, _n: int) -> None:
        pass


def sendfile_possible(request) -> bool:
    return _sendfile_socket(request) is not None


def send_whole_file(request, path: Path, size: int, on_fail: Callable[[RegistryError], None],
                    label: str | None) -> None:
    """The whole of a finished file as the response body (by sendfile on plain TCP), with
    Accept-Ranges and Content-Length. Raises OSError when the file cannot be opened."""
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-length", b"%d" % size)
    TailReader(Committed(path, size), request, on_fail, label=label)


@implementer(IPushProducer)
class TailReader:
    """Sends one blob to one client, at the client's own pace, from a flight's growing temp file
    or a committed file.

    sendfile mode (plain TCP): the body goes from the page cache to the socket with sendfile(2),
    no copy through Python. The response head is written once the first byte is there (so a
    fetch that fails before then still gets a proper error status); then, for the body, this
    object is the TCP transport's pull producer (the HTTP channel is registered again when the
    body is complete): the transport calls `resumeProducing` whenever the socket can take more.

    Buffered mode (any other transport): a push producer on the request; chunks straight from
    the upstream while the client keeps up, else pread from the file.
    """

    def __init__(self, flight: Flight | Committed, request, on_fail: Callable[[RegistryError], None],
                 label: str | None = "fetch") -> None:
        self.flight = flight
        # image bytes by source; None for plain files, which the HTTP site counts per route
        self._served = metrics.bytes_served.labels(label) if label else _Uncounted()
        self.request = request
        self.on_fail = on_fail
        self.fd = os.open(flight.path, os.O_RDONLY)  # stays valid across the rename (or an unlink)
        self.pos = 0
        self.paused = False
        self.over = False
        self.sock = _sendfile_socket(request)
        self.started = False  # sendfile mode: the head is written and the transport is ours
        self.ready = False  # sendfile mode: the transport's buffer is empty, the socket may be written
        self._registering = False
        flight.readers.add(self)
        if self.sock is None:
            request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        self.pump()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.sock is not None:
            if self._registering:
                return  # registerProducer's own first call: the head is still in the buffer
            self.ready = True
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self._close()

    def _finished(self, _result) -> None:
        self._close()

    def _close(self) -> None:
        if not self.over:
            self.over = True
            self.flight.readers.discard(self)
            os.close(self.fd)

    def offer(self, chunk: bytes, start: int) -> None:
        """A chunk just received from upstream at offset `start`: sent now if we are right there."""
        if self.sock is not None or self.over or self.paused or self.pos != start:
            return
        end = min(start + len(chunk), self.flight.cap)
        if end <= start:
            return
        data = chunk if end - start == len(chunk) else chunk[: end - start]
        self.pos = end
        self._served.inc(len(data))
        self.request.write(data)

    def pump(self) -> None:
        if self.sock is not None:
            self._pump_sendfile(self.sock)
            return
        flight = self.flight
        while not self.paused and not self.over:
            if flight.state == "failed":
                self._fail()
                return
            limit = min(flight.durable, flight.cap)
            if self.pos >= limit:
                if flight.state == "committed" and self.pos >= flight.size:
                    self._close()
                    self.request.unregisterProducer()
                    self.request.finish()
                return
            data = os.pread(self.fd, min(CHUNK, limit - self.pos), self.pos)
            if not data:
                return
            self.pos += len(data)
            self._served.inc(len(data))
            self.request.write(data)  # may pause us before it returns
        if flight.state == "failed" and not self.over:
            self._fail()

    def _pump_sendfile(self, sock: int) -> None:
        flight = self.flight
        if self.over:
            return
        if flight.state == "failed":
            self._fail()
            return
        if not self.started:
            if min(flight.durable, flight.cap) == 0 and flight.state != "committed":
                return  # nothing to send yet: the head waits too
            self.started = True
            transport = self.request.channel.transport
            self.request.write(b"")  # the head, into the transport's buffer
            transport.unregisterProducer()  # the HTTP channel, registered again at the end
            self._registering = True
            transport.registerProducer(self, False)
            self._registering = False
            return  # resumeProducing comes once the head is out
        if not self.ready:
            return
        budget = SENDFILE_BUDGET
        while True:
            limit = min(flight.durable, flight.cap)
            if self.pos >= limit:
                if flight.state == "committed" and self.pos >= flight.size:
                    self._complete()
                return  # more comes with the flight's progress (pump), the socket stays ours
            try:
                n = os.sendfile(sock, self.fd, self.pos, min(limit - self.pos, budget))
            except BlockingIOError:
                n = 0
            except OSError:  # the client went away; the transport notices and tells us (stopProducing)
                self.ready = False
                return
            else:
                if n == 0:  # end of file before `limit`: the file shrank under us (an operator's in-place rewrite)
                    self._fail(UpstreamError("file shrank while being sent"))
                    return
            self.pos += n
            budget -= n
            self.request.sentLength += n
            self._served.inc(n)
            if n == 0 or budget <= 0:
                self.ready = False
                self.request.channel.transport.startWriting()  # → resumeProducing when writable
                return

    def _complete(self) -> None:
        self._close()
        channel = self.request.channel
        transport = channel.transport
        transport.unregisterProducer()
        if transport.connected and not transport.disconnecting:
            transport.registerProducer(channel, True)
        self.request.finish()

    def _fail(self, error: RegistryError | None = None) -> None:
        """This reader ends: `error`, or its flight's, goes to on_fail (or the connection is cut)."""
        self._close()
        if self.sock is not None and self.started:
            transport = self.request.channel.transport
            transport.unregisterProducer()
            transport.abortConnection()  # short of Content-Length: the client knows it failed
            return
        if self.sock is None:
            self.request.unregisterProducer()
        self.on_fail(error or self.flight.error or UpstreamError("blob fetch failed"))
