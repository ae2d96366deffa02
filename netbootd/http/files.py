"""Serving one regular file: Range, HEAD, Last-Modified, ETag, Content-Type, Content-Length.

twisted.web.static.File does Range/HEAD/Last-Modified/Content-Length and streams with a
producer; it has no ETag, and guesses types for boot files poorly, so both are added here.

A whole-file GET on plain TCP (what every booting machine sends for its kernel and initrd)
goes out with sendfile(2) through netbootd.transfer's TailReader instead: static.File reads
64 KiB chunks into Python and copies them to the socket, for every byte of every kernel and
initrd of a boot storm (bench/storm.py; docs/performance.md, "Boot storms").
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.protocols.basic import FileSender
from twisted.web import http, server, static
from twisted.web.resource import Resource

from netbootd.transfer import send_whole_file, sendfile_possible

CONTENT_TYPES = {
    ".efi": "application/efi",  # EDK2 HTTP boot decides the image type from this
    ".ipxe": "text/plain",
    ".ign": "application/json",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".iso": "application/octet-stream",
    ".img": "application/octet-stream",
    ".squashfs": "application/octet-stream",
    ".cpio": "application/octet-stream",
    ".gz": "application/octet-stream",  # an initrd.gz must not be sent as Content-Encoding
    ".xz": "application/octet-stream",
    ".zst": "application/octet-stream",
    ".kpxe": "application/octet-stream",
    ".pxe": "application/octet-stream",
}


DEFAULT_TYPE = "application/octet-stream"
# static.File's table (the system's mime.types, read once at import) with ours on top: built once,
# not for every request.
_TYPES = {**static.File.contentTypes, **CONTENT_TYPES}


def etag_for(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def _disappeared(request) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"file disappeared\n"


class FileResource(Resource):
    """One file on disk. `path` was already resolved safely by the core."""

    isLeaf = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def render(self, request):
        try:
            st = os.stat(self._path)
        except OSError:
            return _disappeared(request)
        if request.setETag(etag_for(st).encode()) == http.CACHED:
            return b""
        if request.method == b"GET" and request.getHeader(b"range") is None and sendfile_possible(request):
            return self._sendfile(request, st)
        inner = static.File(str(self._path), defaultType=DEFAULT_TYPE)
        inner.contentTypes = _TYPES
        inner.encoding = None
        inner.contentEncodings = {}  # never claim Content-Encoding: the client wants the bytes as stored
        return inner.render(request)

    def _sendfile(self, request, st: os.stat_result):
        if request.setLastModified(st.st_mtime) == http.CACHED:
            return b""
        ctype, _ = static.getTypeAndEncoding(self._path.name, _TYPES, {}, DEFAULT_TYPE)
        request.setHeader(b"content-type", ctype.encode())
        try:
            send_whole_file(request, self._path, st.st_size, lambda _err: request.loseConnection())
        except OSError:  # removed since the stat
            return _disappeared(request)
        return server.NOT_DONE_YET


class PartsResource(Resource):
    """Bytes, a file from `offset` to its end, then bytes, as one response (GET and HEAD; no Range):
    a UKI whose kernel and initrds stay one shared file on disk while its headers and command line
    are this request's (netbootd.core.loaders.uki). The file part goes through FileSender (64 KiB
    reads): a UKI is fetched once per boot, not worth a sendfile path of its own."""

    isLeaf = True

    def __init__(self, head: bytes, path: Path, offset: int, tail: bytes, content_type: str = DEFAULT_TYPE) -> None:
        super().__init__()
        self._head, self._path, self._offset, self._tail = head, path, offset, tail
        self._type = content_type

    def render(self, request):
        try:
            f = self._path.open("rb")
        except OSError:
            return _disappeared(request)
        size = os.fstat(f.fileno()).st_size
        request.setHeader(b"content-type", self._type.encode())
        request.setHeader(b"content-length", b"%d" % (len(self._head) + size - self._offset + len(self._tail)))
        if request.method == b"HEAD":
            f.close()
            return b""
        request.write(self._head)
        f.seek(self._offset)
        sender = FileSender()
        gone: list[bool] = []

        def lost(_failure) -> None:
            gone.append(True)
            sender.stopProducing()

        request.notifyFinish().addErrback(lost)

        def sent(_last) -> None:
            f.close()
            if not gone:
                request.write(self._tail)
                request.finish()

        def failed(_failure) -> None:  # the client went away (stopProducing)
            f.close()

        sender.beginFileTransfer(f, request).addCallbacks(sent, failed)
        return server.NOT_DONE_YET
