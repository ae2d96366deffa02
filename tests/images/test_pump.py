"""The Twisted blob pump against a misbehaving registry on a real loopback socket: timeouts
(504), retries with backoff only before the first byte, no retry for 404 or mid-body failures."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from netbootd.config.settings import RegistrySettings
from netbootd.imageref import parse_reference
from netbootd.images.oci import NotFound, RegistryError, UpstreamTimeout
from netbootd.images.pump import Fetcher
from netbootd.images.registry import RegistryClient

BLOB = b"0123456789abcdef" * 4096
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class BadRegistry:
    """/v2/ answers; blob GETs behave as `mode` says: 'silent' (never answer), 'partial' (head and
    half the body, then silence), 'flaky' (503 for the first `failures` GETs, then the blob), '404'."""

    def __init__(self, mode: str, failures: int = 0) -> None:
        self.mode = mode
        self.failures = failures
        self.blob_gets = 0
        self.release = threading.Event()
        bad = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v2/":
                    self._send(200, b"{}")
                    return
                bad.blob_gets += 1
                if bad.mode == "silent":
                    bad.release.wait(30)
                elif bad.mode == "partial":
                    self.send_response(200)
                    self.send_header("content-length", str(len(BLOB)))
                    self.end_headers()
                    self.wfile.write(BLOB[: len(BLOB) // 2])
                    self.wfile.flush()
                    bad.release.wait(30)
                elif bad.mode == "404":
                    self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                elif bad.blob_gets <= bad.failures:
                    self._send(503, b"busy")
                else:
                    self._send(200, BLOB)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Sink:
    def __init__(self) -> None:
        self.received = 0
        self.data_ = bytearray()
        self.result: defer.Deferred = defer.Deferred()

    def data(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self.data_ += chunk

    def done(self) -> None:
        self.result.callback(bytes(self.data_))

    def failed(self, err: RegistryError) -> None:
        self.result.errback(err)


@pytest.fixture
def bad_registry(request):
    regs = []

    def make(mode: str, failures: int = 0) -> BadRegistry:
        regs.append(BadRegistry(mode, failures))
        return regs[-1]

    yield make
    for r in regs:
        r.stop()


def fetcher_for(host: str, **kw) -> Fetcher:
    client = RegistryClient(RegistrySettings(allowed=(host,), insecure=(host,)))
    return Fetcher(reactor, client, **kw)


async def run(fetcher: Fetcher, host: str) -> Sink:
    sink = Sink()
    fetcher.fetch(parse_reference(f"{host}/boot/x"), DIGEST, len(BLOB), sink)
    try:
        await sink.result
    finally:
        await fetcher.close()
    return sink


@pytest_twisted.ensureDeferred
async def test_no_response_is_504_after_retries(bad_registry):
    bad = bad_registry("silent")
    fetcher = fetcher_for(bad.host, header_timeout=0.3, attempts=2, backoff=0.05)
    with pytest.raises(UpstreamTimeout) as info:
        await run(fetcher, bad.host)
    assert info.value.status == 504 and "sent no response" in info.value.message
    assert bad.blob_gets == 2  # retried: no byte had reached anyone


@pytest_twisted.ensureDeferred
async def test_silence_mid_body_is_504_without_retry(bad_registry):
    bad = bad_registry("partial")
    fetcher = fetcher_for(bad.host, idle_timeout=0.3, attempts=3, backoff=0.05)
    sink = Sink()
    fetcher.fetch(parse_reference(f"{bad.host}/boot/x"), DIGEST, len(BLOB), sink)
    with pytest.raises(UpstreamTimeout, match="no data for"):
        await sink.result
    await fetcher.close()
    assert 0 < sink.received < len(BLOB)
    assert bad.blob_gets == 1  # bytes were delivered: never retried


@pytest_twisted.ensureDeferred
async def test_5xx_retried_with_backoff_then_ok(bad_registry):
    bad = bad_registry("flaky", failures=2)
    fetcher = fetcher_for(bad.host, attempts=3, backoff=0.05)
    sink = await run(fetcher, bad.host)
    assert bytes(sink.data_) == BLOB and bad.blob_gets == 3


@pytest_twisted.ensureDeferred
async def test_404_is_not_retried(bad_registry):
    bad = bad_registry("404")
    fetcher = fetcher_for(bad.host, attempts=3, backoff=0.05)
    with pytest.raises(NotFound):
        await run(fetcher, bad.host)
    assert bad.blob_gets == 1


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_502(bad_registry):
    fetcher = fetcher_for("127.0.0.1:9", attempts=2, backoff=0.05)
    with pytest.raises(RegistryError) as info:
        await run(fetcher, "127.0.0.1:9")
    assert info.value.status == 502
