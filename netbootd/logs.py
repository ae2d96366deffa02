"""Structured logging on twisted.logger.

Code logs events with fields: `log.info("answered", mac=..., arch=..., offered=...)`.
The message is a plain sentence; the fields carry the facts. Two renderings:
- text (a terminal): `2026-11-22T10:00:00Z info dhcp answered mac=52:54:00:12:34:56 arch=efi64`
- json (journald, containers): one JSON object per line with every field.

Any field whose name is in SECRET_FIELDS is never rendered (Ignition contents, credentials).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

SECRET_FIELDS = frozenset({"password", "token", "secret", "authorization", "ignition", "credentials"})

# twisted.logger's own bookkeeping keys: not user fields.
_INTERNAL = frozenset(
    {
        "log_logger",
        "log_level",
        "log_namespace",
        "log_source",
        "log_format",
        "log_time",
        "log_failure",
        "log_system",
        "log_text",
        "log_io",
        "log_legacy",
        "log_trace",
        "log_flattened",
        "log_id",
        "log_timestamp",
        "format",
        "message",
        "system",
        "time",
        "isError",
        "why",
        "failure",
        "log_stack",
    }
)


def get_logger(namespace: str) -> Logger:
    return Logger(namespace=namespace)


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in event.items():
        if key in _INTERNAL or key.startswith("log_") or key in SECRET_FIELDS:
            continue
        out[key] = value
    return out


def _message(event: dict[str, Any]) -> str:
    fmt = event.get("log_format")
    if fmt is None and "message" in event:
        # legacy twisted.python.log events
        return " ".join(str(m) for m in event["message"])
    if type(fmt) is str and "{" not in fmt and "}" not in fmt:
        return fmt  # netbootd's messages are plain sentences: what formatEvent would return, without parsing
    text = formatEvent(event)
    return text


def _short_namespace(event: dict[str, Any]) -> str:
    ns = event.get("log_namespace") or "-"
    return ns.removeprefix("netbootd.")


def _level(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    return level.name if isinstance(level, type(LogLevel.info)) else "info"


_NEEDS_QUOTES = re.compile(r'[ "=\n]').search


def _render_value(value: Any) -> str:
    text = value if type(value) is str else str(value)
    if not text or _NEEDS_QUOTES(text):
        return json.dumps(text)
    return text


_stamp: tuple[int, str] = (-1, "")  # the last second formatted: a busy daemon logs many lines a second


def _timestamp(when: float) -> str:
    global _stamp
    second = int(when)
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _stamp[1]


def format_text(event: dict[str, Any], message: str | None = None) -> str:
    ts = _timestamp(event.get("log_time", time.time()))
    parts = [ts, _level(event), _short_namespace(event), _message(event) if message is None else message]
    for key, value in event.items():  # _fields(event), in one pass
        if key in _INTERNAL or key.startswith("log_") or key in SECRET_FIELDS:
            continue
        parts.append(f"{key}={_render_value(value)}")
    failure = event.get("log_failure")
    line = " ".join(parts)
    if failure is not None:
        line += "\n" + failure.getTraceback()
    return line


def format_json(event: dict[str, Any], message: str | None = None) -> str:
    record: dict[str, Any] = {
        "time": round(event.get("log_time", time.time()), 3),
        "level": _level(event),
        "component": _short_namespace(event),
        "msg": _message(event) if message is None else message,
    }
    for k, v in _fields(event).items():
        record[k] = v if isinstance(v, (int, float, bool, type(None))) else str(v)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"))


# Twisted's own chatter on every port opened or closed: one ephemeral port per TFTP transfer
# would put two of these in the journal per transfer. Only these exact legacy lines are dropped.
_TWISTED_NOISE = re.compile(r"^(\((UDP|TCP) Port \d+ Closed\)|\S+ starting on \d+|(Starting|Stopping) (factory|protocol) .*)$")


def _is_noise(event: dict[str, Any], message: str | None = None) -> bool:
    if event.get("log_level") not in (None, LogLevel.info):
        return False
    if message is None:
        message = _message(event) if ("message" in event or "log_format" in event) else ""
    return bool(_TWISTED_NOISE.match(message))


# Twisted's routine lines that are debug for netbootd, logged at info: an HTTP client (a firmware
# that stopped reading, a browser's idle keep-alive) timed out: normal, nothing to act on.
_TWISTED_DEBUG = ("Timing out client",)


def _demoted(event: dict[str, Any]) -> dict[str, Any]:
    """The event, at debug level if it is one of _TWISTED_DEBUG's at info."""
    fmt = event.get("log_format")
    if event.get("log_level") is LogLevel.info and type(fmt) is str and fmt.startswith(_TWISTED_DEBUG):
        return {**event, "log_level": LogLevel.debug}
    return event


@implementer(ILogObserver)
class LineObserver:
    def __init__(self, stream: IO[str], fmt: str = "text") -> None:
        self._stream = stream
        self._format = format_json if fmt == "json" else format_text

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            message = _message(event)  # once: the noise filter and the line both need it
            if _is_noise(event, message if ("message" in event or "log_format" in event) else ""):
                return
            self._stream.write(self._format(event, message) + "\n")
            self._stream.flush()
        except Exception:  # noqa: S110 - a log line must never take the daemon down
            pass


_destination: IO[str] | None = None  # where start_logging sent the log
_predicate: LogLevelFilterPredicate | None = None  # its level filter (set_level changes it)


def start_logging(fmt: str = "text", level: str = "info", stream: IO[str] | None = None) -> None:
    global _destination, _predicate
    _destination = stream or sys.stderr
    predicate = _predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    filtered = FilteringLogObserver(LineObserver(_destination, fmt), [predicate])

    @implementer(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        filtered(_demoted(event))

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)


def set_level(level: str) -> None:
    """log.level, changed on a running daemon (a reload): the next event is filtered by it."""
    if _predicate is not None:
        _predicate.setLogLevelForNamespace("", LogLevel.levelWithName(level))


def logs_to_stderr() -> bool:
    """The log goes to stderr (a terminal, or journald reading it): a fatal error logged there
    need not be printed there again."""
    return _destination is not None and _destination is sys.stderr


class RateLimiter:
    """Allow at most `burst` events per `period` seconds per key; counts what it suppressed.

    Used so a flood of garbage packets cannot flood the journal: the first few are logged,
    then one summary line per period says how many were suppressed.
    """

    def __init__(self, burst: int = 5, period: float = 60.0, clock=time.monotonic) -> None:
        self.burst = burst
        self.period = period
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self.burst:
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False

    def tracked(self) -> int:
        """How many keys it keeps a window for (not __len__: an empty limiter must stay truthy)."""
        return len(self._windows)

    def take_suppressed(self, key: str) -> int:
        return self.suppressed.pop(key, 0)

    def log(self, emit: Callable[..., Any], key: str, message: str, **fields: Any) -> None:
        """`emit(message, **fields)` unless `key` is over its rate; the first line after
        suppressed ones says how many (`suppressed=`)."""
        if self.allow(key):
            suppressed = self.take_suppressed(key)
            if suppressed:
                fields["suppressed"] = suppressed
            emit(message, **fields)
