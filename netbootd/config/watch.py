"""Reload the machines directory when it changes (inotify), debounced.

Covers: in-place edits (IN_CLOSE_WRITE), editors' write-to-temp-then-rename (IN_MOVED_TO),
deletes, chmod, and the atomic `..data` symlink swap of a mounted Kubernetes ConfigMap
(a rename of `..data` in the watched directory). Any event reloads the whole directory:
it is cheap and it cannot miss an indirect change (a profile or an Ignition file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet import inotify
from twisted.python import filepath

from netbootd.logs import get_logger

log = get_logger("netbootd.config")

_MASK = (
    inotify.IN_CLOSE_WRITE
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_ATTRIB
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
)


class DirectoryWatcher:
    def __init__(self, reactor, directory: Path, on_change: Callable[[str], None], delay: float = 0.05) -> None:
        self._reactor = reactor
        self._dir = directory
        self._on_change = on_change
        self._delay = delay  # coalesces the burst of events one save produces
        self._pending = None
        self._notifier: inotify.INotify | None = None
        self._watching = False
        self._failing = False  # warned that the directory cannot be watched (once per outage)
        self._retry = None

    def start(self) -> None:
        self._watch()

    def stop(self) -> None:
        for call in (self._pending, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._close()

    def _close(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None and notifier.connected:
            notifier.loseConnection()

    def _watch(self) -> None:
        # A new INotify each time: Twisted's stops reading for good after any IN_DELETE_SELF (of
        # this directory or of any subdirectory such as profiles/), and a watch of a directory
        # renamed away would keep reporting changes in its new place.
        self._retry = None
        self._close()
        try:
            if not self._dir.is_dir():  # (a recursive watch of a file would watch nothing, silently)
                raise NotADirectoryError(f"{self._dir} is missing or not a directory")
            self._notifier = inotify.INotify(self._reactor)
            self._notifier.startReading()
            self._notifier.watch(
                filepath.FilePath(str(self._dir)),
                mask=_MASK,
                autoAdd=True,
                recursive=True,
                callbacks=[self._event],
            )
            self._watching = True
            self._failing = False
        except (OSError, inotify.INotifyError) as exc:
            # Directory missing or unreadable: the last good configuration keeps serving;
            # look again every second so it is picked up when it comes back.
            self._close()
            if not self._failing:
                log.warn("cannot watch machines directory, retrying", directory=str(self._dir), error=str(exc))
            self._failing = True
            self._watching = False
            self._retry = self._reactor.callLater(1.0, self._rewatch)

    def _rewatch(self) -> None:
        self._watch()
        if self._watching:
            self._schedule("directory is back")

    def _event(self, _ignored, path: filepath.FilePath, mask: int) -> None:
        where = path.path.decode("utf-8", "replace") if isinstance(path.path, bytes) else path.path
        ours = Path(where) == self._dir
        name = path.basename()
        if isinstance(name, bytes):  # inotify hands back bytes paths
            name = name.decode("utf-8", "replace")
        if mask & inotify.IN_DELETE_SELF or (mask & inotify.IN_MOVE_SELF and ours):
            # This directory or a subdirectory is gone: reload, and watch again with a new INotify
            # (at once for a subdirectory; this directory itself is looked for every second).
            self._watching = False
            self._schedule("directory removed" if ours else f"directory {name} removed")
            if self._retry is None:
                self._retry = self._reactor.callLater(1.0 if ours else 0, self._rewatch)
            return
        # Not the file name: it is often an editor's temp file; the reload names the machine files that changed.
        self._schedule("file change")

    def _schedule(self, why: str) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.reset(self._delay)
            return
        self._pending = self._reactor.callLater(self._delay, self._fire, why)

    def _fire(self, why: str) -> None:
        self._pending = None
        self._on_change(why)
