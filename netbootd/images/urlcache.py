"""Remote files (a kernel or initrd given as an http(s) URL) fetched into netbootd's cache, for
clients that cannot fetch them themselves: GRUB over TFTP has no HTTP, so netbootd downloads the
file once and serves it from disk.

One download per URL at a time (later askers wait for it); a file younger than `max_age` is served
without asking again; an older one is fetched again, and served as it is if the source is down
(logged). Files are written to a temp name and renamed when complete: a partial download is never
served.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import treq
from twisted.internet import defer
from twisted.python.failure import Failure

from netbootd.images.oci import NotFound, UpstreamError, UpstreamTimeout
from netbootd.logs import get_logger

log = get_logger("netbootd.images")

MAX_AGE = 3600.0


class UrlCache:
    def __init__(self, root: Path, reactor, max_age: float = MAX_AGE, timeout: float = 30.0) -> None:
        self.root = root
        self.reactor = reactor
        self.max_age = max_age
        self.timeout = timeout
        self.flights: dict[str, defer.Deferred] = {}
        self.waiters: dict[str, list[defer.Deferred]] = {}

    def path(self, url: str) -> Path:
        return self.root / (hashlib.sha256(url.encode()).hexdigest() + ".bin")

    def get(self, url: str) -> defer.Deferred:
        """A Deferred firing with the path of the downloaded file (or failing with an UpstreamError)."""
        path = self.path(url)
        try:
            if time.time() - path.stat().st_mtime < self.max_age:
                return defer.succeed(path)
        except OSError:
            pass
        mine: defer.Deferred = defer.Deferred()
        self.waiters.setdefault(url, []).append(mine)
        if url not in self.flights:
            self.flights[url] = d = defer.ensureDeferred(self._download(url, path))
            d.addBoth(self._finished, url)
        return mine

    def _finished(self, result: Path | Failure, url: str) -> None:
        self.flights.pop(url, None)
        for waiter in self.waiters.pop(url, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _download(self, url: str, path: Path) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        started = time.monotonic()
        try:
            response = await treq.get(url, unbuffered=True, timeout=self.timeout, reactor=self.reactor)
            if response.code == 404:
                raise NotFound(f"{url}: 404 Not Found")
            if response.code != 200:
                raise UpstreamError(f"{url}: HTTP {response.code}")
            with open(tmp, "wb") as out:

                def write(chunk: bytes) -> None:
                    out.write(chunk)

                await treq.collect(response, write)
            expected = response.headers.getRawHeaders(b"content-length", [b""])[0]
            size = tmp.stat().st_size
            if expected.isdigit() and int(expected) != size:
                raise UpstreamError(f"{url}: got {size} of {int(expected)} bytes")
            os.replace(tmp, path)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if path.exists():
                log.warn("remote file could not be refreshed; serving the cached copy", url=url, error=str(exc))
                return path
            if isinstance(exc, (UpstreamError, NotFound)):
                raise
            if "timeout" in type(exc).__name__.lower():
                raise UpstreamTimeout(f"{url}: timed out after {self.timeout:.0f} s") from None
            raise UpstreamError(f"{url}: {exc}") from None
        log.info("remote file cached", url=url, size=size, seconds=round(time.monotonic() - started, 2))
        return path
