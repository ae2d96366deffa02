"""Talking to a daemon inside a network namespace from the process that made it.

A lab's netbootd listens inside its namespace, which has no route to the host (on purpose: nothing
the lab does touches the host's networks). To read its boot timeline without a subprocess per
request, one thread enters the namespace with setns(2) — which changes only the calling thread —
and makes its HTTP requests there. (os.setns arrives in Python 3.12; on 3.11 it is libc's, via ctypes.)
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import httpx

CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (made with `ip netns add`)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)
        if setns is not None:
            setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsClient:
    """HTTP GETs made from inside a namespace, by one worker thread that lives there."""

    def __init__(self, netns: str, timeout: float = 5.0) -> None:
        self._jobs: queue.Queue[tuple[str, queue.Queue] | None] = queue.Queue()
        self._timeout = timeout
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(netns, ready), daemon=True, name=f"netns-{netns}")
        self._thread.start()
        err = ready.get()
        if err is not None:
            raise err

    def _run(self, netns: str, ready: queue.Queue) -> None:
        try:
            enter_netns(netns)
            client = httpx.Client(timeout=self._timeout)
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        with client:
            while (job := self._jobs.get()) is not None:
                url, reply = job
                try:
                    reply.put(client.get(url))
                except httpx.HTTPError as exc:
                    reply.put(exc)

    def get(self, url: str) -> httpx.Response:
        """GET `url` from inside the namespace; raises httpx.HTTPError like httpx would."""
        reply: queue.Queue[Any] = queue.Queue()
        self._jobs.put((url, reply))
        result = reply.get(timeout=self._timeout + 5)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)


class TimelineWatch:
    """Polls one machine's /machines/<mac> and hands each new event to `on_event`."""

    def __init__(self, client: NetnsClient, base_url: str, mac: str, on_event: Callable[[dict], None]) -> None:
        self.client, self.url, self.on_event = client, f"{base_url}/machines/{mac}", on_event
        self.events: list[dict] = []

    def poll(self) -> None:
        try:
            r = self.client.get(self.url)
        except httpx.HTTPError:
            return  # netbootd not up yet, or busy: the next poll catches up
        if r.status_code != 200:
            return
        events = r.json().get("events", [])
        # the timeline keeps the last 64 events per machine: match the new ones by time and stage
        seen = {(e.get("time"), e.get("stage")) for e in self.events}
        for event in events:
            if (event.get("time"), event.get("stage")) not in seen:
                self.events.append(event)
                self.on_event(event)
