"""Fuzz the HTTP edge: every route of the Klein app with generated paths, queries and headers
(through treq's StubTreq, against the real core and the example configuration), then raw request
bytes over real sockets against the daemon (its channel limits and Twisted's parser included).

Properties: no 500 from an exception (the only 500 is /httpboot's contract answer, as JSON), no
traceback in any body, nothing logged as a failure; the daemon answers every request with a
parseable status line (or closes a request it cannot parse), never 500, and lives.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.logger import globalLogPublisher

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settingsfile import load_settings
from netbootd.core.decide import BootCore
from netbootd.http.app import make_site
from tests.fuzz.conftest import EXAMPLE_CONFIG, EXAMPLES, corpus_lines, fuzz

SEEDS = corpus_lines("http")
ROUTES = ["ipxe", "ignition", "httpboot", "booty", "files", "host", "boot", "beacon", "machines", "image", "healthz", "metrics",
          "", "nosuch", "IPXE", "ipxe/", "files/", "booty/x"]
PARAMS = ["mac", "uuid", "arch", "platform", "buildarch", "exp", "sig", "stage", "imageName", "version", "layerName",
          "layerDigest", "x"]
VALUES = ["52:54:00:00:00:01", "52-54-00-00-00-02", "525400000003", "52:54:00:77:00:10", "ff:ff:ff:ff:ff:ff",
          "00:00:00:00:00:00", "52:54:00:00:00:0", "4c4c4544-0042-4810-8056-b4c04f395931", "00000000-0000-0000-0000-"
          "000000000000", "${uuid}", "${mac}", "bios", "efi64", "arm64", "http", "pcbios", "efi", "i386", "x86_64",
          "arm32", "loaded", "failed", "-1", "0", "99999999999999999999999", "9" * 400, "1e9", "", " ", "%", "%zz",
          "%00", "%ff", "\u00e9", "../..", "a" * 2000]
SEGMENTS = ["", ".", "..", "%2e%2e", "%2E%2E", "%00", "%2f", "%5c", "..%2f", "kairos", "cloud-config.yaml",
            "undionly.kpxe", "snponly.efi", "52-54-00-00-00-05.bty", "x.bty", ".bty", "sha256-" + "0" * 64 + ".efi",
            "//", "a" * 300, "%ff%fe", "\u00e9"]


def text_value() -> st.SearchStrategy[str]:
    return st.sampled_from(VALUES) | st.text(max_size=40)


def segment() -> st.SearchStrategy[str]:
    return st.sampled_from(SEGMENTS) | st.text(max_size=20).map(lambda t: quote(t, safe=""))


@st.composite
def target(draw) -> str:
    """A request target: a route, path segments, and a query."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(SEEDS))
    path = "/" + draw(st.sampled_from(ROUTES))
    for seg in draw(st.lists(segment(), max_size=4)):
        path += "/" + seg
    params = draw(st.lists(st.tuples(st.sampled_from(PARAMS) | st.text(max_size=8), text_value()), max_size=5))
    if params:
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    if draw(st.booleans()) and "?" in path:  # now and then an undecoded, raw query
        path += "&" + draw(st.sampled_from(["mac", "mac=", "=", "&&", "mac=%", "mac=%zz", "arch=%ff", "uuid"]))
    return path


HEADER_VALUE = st.sampled_from(["", "x", "127.0.0.1", "[::1]:80", "evil.example:99999", "a" * 300, "bytes=0-9",
                                "bytes=5-1", "bytes=-1", "bytes=0-0,1-1,2-2", "bytes=99999999999-", '"abc"', "*",
                                "52:54:00:00:00:01, 10.0.0.1, garbage", "gzip"]) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
HEADERS = st.dictionaries(
    st.sampled_from(["Host", "X-Forwarded-For", "Range", "If-None-Match", "If-Modified-Since", "If-Range",
                     "Accept-Encoding", "Accept", "X-Whatever"]),
    HEADER_VALUE,
    max_size=4,
)


def _core() -> BootCore:
    s = load_settings(EXAMPLE_CONFIG / "netbootd.toml")
    return BootCore(s, build_catalog(load_machines(s)))


@pytest.fixture(scope="module")
def stub():
    """The resource the daemon serves (make_site's: the Klein app behind GuardedResource)."""
    core = _core()
    return StubTreq(make_site(core, core.timeline, core.settings.http, lambda: {"status": "ok"}).resource)


@pytest.fixture
def failures():
    """Every event logged with a failure (an exception) while the test runs."""
    seen: list[dict] = []

    def observe(event):
        if event.get("log_failure") is not None:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def fetch(stub: StubTreq, method: str, url: str, headers: dict) -> tuple[int, bytes] | None:
    """(status, body); None for a file being streamed (twisted.web.static's producer needs the
    reactor, which StubTreq does not run: the daemon test below fetches files for real)."""
    results: list = []
    # not following redirects: werkzeug answers "//" in a path with a 308 built from the Host header
    stub.request(method, "http://netboot.test" + url, headers=headers, allow_redirects=False).addBoth(results.append)
    stub.flush()
    if not results:
        return None
    (response,) = results
    if not hasattr(response, "code"):
        response.raiseException()
    body: list = []
    stub.content(response).addBoth(body.append)
    stub.flush()
    return (response.code, body[0]) if body else None


def check(code: int, body: bytes, url: str, method: str = "GET") -> None:
    assert code != 500 or url.startswith("/httpboot"), (code, url, body[:300])
    if code == 500 and method != "HEAD":
        assert body.lstrip().startswith(b"{") and b'"error"' in body
    assert b"Traceback" not in body and b"Processing Failed" not in body, (url, body[:300])


@fuzz(500)
@given(url=target(), headers=HEADERS, method=st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "OPTIONS"]))
@example(url="/ipxe?mac=52:54:00:00:00:01&arch=efi64", headers={}, method="GET")
@example(url="/files/%2e%2e/netbootd.toml", headers={}, method="GET")
@example(url="/httpboot", headers={}, method="HEAD")
@example(url="/ipxe//.", headers={"Host": "[::1]:80"}, method="GET")
def test_routes(stub, failures, url, headers, method):
    answer = fetch(stub, method, url, headers)
    if answer is None:
        assert url.startswith(("/files/", "/boot/")), url
    else:
        check(*answer, url, method)
    assert not failures, [e.get("log_format") for e in failures]


def test_seeds_reach_the_routes(stub):
    """The generator is not vacuous: real answers come back for the seed URLs of configured machines."""
    assert fetch(stub, "GET", "/ipxe?mac=52:54:00:00:00:01&arch=efi64", {})[0] == 200
    assert fetch(stub, "GET", "/files/kairos/cloud-config.yaml", {}) is None  # streaming
    assert fetch(stub, "GET", "/files/%2e%2e/netbootd.toml", {})[0] in (403, 404)
    assert fetch(stub, "GET", "/ipxe/52:54:00:00:00:01", {"Host": "a" * 300})[0] == 400  # was a 500 (BadHost)
    assert fetch(stub, "GET", "/files/%ff", {})[0] == 400
    assert fetch(stub, "GET", "/healthz", {})[0] == 200



# ------------------------------------------------------------------ the hot routes answer as Klein does

HOT_ROUTES = ["ipxe", "files", "host", "boot"]
_SIGNATURE = re.compile(rb"exp=\d+&sig=[0-9a-f]+|booty/\d+-[0-9a-f]+")


@pytest.fixture(scope="module")
def twins():
    """The daemon's resource (netbootd.http.hot in front of Klein) and the Klein app alone, on one core."""
    from netbootd.http.app import BootApp, HttpError
    from netbootd.http.guard import GuardedResource
    from netbootd.http.hot import HotRoutes

    core = _core()
    app = BootApp(core, core.timeline, lambda: {"status": "ok"})
    hot = StubTreq(GuardedResource(HotRoutes(app, app.app.resource(), HttpError)))
    klein = StubTreq(GuardedResource(app.app.resource()))
    return hot, klein


def answer_of(stub: StubTreq, method: str, url: str, headers: dict):
    """(status, content-type, body with signatures blanked: they carry the second they were made)."""
    results: list = []
    stub.request(method, "http://netboot.test" + url, headers=headers, allow_redirects=False).addBoth(results.append)
    stub.flush()
    if not results:
        return None  # a file being streamed (see fetch)
    (response,) = results
    body: list = []
    stub.content(response).addBoth(body.append)
    stub.flush()
    ctype = response.headers.getRawHeaders(b"content-type", [None])[0]
    return response.code, ctype, _SIGNATURE.sub(b"SIGNED", body[0]) if body else None


@st.composite
def hot_target(draw) -> str:
    path = "/" + draw(st.sampled_from(HOT_ROUTES))
    for seg in draw(st.lists(segment(), max_size=3)):
        path += "/" + seg
    params = draw(st.lists(st.tuples(st.sampled_from(PARAMS), text_value()), max_size=3))
    if params:
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return path


@fuzz(400)
@given(url=hot_target(), headers=HEADERS, method=st.sampled_from(["GET", "HEAD", "POST"]))
@example(url="/ipxe?mac=52:54:00:00:00:01&arch=efi64", headers={}, method="GET")
@example(url="/ipxe/52-54-00-00-00-01", headers={}, method="HEAD")
@example(url="/ipxe", headers={"Host": "boot.example:8080"}, method="GET")
@example(url="/ipxe/52:54:00:00:00:01", headers={"Host": "a" * 300}, method="GET")
@example(url="/files/kairos/%2e%2e/x", headers={}, method="GET")
@example(url="/files/kairos//cloud-config.yaml", headers={}, method="GET")
@example(url="/boot/undionly.kpxe/", headers={}, method="GET")
@example(url="/ipxe/a/b", headers={}, method="GET")
def test_hot_routes_answer_as_klein_does(twins, failures, url, headers, method):
    """netbootd.http.hot routes /ipxe, /files and /boot without Klein: same status, type and
    body as the Klein app gives for any URL, method and headers (Content-Length framing aside)."""
    hot, klein = twins
    assert answer_of(hot, method, url, headers) == answer_of(klein, method, url, headers), url
    assert not failures, [e.get("log_format") for e in failures]


# ------------------------------------------------------------------ raw bytes against the daemon

METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"G\x00T", b"", b"CONNECT", b"PRI", b"GET GET"])
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/9", b"", b"http/1.1", b"HTTP/1.1x"])
RAW_HEADER = st.one_of(
    st.sampled_from([b"Host: x", b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 1, 1",
                     b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Expect: 100-continue",
                     b"Connection: close", b"Range: bytes=0-1", b": empty", b"No-Colon", b"X: \x00", b" folded",
                     b"\tfolded", b"Host: " + b"h" * 5000]),
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


@st.composite
def raw_request(draw) -> bytes:
    line = draw(METHODS) + b" " + draw(target()).encode("utf-8", "replace") + b" " + draw(VERSIONS)
    head = b"\r\n".join([line, *draw(st.lists(RAW_HEADER, max_size=6))])
    end = draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n\r\nhello", b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"\r\n"]))
    return head + end


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the request is complete: whatever it is, the daemon must answer or close
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def test_raw_requests_against_the_daemon(daemon_factory):
    d = daemon_factory(extra_settings='[registry]\nallowed = ["127.0.0.1:9"]\n')  # /image never leaves this host
    d.config.write_text(d.config.read_text().replace("[http]\n", "[http]\nrate_limit = 0\n", 1))
    (d.files / "kairos").mkdir()
    (d.files / "kairos" / "cloud-config.yaml").write_text("#cloud-config\n")
    (d.machines / "default.toml").write_text('[boot]\nchain = "http://x/y"\n')
    d.start()
    answered = 0

    @settings(max_examples=EXAMPLES or 200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw_request())
    def feed(data):
        nonlocal answered
        reply = exchange(d.http_port, data)
        if not reply:
            return  # closed without an answer: fine for what cannot be parsed at all
        answered += 1
        status = reply.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.") and status[9:12].isdigit(), reply[:200]
        # the one 500 is /httpboot's contract answer (boot-operator's), as JSON (no body to a HEAD)
        assert status[9:12] != b"500" or (b" /httpboot" in data and b"Content-Type: application/json" in reply), reply[:500]
        assert b"Traceback" not in reply and b"Processing Failed" not in reply, reply[:500]

    feed()
    assert answered
    assert d.get("/healthz").status_code == 200
    assert d.proc.poll() is None
    assert "Traceback" not in d.log() and "Unhandled" not in d.log()
