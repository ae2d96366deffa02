"""The image proxy the HTTP edge delegates to: request → image layer → bytes (cache or registry).

`ImageProxy.layer(...)` (GET /image) and `ImageProxy.uki(path)` (GET /httpboot/<repo>/sha256-<hex>.efi)
return Deferreds firing with a twisted.web resource that serves the blob (Content-Length always,
HEAD, one Range), or failing with a `RegistryError` whose `status` and `message` the edge sends.
Registry look-ups run in the reactor's thread pool; bytes move on the reactor (pump, cache).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.web import http, resource, server, static

from netbootd.config.settings import Settings
from netbootd.imageref import ImageRef
from netbootd.images import metrics
from netbootd.images.cache import BlobCache, Flight
from netbootd.images.oci import BadRequest, NotFound, RegistryError, ResolvedImage, UpstreamError, is_digest, media_aliases
from netbootd.images.pump import Fetcher, PassThrough, fail_request
from netbootd.images.registry import RegistryClient
from netbootd.logs import get_logger
from netbootd.transfer import TailReader, send_whole_file

log = get_logger("netbootd.images")

OCTET = "application/octet-stream"
EFI = "application/efi"  # EDK2 HTTP boot decides the image type from this
_UKI_NAME = re.compile(r"^sha256-([0-9a-f]{64})\.efi$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ARCH = re.compile(r"^[a-z0-9]{1,16}$")


class ImageProxy:
    def __init__(self, settings: Settings, reactor, registry: RegistryClient | None = None,
                 on_resolved: Callable[[ImageRef, str, ResolvedImage], None] | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.registry = registry or RegistryClient(settings.registry)
        self.cache = BlobCache(settings.cache_dir / "blobs", settings.registry.cache_max_bytes)
        self.fetcher = Fetcher(reactor, self.registry)
        self.flights: dict[str, Flight] = {}
        # Told of every successful resolution (the service keeps the core's image layers current).
        self.on_resolved = on_resolved

    def close(self) -> defer.Deferred:
        self.registry.close()
        return self.fetcher.close()

    def _thread(self, f, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    # ------------------------------------------------------------------ entry points

    def layer(self, image_name: str, version: str, layer_name: str, layer_digest: str, arch: str = "") -> defer.Deferred:
        """GET /image?imageName=&version=&layerName= | &layerDigest= [&arch=<OCI architecture>]."""
        return defer.ensureDeferred(self._layer(image_name, version, layer_name, layer_digest, arch))

    async def _layer(self, image_name: str, version: str, layer_name: str, layer_digest: str,
                     arch: str = "") -> resource.IResource:
        if not image_name:
            raise BadRequest("give imageName=<registry/repository> (and version=, layerName= or layerDigest=)")
        if bool(layer_name) == bool(layer_digest):
            raise BadRequest("give exactly one of layerName=<media type> and layerDigest=sha256:<hex>")
        if layer_digest and not is_digest(layer_digest):
            raise BadRequest(f"layerDigest={layer_digest!r}: expected sha256:<64 hex digits>")
        if arch and not _ARCH.match(arch):
            raise BadRequest(f"arch={arch!r}: expected an OCI architecture such as amd64 or arm64")
        ref = self.registry.parse(image_name, version)  # BadRequest, Disallowed: no I/O
        arch = arch or self.settings.registry.architecture
        image = await self._resolve(ref, arch)
        if layer_digest:
            layer = image.layer_by_digest(layer_digest)
            if layer is None:
                raise NotFound(f"image {ref} ({image.digest}) has no layer {layer_digest}")
        else:
            layer = image.layer(layer_name)
            if layer is None:
                have = ", ".join(sorted({x.media_type for x in image.layers})) or "none"
                wanted = " or ".join(media_aliases(layer_name))
                raise NotFound(f"image {ref} has no layer of type {wanted} (it has: {have})")
        content_type = EFI if layer.is_uki else OCTET
        return BlobResource(self, ref, layer.digest, layer.size, content_type)

    def uki(self, path: str) -> defer.Deferred:
        """GET /httpboot/<registry>/<repository>/sha256-<hex>.efi (boot-operator's UKI URL)."""
        return defer.ensureDeferred(self._uki(path))

    async def _uki(self, path: str) -> resource.IResource:
        repo_path, _, name = path.strip("/").rpartition("/")
        match = _UKI_NAME.match(name)
        if not repo_path or match is None:
            raise BadRequest("expected /httpboot/<registry>/<repository>/sha256-<64 hex>.efi")
        ref = self.registry.parse(repo_path)
        if ref.tag or ref.digest:
            raise BadRequest("the repository in /httpboot/<repository>/sha256-<hex>.efi takes no tag or digest")
        digest = "sha256:" + match.group(1)
        cached = self.cache.lookup(digest)
        if cached is not None:
            size = cached.stat().st_size
        else:
            size = await self._thread(self.registry.blob_size, ref, digest)
        return BlobResource(self, ref, digest, size, EFI)

    async def _resolve(self, ref: ImageRef, arch: str) -> ResolvedImage:
        image = await self._thread(lambda: self.registry.resolve(ref, architecture=arch))
        if self.on_resolved is not None:
            self.on_resolved(ref, arch, image)
        return image

    def layer_file(self, ref: ImageRef, media_type: str, arch: str = "") -> defer.Deferred:
        """The cache file of an image's layer, fetched (and verified) first if needed: what the
        TFTP edge serves to a GRUB, which cannot take bytes over HTTP as they arrive."""
        return defer.ensureDeferred(self._layer_file(ref, media_type, arch or self.settings.registry.architecture))

    async def _layer_file(self, ref: ImageRef, media_type: str, arch: str):
        self.registry.check(ref)
        image = await self._resolve(ref, arch)
        layer = image.layer(media_type)
        if layer is None:
            have = ", ".join(sorted({x.media_type for x in image.layers})) or "none"
            raise NotFound(f"image {ref} has no layer of type {' or '.join(media_aliases(media_type))} (it has: {have})")
        cached = self.cache.lookup(layer.digest)
        if cached is not None:
            metrics.cache_requests.labels("hit").inc()
            return cached
        flight = self.flights.get(layer.digest)
        if flight is None:
            writer = self.cache.begin(layer.digest, layer.size)
            if writer is None:
                raise UpstreamError(f"blob {layer.digest} cannot be staged in the cache ({self.cache.root}: full or "
                                    "not writable): a TFTP client needs the whole file")
            metrics.cache_requests.labels("miss").inc()
            flight = Flight(writer, self.reactor, self._flight_ended)
            self.flights[layer.digest] = flight
            flight.fetch = self.fetcher.fetch(ref, layer.digest, layer.size, flight)
        ended: defer.Deferred = defer.Deferred()
        flight.waiters.append(ended.callback)
        await ended
        if flight.state != "committed" or flight.final is None:
            raise flight.error or UpstreamError(f"blob {layer.digest}: fetch failed")
        return flight.final

    # ------------------------------------------------------------------ serving

    def serve(self, request, ref: ImageRef, digest: str, size: int, content_type: str) -> Any:
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"etag", f'"{digest}"'.encode())
        request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")  # content-addressed
        if request.setETag(f'"{digest}"'.encode()) == http.CACHED:
            return b""
        cached = self.cache.lookup(digest)
        if cached is not None:
            metrics.cache_requests.labels("hit").inc()
            _log_blob(request, ref, digest, size, "cache")
            if request.method == b"HEAD" or request.getHeader(b"range") or request.getHeader(b"if-modified-since"):
                return self._from_file(request, cached, content_type)
            return self._send_committed(request, cached)
        wanted = _parse_range(request.getHeader(b"range"), size)
        if request.method == b"HEAD":
            request.setHeader(b"accept-ranges", b"bytes")
            request.setHeader(b"content-length", b"%d" % size)
            return b""
        flight = self.flights.get(digest)
        if flight is not None:
            metrics.cache_requests.labels("joined").inc()
            _log_blob(request, ref, digest, size, "joined running fetch")
        else:
            writer = self.cache.begin(digest, size)
            if writer is None:
                metrics.cache_requests.labels("passthrough").inc()
                _log_blob(request, ref, digest, size, "registry, pass-through")
                return self._pass_through(request, ref, digest, size)
            metrics.cache_requests.labels("miss").inc()
            _log_blob(request, ref, digest, size, "registry, caching")
            flight = Flight(writer, self.reactor, self._flight_ended)
            self.flights[digest] = flight
            flight.fetch = self.fetcher.fetch(ref, digest, size, flight)
        if wanted is not None:
            # A range is served from the verified file once the blob is committed.
            flight.waiters.append(lambda f: self._range_after_flight(request, f, content_type))
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-length", b"%d" % size)
        TailReader(flight, request, lambda err: fail_request(request, err), metrics.bytes_served.labels("fetch").inc)
        return server.NOT_DONE_YET

    def _flight_ended(self, flight: Flight) -> None:
        if self.flights.get(flight.digest) is flight:
            del self.flights[flight.digest]

    def _range_after_flight(self, request, flight: Flight, content_type: str) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if flight.state != "committed" or flight.final is None:
            fail_request(request, flight.error or UpstreamError("blob fetch failed"))
            return
        body = self._from_file(request, flight.final, content_type)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _send_committed(self, request, path) -> Any:
        """A full warm hit: sendfile(2) from the cache file (static.File does ranges and HEAD)."""
        try:
            send_whole_file(request, path, path.stat().st_size, lambda err: fail_request(request, err),
                            metrics.bytes_served.labels("cache").inc)
        except FileNotFoundError:  # evicted between lookup and open
            fail_request(request, UpstreamError("cached blob vanished; retry"))
        return server.NOT_DONE_YET

    def _from_file(self, request, path, content_type: str) -> Any:
        inner = static.File(str(path), defaultType=content_type)
        inner.type, inner.encoding = content_type, None
        metrics.bytes_served.labels("cache").inc(path.stat().st_size if request.method != b"HEAD" else 0)
        return inner.render(request)

    def _pass_through(self, request, ref: ImageRef, digest: str, size: int) -> Any:
        request.setHeader(b"content-length", b"%d" % size)  # a Range is answered with the whole blob (200)
        sink = PassThrough(request, digest, size)
        sink.attach(self.fetcher.fetch(ref, digest, size, sink))
        return server.NOT_DONE_YET


def _log_blob(request, ref: ImageRef, digest: str, size: int, source: str) -> None:
    log.info("blob requested", client=request.getClientAddress().host, image=str(ref), digest=digest, size=size,
             source=source, range=(request.getHeader(b"range") or b"").decode("latin-1"))


def _parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """A single byte range, or None (no header, or a form we answer with the whole blob)."""
    if not header:
        return None
    m = _RANGE.match(header.decode("latin-1").strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    return (int(m.group(1) or 0), int(m.group(2) or size - 1))


class BlobResource(resource.Resource):
    isLeaf = True

    def __init__(self, proxy: ImageProxy, ref: ImageRef, digest: str, size: int, content_type: str) -> None:
        super().__init__()
        self.proxy, self.ref, self.digest, self.size, self.content_type = proxy, ref, digest, size, content_type

    def render(self, request):
        try:
            return self.proxy.serve(request, self.ref, self.digest, self.size, self.content_type)
        except RegistryError as err:
            fail_request(request, err)
            return server.NOT_DONE_YET
