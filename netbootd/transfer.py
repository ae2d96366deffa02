"""Moving a file's bytes to an HTTP client: sendfile(2) on plain TCP, a buffered push producer
otherwise, from a finished file or from one still being written (an image blob being fetched).

One home for the byte-moving the file routes (/files, /boot) and the image proxy (warm hits and
blobs in flight) share: what makes a storm's downloads cheap lives here, and the multi-core work
(several cores moving bytes) has one place to change.

A source is a finished file (`Committed`) or anything shaped like an image cache Flight: `path`
(readable, growing), `size`, `durable` (bytes on disk), `cap` (bytes that may be sent: all but the
last until verified), `state` ("running", "upstream-done", "committed", "failed"), `error` and a
`readers` set this module adds itself to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from netbootd.logs import get_logger

log = get_logger("netbootd.http")

CHUNK = 256 * 1024  # buffered mode: bytes read from the file per write

class SourceError(Exception):
    """A source that failed under a transfer (shrank, or its fetch failed); `status` and `message`
    as the HTTP edge reports them (the shape of netbootd.images.oci.RegistryError)."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Source(Protocol):
    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def durable(self) -> int: ...
    @property
    def cap(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def error(self) -> Any: ...
    @property
    def readers(self) -> set: ...


class Committed:
    """A committed blob, in the shape of a finished flight (warm hits are sent by a TailReader too)."""

    state = "committed"
    error: Any = None

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = self.durable = self.cap = size
        self.readers: set[TailReader] = set()


SENDFILE_BUDGET = 4 * 1024 * 1024  # per turn of the reactor, so one fast client cannot starve the others
BURST_BUDGET = 16 * 1024 * 1024  # per burst on a worker thread (the reactor is free meanwhile)
# Below this much left to send, a burst's thread hand-offs cost more than the copy: the reactor sends.
BURST_MIN = 1024 * 1024

# Worker threads for sendfile(2) bursts (configure(); None: every sendfile runs on the reactor
# thread). sendfile releases the GIL and its work is the kernel's copy: on worker threads the
# bytes of many downloads move on several cores at once while the reactor thread answers DHCP,
# TFTP and HTTP requests. Decisions, accounting and the HTTP state stay on the reactor thread.
_pool: Any = None
_reactor: Any = None


def configure(threads: int, reactor: Any = None) -> None:
    """`threads` worker threads for sendfile bursts (0: on the reactor thread, as before)."""
    global _pool, _reactor
    from concurrent.futures import ThreadPoolExecutor

    if _pool is not None:
        _pool.shutdown(wait=False)
    _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sendfile") if threads > 0 else None
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    _reactor = reactor


def _burst(sock: int, fd: int, pos: int, limit: int) -> tuple[int, BaseException | None]:
    """On a worker thread: sendfile until the socket is full, `limit`, or BURST_BUDGET. Its own
    duplicates of both descriptors, so a connection the reactor closes meanwhile (and an fd number
    reused by another connection) can never receive these bytes."""
    sent = 0
    try:
        while pos + sent < limit and sent < BURST_BUDGET:
            try:
                n = os.sendfile(sock, fd, pos + sent, min(limit - pos - sent, BURST_BUDGET - sent))
            except BlockingIOError:
                break
            if n == 0:
                return sent, SourceError("file shrank while being sent")
            sent += n
        return sent, None
    except OSError as exc:
        return sent, exc
    finally:
        os.close(sock)
        os.close(fd)
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


def sendfile_possible(request) -> bool:
    return _sendfile_socket(request) is not None


def send_whole_file(request, path: Path, size: int, on_fail: Callable[[Any], None],
                    count: Callable[[int], None] | None = None) -> None:
    """The whole of a finished file as the response body (by sendfile on plain TCP), with
    Accept-Ranges and Content-Length. Raises OSError when the file cannot be opened."""
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-length", b"%d" % size)
    TailReader(Committed(path, size), request, on_fail, count)


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

    def __init__(self, flight: Source, request, on_fail: Callable[[Any], None],
                 count: Callable[[int], None] | None = None) -> None:
        """`count(n)`: told of the bytes sent (the image proxy counts them by source; the HTTP site
        counts every route's bytes itself)."""
        self.flight = flight
        self._served = count or (lambda _n: None)
        self.request = request
        self.on_fail = on_fail
        self.fd = os.open(flight.path, os.O_RDONLY)  # stays valid across the rename (or an unlink)
        self.pos = 0
        self.paused = False
        self.over = False
        self.sock = _sendfile_socket(request)
        self.started = False  # sendfile mode: the head is written and the transport is ours
        self.ready = False  # sendfile mode: the transport's buffer is empty, the socket may be written
        self.bursting = False  # a sendfile burst runs on a worker thread
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
        self._served(len(data))
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
            self._served(len(data))
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
        if not self.ready or self.bursting:
            return
        if _pool is not None and flight.state == "committed" and flight.size - self.pos >= BURST_MIN:
            self._start_burst(sock)
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
                    self._fail(SourceError("file shrank while being sent"))
                    return
            self.pos += n
            budget -= n
            self.request.sentLength += n
            self._served(n)
            if n == 0 or budget <= 0:
                self.ready = False
                self.request.channel.transport.startWriting()  # → resumeProducing when writable
                return

    def _start_burst(self, sock: int) -> None:
        self.bursting = True
        self.ready = False
        future = _pool.submit(_burst, os.dup(sock), os.dup(self.fd), self.pos, self.flight.size)
        future.add_done_callback(lambda f: _reactor.callFromThread(self._burst_done, *f.result()))

    def _burst_done(self, sent: int, error: BaseException | None) -> None:
        self.bursting = False
        self.pos += sent
        self.request.sentLength += sent
        self._served(sent)
        if self.over:
            return  # the client went away (or the transfer was cut) meanwhile
        if isinstance(error, SourceError):
            self._fail(error)
        elif error is not None:
            return  # the client went away: the transport notices and tells us (stopProducing)
        elif self.pos >= self.flight.size:
            self._complete()
        else:
            self.request.channel.transport.startWriting()  # → resumeProducing when writable again

    def _complete(self) -> None:
        self._close()
        channel = self.request.channel
        transport = channel.transport
        transport.unregisterProducer()
        if transport.connected and not transport.disconnecting:
            transport.registerProducer(channel, True)
        self.request.finish()

    def _fail(self, error: Any = None) -> None:
        """This reader ends: `error`, or its flight's, goes to on_fail (or the connection is cut)."""
        self._close()
        if self.sock is not None and self.started:
            transport = self.request.channel.transport
            transport.unregisterProducer()
            transport.abortConnection()  # short of Content-Length: the client knows it failed
            return
        if self.sock is None:
            self.request.unregisterProducer()
        self.on_fail(error or self.flight.error or SourceError("blob fetch failed"))
