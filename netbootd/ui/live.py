"""Live updates for the dashboard: Server-Sent Events, coalesced, bounded per client.

Each client gets, in order: a `snapshot` (every row, the health) on connect, then `diff`
messages (changed rows, removed MACs) at most every TICK seconds, whatever the storm size: the
rows are rebuilt from the fleet's dirty set once per tick and serialized once for all clients.
`health` follows whenever the problems list changes, and a comment line keeps idle connections
open through proxies.

A client that cannot keep up never makes netbootd buffer without bound for it: each stream is a
push producer of its HTTP connection, whose socket gets a fixed send buffer (SEND_BUFFER, not the
kernel's autotuned megabytes). Once that and Twisted's write buffer are full (pauseProducing),
diffs wait in a queue of at most QUEUE_BYTES; past that they are dropped and the client is marked
stale, and when it drains (resumeProducing) it gets one fresh snapshot instead of the backlog (a
resync). A client stalled for STALL seconds is disconnected (EventSource reconnects by itself).
At most MAX_CLIENTS streams.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from netbootd.logs import get_logger
from netbootd.ui.fleet import Fleet

log = get_logger("netbootd.ui")

TICK = 0.25  # seconds between pushes: at most 4 updates a second per client
# At most this share of the reactor's time goes to live updates: after a tick that took t seconds
# the next waits t / MAX_DUTY (a storm's 20 ms tick: updates once a second, not four times).
MAX_DUTY = 0.02
KEEPALIVE = 15.0
STALL = 30.0  # a client that has not drained its buffer for this long is cut
MAX_CLIENTS = 16
SEND_BUFFER = 256 * 1024  # bytes: each dashboard socket's kernel send buffer
QUEUE_BYTES = 512 * 1024  # diffs queued for a paused client before it is resynced instead
RETRY_MS = 2000  # EventSource's reconnection delay


# What the dashboard costs the daemon, for /metrics and bench/storm.py --dashboard
clients_gauge = Gauge("netbootd_ui_clients", "Dashboards connected to the live stream")
update_seconds = Histogram("netbootd_ui_update_seconds",
                           "Reactor time of one live-update tick (rows rebuilt, serialized, written)",
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25))
resyncs = Counter("netbootd_ui_resyncs_total", "Snapshots sent to dashboards that fell behind, instead of their backlog")


def sse(event: str, data: Any) -> bytes:
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


@implementer(IPushProducer)
class Stream:
    """One dashboard's event stream."""

    def __init__(self, hub: Hub, request) -> None:
        self.hub = hub
        self.request = request
        self.paused_at: float | None = None
        self.queue: list[bytes] = []  # diffs held while paused
        self.queued = 0
        self.stale = False
        self.closed = False
        self.sent = 0  # messages written (for tests and the bench)

    # IPushProducer: the HTTP connection tells us when its buffers are full and drained
    def pauseProducing(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.hub.clock()

    def resumeProducing(self) -> None:
        self.paused_at = None
        if self.closed:
            return
        if self.stale:
            self.stale = False
            resyncs.inc()
            self.write(self.hub.snapshot())  # what it missed, as one message
        else:
            queue, self.queue, self.queued = self.queue, [], 0
            for data in queue:
                self.write(data)

    def stopProducing(self) -> None:
        self.closed = True

    def push(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused_at is not None:
            if not self.stale and self.queued + len(data) <= QUEUE_BYTES:
                self.queue.append(data)
                self.queued += len(data)
            else:
                self.stale = True  # dropped: it gets a snapshot when it drains
                self.queue, self.queued = [], 0
            if self.hub.clock() - self.paused_at > STALL:
                log.info("dashboard client stalled, disconnecting", client=self._client(), seconds=STALL)
                self.closed = True
                self.request.channel.transport.abortConnection()
            return
        self.write(data)

    def write(self, data: bytes) -> None:
        self.sent += 1
        self.request.write(data)

    def _client(self) -> str:
        try:
            return str(self.request.getClientAddress().host)
        except Exception:
            return ""


def _fixed_send_buffer(request) -> None:
    """A fixed kernel send buffer: without one, Linux grows it up to tcp_wmem's maximum (4 MiB)
    for a client that does not read, and that memory is spent before Twisted ever pauses us."""
    handle = getattr(request.channel.transport, "getHandle", None)
    if handle is None:
        return
    try:
        handle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError as exc:
        log.debug("cannot set the dashboard socket's send buffer", error=str(exc))


class Hub:
    """The dashboard's live streams and the tick that feeds them."""

    def __init__(self, fleet: Fleet, health: Callable[[], dict[str, Any]], problems: Callable[[], object],
                 reactor, clock: Callable[[], float]) -> None:
        self.fleet = fleet
        self.health = health
        self.problems = problems  # the service's current problems list (a new object when it changes)
        self.reactor = reactor
        self.clock = clock
        self.streams: list[Stream] = []
        self.loop: task.LoopingCall | None = None
        self._problems_seen: object = None
        self._quiet_since = 0.0
        self._snapshot: bytes | None = None
        self._next_tick = 0.0

    def snapshot(self) -> bytes:
        """Every row and the health; the rows serialized once until something changes (the
        message's `now` is always this moment's: the page's clocks are set from it)."""
        if self._snapshot is None:
            self._snapshot = json.dumps({"machines": list(self.fleet.rows.values()), "health": self.health_summary()},
                                        separators=(",", ":")).encode()
        return b'event: snapshot\ndata: {"now":%.3f,%s\n\n' % (self.clock(), self._snapshot[1:])

    def health_summary(self) -> dict[str, Any]:
        doc = self.health()
        return {k: doc.get(k) for k in ("status", "summary", "problems", "held", "config_errors")}

    def open(self, request) -> Stream | None:
        """A new dashboard: its stream, or None when MAX_CLIENTS are connected."""
        if len(self.streams) >= MAX_CLIENTS:
            return None
        if not self.streams:
            self.fleet.start()
            self._snapshot = None
            self._problems_seen = self.problems()
            self.loop = task.LoopingCall(self.tick)
            self.loop.clock = self.reactor
            self.loop.start(TICK, now=False)
        stream = Stream(self, request)
        _fixed_send_buffer(request)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx in front: pass events through at once
        request.registerProducer(stream, True)
        request.write(f"retry: {RETRY_MS}\n\n".encode())
        stream.write(self.snapshot())
        self.streams.append(stream)
        clients_gauge.set(len(self.streams))
        request.notifyFinish().addBoth(lambda _: self._gone(stream))
        log.info("dashboard client connected", client=stream._client(), clients=len(self.streams))
        return stream

    def _gone(self, stream: Stream) -> None:
        stream.closed = True
        if stream in self.streams:
            self.streams.remove(stream)
            clients_gauge.set(len(self.streams))
            log.info("dashboard client disconnected", client=stream._client(), clients=len(self.streams))
        if not self.streams:
            self.close()

    def close(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        self.fleet.stop()
        self._snapshot = None

    def tick(self) -> None:
        """At most once per TICK: what changed, once for everyone."""
        started = time.perf_counter()
        if started < self._next_tick:
            return
        self._tick()
        took = time.perf_counter() - started
        update_seconds.observe(took)
        self._next_tick = started + took / MAX_DUTY

    def _tick(self) -> None:
        messages = []
        changed, removed = self.fleet.changes()
        now = self.clock()
        if changed or removed:
            self._snapshot = None
            messages.append(sse("diff", {"now": now, "rows": changed, "removed": removed}))
        problems = self.problems()
        if problems is not self._problems_seen:
            self._problems_seen = problems
            self._snapshot = None
            messages.append(sse("health", self.health_summary()))
        if not messages:
            if now - self._quiet_since < KEEPALIVE:
                return
            messages.append(b": keepalive\n\n")
        self._quiet_since = now
        data = b"".join(messages)
        for stream in list(self.streams):
            stream.push(data)

    def finish_all(self) -> None:
        """Shutdown: end every stream."""
        for stream in list(self.streams):
            if not stream.closed:
                stream.closed = True
                try:
                    stream.request.unregisterProducer()
                    stream.request.finish()
                except Exception as exc:  # the connection may be gone already
                    log.debug("dashboard stream already gone", error=str(exc))
        self.streams = []
        self.close()

