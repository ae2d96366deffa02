"""The per-client token bucket (netbootd.ratelimit) and the HTTP policy object, on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as TwistedClock

from netbootd.config.settings import HttpSettings
from netbootd.http.limits import HttpLimits, Refusal
from netbootd.ratelimit import PerClientLimiter, retry_after


class Clock:
    """A settable clock (what reactor.seconds is in the daemon)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate():
    clock = Clock()
    limiter = PerClientLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    wait = limiter.take("a")
    assert wait == pytest.approx(0.1)
    assert limiter.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.1
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 10  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(6)].count(0.0) == 5


def test_refused_requests_do_not_consume_tokens():
    clock = Clock()
    limiter = PerClientLimiter(rate=1, burst=1, clock=clock)
    assert limiter.take("a") == 0.0
    for _ in range(100):
        assert limiter.take("a") > 0
    clock.now += 1.0
    assert limiter.take("a") == 0.0  # one second later: allowed again, however much it asked


def test_steady_rate_at_the_limit_is_never_refused():
    clock = Clock()
    limiter = PerClientLimiter(rate=50, burst=200, clock=clock)
    for _ in range(10_000):
        assert limiter.take("10.0.0.1") == 0.0
        clock.now += 1 / 50


def test_disabled():
    limiter = PerClientLimiter(rate=0, burst=1, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.take(str(i % 3)) == 0.0 for i in range(1000))
    assert len(limiter) == 0


def test_memory_is_bounded_and_forgets_the_oldest():
    clock = Clock()
    limiter = PerClientLimiter(rate=1, burst=1, clock=clock, max_clients=64)
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
        assert len(limiter) <= 64
    limiter.take("recent")
    assert limiter.take("recent") > 0  # a client seen just now keeps its (empty) bucket


def test_retry_after():
    assert retry_after(0.01) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.2) == 2
    assert retry_after(float("inf")) == 1


def test_http_limits_rate_limit():
    clock = TwistedClock()
    limits = HttpLimits(HttpSettings(rate_limit=1, rate_burst=2, max_transfers=1), clock)
    limits.admit("a", b"/files/x")
    limits.admit("b", b"/ipxe?mac=1")
    limits.admit("a", b"/httpboot")
    with pytest.raises(Refusal) as limited:
        limits.admit("a", b"/healthz")
    assert limited.value.status == 429 and limited.value.retry == 1
    assert "rate limit exceeded" in limited.value.message
    clock.advance(1)
    limits.admit("a", b"/files/x")


class FakeRequest:
    """What HttpLimits uses of a twisted.web Request; no real part needed for queue order on a fake clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sentLength = 0
        self.code: int | None = None
        self.body = b""
        self.headers: dict[bytes, bytes] = {}
        self.channel = type("Channel", (), {"site": None})()
        self._finish: list[Deferred] = []

    def getClientAddress(self):
        return type("Addr", (), {"host": "192.0.2.1"})()

    def notifyFinish(self) -> Deferred:
        d = Deferred()
        self._finish.append(d)
        return d

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, k: bytes, v: bytes) -> None:
        self.headers[k] = v

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        for d in self._finish:
            d.callback(None)
        self._finish = []

    def lose(self) -> None:
        for d in self._finish:
            d.errback(Exception("connection lost"))
        self._finish = []


def test_http_limits_downloads_over_the_cap_wait_their_turn():
    clock = TwistedClock()
    limits = HttpLimits(HttpSettings(max_transfers=2, max_queued=3, queue_timeout=5, stall_timeout=0), clock)
    started: list[str] = []

    def run(name: str, finish_at_once: bool = False) -> FakeRequest:
        request = FakeRequest(name)

        def process() -> None:
            started.append(name)
            if finish_at_once:
                request.finish()

        limits.run_transfer(request, process)
        return request

    a, b = run("a"), run("b")
    c, d, e = run("c"), run("d"), run("e")
    assert started == ["a", "b"] and len(limits.queue) == 3
    with pytest.raises(Refusal) as busy:
        run("f")
    assert busy.value.status == 503 and busy.value.reason == "busy" and busy.value.retry == 1
    d.lose()  # gave up while waiting: skipped, never started
    a.finish()
    assert started == ["a", "b", "c"] and limits.transfers == 2
    clock.advance(4)
    b.finish()
    assert started == ["a", "b", "c", "e"]
    assert limits.transfers == 2 and not limits.queue
    # downloads that end at once (a 304, a 404) free their slot for the next in line, in order
    waiting = [run(n, finish_at_once=True) for n in ("g", "h", "i")]
    c.finish()
    assert started[-3:] == ["g", "h", "i"] and limits.transfers == 1 and not limits.queue
    assert all(r.code is None for r in waiting)
    # a download that waits longer than queue_timeout is answered 503
    run("j")
    late = run("k")
    assert started[-1] == "j" and limits.transfers == 2
    clock.advance(5)
    assert late.code == 503 and late.headers[b"retry-after"] == b"1" and b"no download slot free within 5 s" in late.body
    assert "k" not in started and not limits.queue
    e.finish()
    assert limits.transfers == 1


def test_http_limits_which_paths_are_transfers():
    limits = HttpLimits(HttpSettings(), TwistedClock())
    assert limits.is_transfer(b"/files/a/b")
    assert limits.is_transfer(b"/boot/undionly.kpxe")
    assert limits.is_transfer(b"/image")
    assert limits.is_transfer(b"/httpboot/org/os/sha256-ab.efi")
    assert not limits.is_transfer(b"/httpboot")
    assert not limits.is_transfer(b"/ipxe/52-54-00-12-34-56")
    assert not limits.is_transfer(b"")
    assert not limits.is_transfer(b"files")


class Download:
    """Stands in for a twisted.web Request in HttpLimits' stall watch: only what it reads
    (sentLength, path, client address, channel.transport: its buffer, abortConnection)."""

    def __init__(self, backlog: bytes = b"data waiting for the client") -> None:
        self.sentLength = 0
        self.path = b"/files/big"
        self.aborted = False
        self.channel = self
        self.transport = self
        self.dataBuffer = backlog

    def getClientAddress(self):
        return type("Address", (), {"host": "10.0.0.9"})()

    def abortConnection(self) -> None:
        self.aborted = True


def test_stalled_downloads_are_cut_and_moving_ones_are_not():
    clock = TwistedClock()
    limits = HttpLimits(HttpSettings(stall_timeout=30), clock)
    moving, stalled = Download(), Download()
    for d in (moving, stalled):
        limits.transfer_started(d)
    for _ in range(20):  # 100 seconds
        moving.sentLength += 1
        clock.advance(5)
    assert stalled.aborted and not moving.aborted
    limits.transfer_ended(stalled)  # what notifyFinish does after the abort
    limits.transfer_ended(moving)
    assert limits.transfers == 0
    clock.advance(100)
    assert not clock.getDelayedCalls()  # no timer left running once nothing is downloading


def test_a_download_waiting_on_us_is_not_cut():
    """Nothing sent for long, but nothing waiting for the client either (a slow registry): kept."""
    clock = TwistedClock()
    limits = HttpLimits(HttpSettings(stall_timeout=30), clock)
    waiting = Download(backlog=b"")
    limits.transfer_started(waiting)
    clock.advance(300)
    assert not waiting.aborted
    waiting.dataBuffer = b"now the client stops reading"
    for _ in range(5):
        clock.advance(5)
    assert not waiting.aborted  # the clock started when data began to wait
    for _ in range(3):
        clock.advance(5)
    assert waiting.aborted


def test_stall_watch_off():
    clock = TwistedClock()
    limits = HttpLimits(HttpSettings(stall_timeout=0), clock)
    d = Download()
    limits.transfer_started(d)
    clock.advance(10_000)
    assert not d.aborted and not clock.getDelayedCalls()
