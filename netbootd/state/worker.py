"""One thread of the store's own that runs every database call, in order, and hands each result
to the reactor thread as a Deferred.

Its own thread rather than the reactor's threadpool: an SQLite connection belongs to the thread
that opened it, the calls of one store must not overtake each other, and a database that hangs
stalls this thread only, never the threadpool that other parts of netbootd share (nor DHCP)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from netbootd.state.model import StoreUnavailable

T = TypeVar("T")

_STOP = object()


class DbThread:
    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped: Deferred[None] = Deferred()
        self._started = False
        self._closing = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._closing:
            return defer.fail(StoreUnavailable("the state store is stopped"))
        if not self._started:
            self._started = True
            self._thread.start()
        d: Deferred[T] = Deferred()
        self._queue.put((d, fn, args))
        return d

    def stop(self, timeout: float) -> Deferred[None]:
        """Fires when the calls queued before it have run, or after `timeout` seconds if one hangs
        (the thread is a daemon: it does not keep the process alive)."""
        self._closing = True
        if not self._started:
            return defer.succeed(None)
        self._queue.put(_STOP)
        return within(self._stopped, timeout, self.reactor)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            d, fn, args = item
            try:
                value = fn(*args)
            except BaseException:
                self.reactor.callFromThread(d.errback, Failure())
            else:
                self.reactor.callFromThread(d.callback, value)
        self.reactor.callFromThread(self._stopped.callback, None)



def within(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[None]:
    """Fires with None when `d` has, or after `seconds` (for shutdown: a hung thread is left behind)."""
    result: Deferred[None] = Deferred()

    def expire() -> None:
        if not result.called:
            result.callback(None)

    timer = reactor.callLater(seconds, expire)

    def done(_: object) -> None:
        if timer.active():
            timer.cancel()
        expire()

    d.addBoth(done)
    return result
