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
Every request for that blob while it runs, the first included, is a `TailReader`
(netbootd.transfer, which moves every file's bytes) on the growing temp file: it sends bytes
as they land, at its client's own pace (a slow client never
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

from netbootd.images import metrics
from netbootd.images.oci import RegistryError, UpstreamError, VerificationFailed, is_digest
from netbootd.logs import get_logger

log = get_logger("netbootd.images")


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
        self.readers: set[Any] = set()  # netbootd.transfer.TailReader, each sending this blob to a client
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
