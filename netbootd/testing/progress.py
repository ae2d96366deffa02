"""How `netbootd try` shows large downloads (a squashfs, an initrd, an image layer): lines while
they run, from the downloads netbootd reports still running for the machine (/machines/<mac>), and
a size-and-time line when one is done (its timeline event)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

FIRST_AFTER = 1.0  # seconds a download runs before its first progress line (small files never get one)
EVERY = 2.0  # seconds between two progress lines of one download


def file_name(path: str) -> str:
    """What a download is called on a line: its file name; an image layer by its media type."""
    parts = urlsplit(path)
    layer = (parse_qs(parts.query).get("layerName") or [""])[0]
    if layer:
        return layer.rsplit(".", 1)[-1]
    return unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.path


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f}"


def size(n: float) -> str:
    """A finished download's size: MB, or kB for a small file (a preseed, a cloud-config)."""
    return f"{megabytes(n)} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def running_line(download: dict[str, Any]) -> str:
    """'initrd.gz  12.0/40.8 MB  (29%)  35.2 MB/s' for a download still running."""
    sent, total, seconds = download.get("sent") or 0, download.get("total"), download.get("seconds") or 0.0
    size = f"{megabytes(sent)}/{megabytes(total)} MB  ({100 * sent / total:.0f}%)" if total else f"{megabytes(sent)} MB"
    rate = f"  {sent / seconds / 1e6:.1f} MB/s" if seconds > 0 else ""
    return f"{file_name(str(download.get('path', '')))}  {size}{rate}"


def done_line(event: dict[str, Any]) -> str:
    """'initrd.gz  40.8 MB in 1.09 s (37.4 MB/s)' for a finished download (a timeline event, whose
    `mbps` is megabytes a second)."""
    seconds = event.get("seconds")
    took = f" in {seconds:.2f} s" if isinstance(seconds, (int, float)) else ""
    rate = f" ({event['mbps']} MB/s)" if event.get("mbps") is not None else ""
    return f"{file_name(str(event.get('path', '')))}  {size(event.get('bytes') or 0)}{took}{rate}"


class ProgressLines:
    """Which running downloads get a line now: each after FIRST_AFTER seconds, then every EVERY
    seconds (netbootd is polled more often than that)."""

    def __init__(self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.say = say
        self.clock = clock
        self.last: dict[str, float] = {}  # path → when its last line was said

    def update(self, downloads: list[dict[str, Any]]) -> None:
        now = self.clock()
        for download in downloads:
            path = str(download.get("path", ""))
            if (download.get("seconds") or 0.0) < FIRST_AFTER or now - self.last.get(path, -EVERY) < EVERY:
                continue
            self.last[path] = now
            self.say(running_line(download))
