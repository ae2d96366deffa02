"""Abuse limits of the HTTP edge: per-client rate limit, concurrent downloads, request sizes.

- Each client IP gets `http.rate_limit` requests a second (token bucket, `http.rate_burst` at once);
  beyond that: 429 with `Retry-After` and a one-line reason (`netbootd_http_rate_limited_total`).
- At most `http.max_transfers` downloads (/files, /host, /boot, /image, /httpboot/...) run at once;
  more wait their turn in a FIFO queue (`netbootd_http_queued_transfers`) for up to
  `http.queue_timeout` seconds, because firmware does not retry a refused download: a 503 to a
  booting machine is a failed boot. Beyond `http.max_queued` waiting, or after the timeout: 503
  with `Retry-After` (`netbootd_http_active_transfers` is the gauge). A download
  whose client takes nothing for `http.stall_timeout` seconds while data waits for it (a client
  that stopped reading, a machine powered off mid-transfer: TCP alone would hold it for many
  minutes) is cut, freeing its slot. One that waits on us (a slow registry) is not.
- A request line longer than `http.max_url_length`: 414; a head (request line and headers)
  larger than `http.max_header_bytes` or with more than `http.max_headers` lines: 431; any
  request body (Content-Length > 0 or Transfer-Encoding): 413, refused before it is read, so
  nothing a client sends is buffered in memory or spooled to disk.

Size refusals happen in the channel (`LimitedChannel`), before a Request exists; the connection
is closed after the answer ("lingering close": our side is shut for writing, what the client
still sends is read and dropped, up to a bound, so the answer is not lost to a TCP reset).
Rate and concurrency refusals happen in `LimitedRequest.process`, before routing, and are
counted in the per-route request metrics like any answer.

`install(site, settings)` wires all of it into a `twisted.web.server.Site`.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.web import http, server

from netbootd.config.settings import HttpSettings
from netbootd.http import metrics
from netbootd.logs import RateLimiter, get_logger
from netbootd.ratelimit import PerClientLimiter, retry_after

log = get_logger("netbootd.http")

LINGER_BYTES = 256 * 1024  # after a size refusal, read and drop at most this much before closing
LINGER_SECONDS = 5  # and wait at most this long for the client to close


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, retry: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry = retry


class HttpLimits:
    """The policy and its state, one per site. Time comes from `reactor` (seconds, callLater)."""

    def __init__(
        self,
        settings: HttpSettings,
        reactor: Any,
        transfer_routes: Iterable[str] = ("files", "host", "boot", "image", "httpboot"),
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.rate = PerClientLimiter(settings.rate_limit, settings.rate_burst, reactor.seconds)
        self.transfer_routes = frozenset(r.encode() for r in transfer_routes)
        self.transfers = 0
        self.queue: deque[_Waiting] = deque()  # downloads waiting for a slot, oldest first
        self._starting = False  # _start_queued is running (a download that ends at once re-enters)
        self.log_limiter = RateLimiter(burst=5, period=60.0, clock=reactor.seconds)
        self._progress: dict[Any, tuple[int, float]] = {}  # running download → (bytes sent, since when)
        self._reaper: Any = None

    def is_transfer(self, path: bytes) -> bool:
        parts = path.split(b"/", 2)
        if len(parts) < 2 or parts[1] not in self.transfer_routes:
            return False
        # /httpboot alone is the JSON of the DHCP extension; /httpboot/<repo>/... is a UKI
        return parts[1] != b"httpboot" or len(parts) == 3

    def admit(self, client: str, path: bytes) -> None:
        """Raise Refusal when this request must not be served."""
        wait = self.rate.take(client)
        if wait:
            metrics.rate_limited.inc()
            seconds = retry_after(wait)
            self._log("rate_limited", "http rate limit exceeded", client=client)
            raise Refusal(
                429,
                "rate_limited",
                f"rate limit exceeded: at most {self.settings.rate_limit:g} requests a second from one address; "
                f"retry in {seconds} s",
                seconds,
            )

    def run_transfer(self, request: Any, process: Callable[[], Any]) -> None:
        """Run this download's `process` now if a slot is free, else when one frees (FIFO).
        Raise Refusal when the queue is full."""
        if self.transfers < self.settings.max_transfers and not self.queue:
            self._start(request, process)
            return
        if len(self.queue) >= self.settings.max_queued:
            metrics.refused.labels("busy").inc()
            self._log("busy", "http download refused: too many downloads", client=_client(request),
                      active=self.transfers, queued=len(self.queue))
            raise Refusal(503, "busy", f"server busy: {self.transfers} downloads in progress and "
                          f"{len(self.queue)} waiting; retry in 1 s", 1)
        waiting = _Waiting(request, process, self.reactor.seconds())
        waiting.timer = self.reactor.callLater(self.settings.queue_timeout, self._expire, waiting)
        self.queue.append(waiting)
        metrics.queued_transfers.set(len(self.queue))
        request.notifyFinish().addErrback(lambda _: self._abandon(waiting))  # client gone while waiting

    def _start(self, request: Any, process: Callable[[], Any]) -> None:
        self.transfer_started(request)
        request.notifyFinish().addBoth(lambda _: self.transfer_ended(request))
        process()

    def _start_queued(self) -> None:
        if self._starting:
            return  # a download started below ended at once; the loop below goes on
        self._starting = True
        try:
            while self.queue and self.transfers < self.settings.max_transfers:
                waiting = self.queue.popleft()
                if waiting.timer is not None and waiting.timer.active():
                    waiting.timer.cancel()
                if waiting.gone:
                    continue
                metrics.queue_wait.observe(self.reactor.seconds() - waiting.since)
                self._start(waiting.request, waiting.process)
        finally:
            self._starting = False
            metrics.queued_transfers.set(len(self.queue))

    def _abandon(self, waiting: _Waiting) -> None:
        waiting.gone = True
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()

    def _expire(self, waiting: _Waiting) -> None:
        waiting.timer = None
        try:
            self.queue.remove(waiting)
        except ValueError:
            return
        metrics.queued_transfers.set(len(self.queue))
        if waiting.gone:
            return
        waiting.gone = True
        metrics.refused.labels("queue_timeout").inc()
        self._log("queue_timeout", "http download refused: no free slot in time", client=_client(waiting.request),
                  seconds=self.settings.queue_timeout, active=self.transfers)
        answer_refusal(waiting.request, Refusal(
            503, "queue_timeout",
            f"server busy: no download slot free within {self.settings.queue_timeout:g} s "
            f"({self.transfers} downloads in progress); retry in 1 s", 1))

    def transfer_started(self, request: Any = None) -> None:
        self.transfers += 1
        metrics.active_transfers.inc()
        if request is not None and self.settings.stall_timeout > 0:
            self._progress[request] = (request.sentLength or 0, self.reactor.seconds())
            if self._reaper is None:
                self._reaper = self.reactor.callLater(self._reap_interval(), self._reap)

    def transfer_ended(self, request: Any = None) -> None:
        self.transfers -= 1
        metrics.active_transfers.dec()
        self._progress.pop(request, None)
        if self.queue:
            self._start_queued()

    def _reap_interval(self) -> float:
        return min(max(self.settings.stall_timeout / 4, 0.1), 10.0)

    def _reap(self) -> None:
        """Cut the downloads that sent nothing for stall_timeout seconds; runs while any run."""
        self._reaper = None
        now = self.reactor.seconds()
        for request, (sent, since) in list(self._progress.items()):
            current = request.sentLength or 0
            if current != sent or not _backlogged(request):
                self._progress[request] = (current, now)  # moving, or waiting on us, not on the client
            elif now - since >= self.settings.stall_timeout:
                del self._progress[request]
                metrics.refused.labels("stalled").inc()
                self._log("stalled", "http download cut: nothing sent", client=_client(request), sent=current,
                          path=request.path.decode("latin-1", "replace")[:200], seconds=round(now - since, 1))
                channel = request.channel
                if channel is not None and channel.transport is not None:
                    channel.transport.abortConnection()  # notifyFinish errbacks: transfer_ended
        if self._progress:
            self._reaper = self.reactor.callLater(self._reap_interval(), self._reap)

    def _log(self, key: str, message: str, **fields: Any) -> None:
        self.log_limiter.log(log.info, key, message, **fields)


class _Waiting:
    """A download waiting for a slot."""

    __slots__ = ("gone", "process", "request", "since", "timer")

    def __init__(self, request: Any, process: Callable[[], Any], since: float) -> None:
        self.request = request
        self.process = process
        self.timer: Any = None
        self.since = since
        self.gone = False


def _client(request: Any) -> str:
    return getattr(request.getClientAddress(), "host", "") or ""


def _backlogged(request: Any) -> bool:
    """Data is waiting for this client: in Twisted's buffer, or in the kernel's send queue
    (unsent or unacknowledged: SIOCOUTQ). False when unknown: never cut a download on a guess."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is None:
        return False
    if getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataLen", 0):
        return True
    try:
        queued = fcntl.ioctl(transport.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
    except (AttributeError, OSError, ValueError):
        return False
    return struct.unpack("i", queued)[0] > 0


def _refusal_body(refusal: Refusal) -> bytes:
    return refusal.message.encode("utf-8", "replace") + b"\n"


class LimitedRequest(server.Request):
    """A Request that asks the site's HttpLimits before it is routed, and keeps an HTTP/1.0
    client's connection open when it asked to and the answer has a length (see LimitedChannel)."""

    keep_alive_10 = False  # an HTTP/1.0 request with "Connection: keep-alive"

    def write(self, data: bytes) -> None:
        if self.keep_alive_10 and not self.startedWriting:
            if (self.method == b"HEAD" or self.code in http.NO_BODY_CODES
                    or self.responseHeaders.hasHeader(b"content-length")):
                self.responseHeaders.setRawHeaders(b"connection", [b"keep-alive"])
            elif self.channel is not None:
                self.channel.persistent = False  # HTTP/1.0 has no chunks: the body ends with the connection
        super().write(data)

    def process(self) -> None:
        limits: HttpLimits | None = getattr(getattr(self.channel, "site", None), "limits", None)
        if limits is None:
            return super().process()
        try:
            limits.admit(_client(self), self.path)
            if limits.is_transfer(self.path):
                limits.run_transfer(self, super().process)
                return None
        except Refusal as refusal:
            answer_refusal(self, refusal)
            return None
        return super().process()


def answer_refusal(request: Any, refusal: Refusal) -> None:
    request.site = request.channel.site
    request.setResponseCode(refusal.status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if refusal.retry is not None:
        request.setHeader(b"retry-after", str(refusal.retry).encode())
    request.write(_refusal_body(refusal))
    request.finish()


CALLBACK_BODY_MAX = 4096  # bytes of a POST to /lifecycle/* read (and ignored)
_REASONS = {413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class LimitedChannel(http.HTTPChannel):
    """An HTTPChannel that refuses oversized request heads and any request body."""

    settings: HttpSettings = HttpSettings()  # set per site by install()

    def __init__(self) -> None:
        super().__init__()
        s = self.settings
        self._in_head = False
        self._head_bytes = 0
        self._head_lines = 0
        self._refused = False
        self._linger_left = LINGER_BYTES
        # Twisted's own limits (a bare 400) stay beyond ours, so ours answer first.
        self.MAX_LENGTH = max(s.max_header_bytes, s.max_url_length) + 1
        self.totalHeadersSize = s.max_header_bytes + s.max_url_length + 1024
        self.maxHeaders = s.max_headers + 1

    # -- the head, line by line ------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            if line:
                if len(line) > self.settings.max_url_length:
                    return self._refuse(414, "url_too_long", f"request line longer than {self.settings.max_url_length} bytes")
                self._in_head = True
                self._head_bytes = len(line)
                self._head_lines = 0
        else:
            self._head_bytes += len(line) + 2
            self._head_lines += 1 if line else 0
            if self._head_bytes > self.settings.max_header_bytes:
                return self._refuse(431, "headers_too_large", f"request head larger than {self.settings.max_header_bytes} bytes")
            if self._head_lines > self.settings.max_headers:
                return self._refuse(431, "headers_too_large", f"more than {self.settings.max_headers} header lines")
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._refused:
            return None
        if not self._in_head:
            return self._refuse(414, "url_too_long", f"request line longer than {self.settings.max_url_length} bytes")
        return self._refuse(431, "headers_too_large", f"request head larger than {self.settings.max_header_bytes} bytes")

    _local_address: Any = None

    def getHost(self) -> Any:
        """The connection's local address, asked of the kernel once (Twisted's Request asks for it
        on every request: a getsockname per request of a kept-alive connection)."""
        if self._local_address is None:
            self._local_address = super().getHost()
        return self._local_address

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Twisted closes every HTTP/1.0 connection; one that asked for keep-alive (ApacheBench,
        old tools) stays open when its answer has a Content-Length (LimitedRequest.write decides)."""
        if version == b"HTTP/1.0" and isinstance(request, LimitedRequest):
            tokens = b",".join(request.requestHeaders.getRawHeaders(b"connection", [])).lower().split(b",")
            if b"keep-alive" in (t.strip() for t in tokens):
                request.keep_alive_10 = True
                return True
        return super().checkPersistence(request, version)

    def allHeadersReceived(self) -> None:
        if self.length != 0 and not self._callback_body():  # Content-Length > 0, or None for chunked
            return self._refuse(413, "body", "request bodies are not accepted")
        return super().allHeadersReceived()

    def _callback_body(self) -> bool:
        """An installer's POST to its done or failed URL (curl -d, wget --post-data, a kickstart
        %post) may carry a small body, with a length: it is read and ignored (the URL says it all)."""
        return (getattr(self, "_command", b"") == b"POST" and getattr(self, "_path", b"").startswith(b"/lifecycle/")
                and self.length is not None and 0 < self.length <= CALLBACK_BODY_MAX)

    def allContentReceived(self) -> None:
        self._in_head = False
        return super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._tcp().abortConnection()
            return None
        return super().rawDataReceived(data)

    # -- refusing ----------------------------------------------------------------------------

    def _refuse(self, status: int, reason: str, message: str) -> None:
        metrics.refused.labels(reason).inc()
        peer = getattr(self.transport.getPeer(), "host", "") if self.transport else ""
        limits = getattr(getattr(self, "site", None), "limits", None)
        if limits is not None:
            limits._log(reason, "http request refused", client=peer, status=status, detail=message)
        body = message.encode("utf-8", "replace") + b"\n"
        transport = self._tcp()
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b"Refused"), len(body), body)
        )
        self._refused = True
        self.setRawMode()  # whatever follows is dropped (rawDataReceived)
        self.setTimeout(LINGER_SECONDS)
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            self.loseConnection()

    def timeoutConnection(self) -> None:
        if self._refused:
            self._tcp().abortConnection()
            return None
        return super().timeoutConnection()

    def _tcp(self) -> Any:
        """The connection's transport (a TCP one: it can abort and half-close)."""
        assert self.transport is not None  # only called from the channel's own data and timers
        return self.transport


def reconfigure(site: server.Site, settings: HttpSettings) -> None:
    """New limits for a site `install` gave limits (a reload): running downloads and open
    connections keep theirs; a changed rate starts every client with a full bucket."""
    limits: HttpLimits = site.limits  # type: ignore[attr-defined]
    if (settings.rate_limit, settings.rate_burst) != (limits.settings.rate_limit, limits.settings.rate_burst):
        limits.rate = PerClientLimiter(settings.rate_limit, settings.rate_burst, site.reactor.seconds)
    limits.settings = settings
    site.protocol.settings = settings  # type: ignore[attr-defined]  # the site's channel class: new connections


def install(site: server.Site, settings: HttpSettings, transfer_routes: Iterable[str] | None = None) -> HttpLimits:
    """Give `site` the limits of `settings`: its requests are LimitedRequests, its channels
    LimitedChannels, and `site.limits` holds the state."""
    kw = {"transfer_routes": transfer_routes} if transfer_routes is not None else {}
    limits = HttpLimits(settings, site.reactor, **kw)
    channel = type("SiteLimitedChannel", (LimitedChannel,), {"settings": settings})
    site.limits = limits  # type: ignore[attr-defined]
    site.requestFactory = LimitedRequest
    site.protocol = channel  # type: ignore[method-assign]
    return limits
