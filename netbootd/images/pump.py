"""Blob bytes from a registry, on Twisted's own HTTP client (never httpx, never a thread).

`Fetcher.fetch(ref, digest, size, sink)` starts one upstream GET and feeds the bytes to a
`Sink` as they arrive. The registry client (httpx, in a worker thread) only supplies the URL
and the Authorization header. Redirects to blob storage on other hosts are followed, and the
Authorization header is dropped as soon as the host changes. Timeouts: connecting, waiting for
the response head, and silence in the body (not counted while the client side has paused us).
Failures are retried with backoff only while no byte has reached the sink.

`PassThrough` is the sink used when a blob cannot be cached: registry → client directly with
backpressure (the upstream transport is paused while the client's transport is full), sha256
verified, the last byte held back until the digest matched, so a bad blob never completes a
response.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer, error, threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from netbootd.imageref import ImageRef
from netbootd.images import metrics
from netbootd.images.oci import AuthFailed, NotFound, RegistryError, UpstreamError, UpstreamTimeout, VerificationFailed
from netbootd.images.registry import USER_AGENT, RegistryClient
from netbootd.logs import get_logger

log = get_logger("netbootd.images")

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
RECV_SIZE = 1024 * 1024


class Sink(Protocol):
    """Where a fetch delivers bytes (a cache flight, or a pass-through to one client)."""

    received: int  # bytes delivered so far; retries stop once this is non-zero

    def data(self, chunk: bytes) -> None: ...

    def done(self) -> None: ...  # upstream finished; the sink verifies the digest

    def failed(self, err: RegistryError) -> None: ...


class _Retry(Exception):
    def __init__(self, err: RegistryError) -> None:
        super().__init__(err.message)
        self.err = err


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class Fetcher:
    """Starts upstream blob fetches. One connection pool for the daemon."""

    def __init__(self, reactor, registry: RegistryClient, *, connect_timeout: float = 10.0,
                 header_timeout: float = 30.0, idle_timeout: float = 60.0, attempts: int = 3,
                 backoff: float = 0.5) -> None:
        self.reactor = reactor
        self.registry = registry
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.agent = Agent(reactor, connectTimeout=connect_timeout, pool=self.pool)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.attempts = attempts
        self.backoff = backoff

    def fetch(self, ref: ImageRef, digest: str, size: int | None, sink: Sink) -> UpstreamFetch:
        f = UpstreamFetch(self, ref, digest, size, sink)
        f.start()
        return f

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


class UpstreamFetch:
    """One blob from the registry into one sink: retries, redirects, timeouts, pause/resume."""

    def __init__(self, fetcher: Fetcher, ref: ImageRef, digest: str, size: int | None, sink: Sink) -> None:
        self.fetcher = fetcher
        self.reactor = fetcher.reactor
        self.ref = ref
        self.digest = digest
        self.size = size
        self.sink = sink
        self.transport: Any = None  # the body's IPushProducer, once streaming
        self.paused = False
        self.cancelled = False
        self.finished = False
        self._idle: Any = None
        self._pending: defer.Deferred | None = None

    # ------------------------------------------------------------------ control (from the sink's consumer)

    def pause(self) -> None:
        self.paused = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self._arm_idle()
            self.transport.resumeProducing()

    def cancel(self) -> None:
        """Nobody wants the bytes any more: drop the upstream connection."""
        self.cancelled = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.stopProducing()
        if self._pending is not None:
            self._pending.cancel()

    # ------------------------------------------------------------------ the fetch

    def start(self) -> None:
        d = defer.ensureDeferred(self._run())
        d.addErrback(lambda f: log.failure("blob fetch crashed", f, digest=self.digest))

    async def _run(self) -> None:
        delay = self.fetcher.backoff
        reauth = False
        for attempt in range(1, self.fetcher.attempts + 1):
            if self.cancelled:
                return
            try:
                await self._attempt(reauth)
                return
            except _Retry as exc:
                err = exc.err
                reauth = isinstance(err, AuthFailed)
                if self.cancelled or self.sink.received or attempt == self.fetcher.attempts:
                    self._fail(err)
                    return
                log.warn("blob fetch failed; retrying", digest=self.digest, attempt=attempt, error=err.message,
                         retry_in=delay)
                metrics.upstream_fetches.labels("retried").inc()
                await self._sleep(delay)
                delay *= 2
            except RegistryError as err:
                self._fail(err)
                return

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        call = self.reactor.callLater(seconds, d.callback, None)
        self._pending = d
        d.addErrback(lambda f: call.cancel() if call.active() else None)
        return d

    def _fail(self, err: RegistryError) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_idle()
        metrics.upstream_fetches.labels("timeout" if isinstance(err, UpstreamTimeout) else "failed").inc()
        self.sink.failed(err)

    async def _attempt(self, reauth: bool) -> None:
        what = f"blob {self.ref.registry}/{self.ref.repository}@{self.digest}"
        registry = self.fetcher.registry
        try:
            if reauth:
                await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                registry.forget_auth, self.ref.registry)
            location = await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                        registry.blob_location, self.ref, self.digest)
        except (UpstreamError, UpstreamTimeout) as err:
            raise _Retry(err) from None
        url, headers = location.url, dict(location.headers)
        for _hop in range(MAX_REDIRECTS + 1):
            response = await self._request(url, headers, what)
            if response.code in REDIRECTS:
                target = response.headers.getRawHeaders(b"location", [b""])[0].decode("latin-1")
                response.deliverBody(_Discard())
                if not target:
                    raise UpstreamError(f"{what}: redirect without a Location")
                new = urljoin(url, target)
                if _origin(new) != _origin(url):
                    headers.pop("Authorization", None)  # never hand registry credentials to a CDN
                url = new
                continue
            break
        else:
            raise UpstreamError(f"{what}: more than {MAX_REDIRECTS} redirects")
        code = response.code
        if code != 200:
            response.deliverBody(_Discard())
            if code == 404:
                raise NotFound(f"{what}: not in the registry (HTTP 404)")
            if code == 401:
                raise _Retry(AuthFailed(f"{what}: {self.ref.registry} refused our credentials (HTTP 401)"))
            if code == 403:
                raise AuthFailed(f"{what}: access denied (HTTP 403)")
            if code >= 500 or code == 429:
                raise _Retry(UpstreamError(f"{what}: {urlsplit(url).netloc} answered HTTP {code}"))
            raise UpstreamError(f"{what}: {urlsplit(url).netloc} answered HTTP {code}")
        if self.size is not None and isinstance(response.length, int) and response.length != self.size:
            response.deliverBody(_Discard())
            raise UpstreamError(f"{what}: registry says {response.length} bytes, the manifest {self.size}")
        done: defer.Deferred = defer.Deferred()
        self._pending = done
        response.deliverBody(_Body(self, done))
        try:
            await done
        except RegistryError as err:
            if self.sink.received:
                raise
            raise _Retry(err) from None
        finally:
            self._pending = None

    async def _request(self, url: str, headers: dict[str, str], what: str):
        raw = Headers({b"user-agent": [USER_AGENT.encode()]})
        for name, value in headers.items():
            raw.setRawHeaders(name.encode(), [value.encode()])
        d = self.fetcher.agent.request(b"GET", url.encode(), raw)
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.fetcher.header_timeout, give_up)
        self._pending = d
        host = urlsplit(url).netloc
        try:
            return await d
        except Exception as exc:
            if self.cancelled:
                raise UpstreamError(f"{what}: cancelled") from None
            if timed_out:
                raise _Retry(UpstreamTimeout(
                    f"{what}: {host} sent no response within {self.fetcher.header_timeout:g}s")) from None
            if isinstance(exc, error.TimeoutError) or any(r.check(error.TimeoutError) for r in getattr(exc, "reasons", ())):
                raise _Retry(UpstreamTimeout(f"{what}: connecting to {host} timed out")) from None
            raise _Retry(UpstreamError(f"{what}: {host} unreachable: {_describe(exc)}")) from None
        finally:
            if timer.active():
                timer.cancel()
            self._pending = None

    # ------------------------------------------------------------------ body callbacks

    def _body_started(self, transport) -> None:
        self.transport = transport
        if self.paused:
            transport.pauseProducing()
        else:
            self._arm_idle()

    def _data(self, chunk: bytes) -> None:
        if self.cancelled or self.finished:
            return
        if self._idle is not None:
            self._idle.reset(self.fetcher.idle_timeout)
        metrics.bytes_upstream.inc(len(chunk))
        self.sink.data(chunk)

    def _body_done(self, done: defer.Deferred, reason) -> None:
        self.transport = None
        self._cancel_idle()
        if self.cancelled or self.finished:
            if not done.called:
                done.errback(UpstreamError("cancelled"))
            return
        what = f"blob {self.ref.registry}/{self.ref.repository}@{self.digest}"
        if reason.check(ResponseDone, http.PotentialDataLoss):
            self.finished = True
            metrics.upstream_fetches.labels("ok").inc()
            done.callback(None)
            self.sink.done()
            return
        if getattr(self, "_timed_out", False):
            err: RegistryError = UpstreamTimeout(f"{what}: no data for {self.fetcher.idle_timeout:g}s")
        else:
            err = UpstreamError(f"{what}: registry connection lost mid-transfer: {_describe(reason.value)}")
        done.errback(err)

    def _arm_idle(self) -> None:
        if self._idle is None or not self._idle.active():
            self._idle = self.reactor.callLater(self.fetcher.idle_timeout, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        self._timed_out = True
        if self.transport is not None:
            self.transport.stopProducing()


def _describe(exc: BaseException) -> str:
    reasons = getattr(exc, "reasons", None)  # ResponseFailed / ResponseNeverReceived wrap failures
    if reasons:
        return "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
    return str(exc) or type(exc).__name__


class _Body(TwistedProtocol):
    def __init__(self, fetch: UpstreamFetch, done: defer.Deferred) -> None:
        self.fetch = fetch
        self.done = done

    def connectionMade(self) -> None:
        # Read up to 1 MiB per recv (Twisted's default is 64 KiB): a quarter of the Python work per byte.
        real = getattr(self.transport, "_producer", None)
        if real is not None and hasattr(real, "bufferSize"):
            real.bufferSize = RECV_SIZE
        self.fetch._body_started(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.fetch._data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.fetch._body_done(self.done, reason)


class _Discard(TwistedProtocol):
    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


# ---------------------------------------------------------------------- pass-through


def fail_request(request, err: RegistryError) -> None:
    """End a response because of `err`: a proper status while nothing was sent, else abort the
    connection so the client sees a short transfer (never a silently truncated 'complete' one)."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    if not request.startedWriting:
        body = (err.message + "\n").encode()
        request.setResponseCode(err.status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.responseHeaders.removeHeader(b"etag")
        request.responseHeaders.removeHeader(b"accept-ranges")
        request.write(body)
        request.finish()
        return
    transport = getattr(request, "transport", None) or getattr(request.channel, "transport", None)
    if transport is not None:
        transport.abortConnection()


@implementer(IPushProducer)
class PassThrough:
    """Registry → one client, with backpressure, verified; for blobs the cache cannot hold."""

    def __init__(self, request, digest: str, size: int) -> None:
        self.request = request
        self.digest = digest
        self.size = size
        self.received = 0
        self.hasher = hashlib.sha256()
        self.fetch: UpstreamFetch | None = None
        self.held = b""
        self.over = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)

    def attach(self, fetch: UpstreamFetch) -> None:
        self.fetch = fetch

    # IPushProducer (the client's transport tells us to pause/resume)
    def pauseProducing(self) -> None:
        if self.fetch is not None:
            self.fetch.pause()

    def resumeProducing(self) -> None:
        if self.fetch is not None:
            self.fetch.resume()

    def stopProducing(self) -> None:
        self._client_gone(None)

    def _client_gone(self, _reason) -> None:
        if not self.over:
            self.over = True
            if self.fetch is not None:
                self.fetch.cancel()

    # Sink
    def data(self, chunk: bytes) -> None:
        if self.over:
            return
        self.received += len(chunk)
        if self.received > self.size:
            self._verification_failed(f"more than the {self.size} bytes the manifest declares")
            return
        self.hasher.update(chunk)
        if self.received == self.size:  # hold the last byte back until the digest is checked
            chunk, self.held = chunk[:-1], chunk[-1:]
        if chunk:
            metrics.bytes_served.labels("passthrough").inc(len(chunk))
            self.request.write(chunk)

    def done(self) -> None:
        if self.over:
            return
        if self.received != self.size:
            self._verification_failed(f"{self.received} bytes instead of {self.size}")
            return
        if "sha256:" + self.hasher.hexdigest() != self.digest:
            self._verification_failed("content does not match the digest")
            return
        self.over = True
        if self.held:
            self.request.write(self.held)
        self.request.unregisterProducer()
        self.request.finish()

    def failed(self, err: RegistryError) -> None:
        if self.over:
            return
        self.over = True
        log.warn("blob transfer failed", digest=self.digest, error=err.message, sent=self.received)
        self.request.unregisterProducer()
        fail_request(self.request, err)

    def _verification_failed(self, why: str) -> None:
        metrics.verification_failures.labels("blob").inc()
        log.error("blob failed verification; transfer aborted", digest=self.digest, reason=why)
        if self.fetch is not None:
            self.fetch.cancel()
        self.over = True
        self.request.unregisterProducer()
        fail_request(self.request, VerificationFailed(f"blob {self.digest}: {why}"))
