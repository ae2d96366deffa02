"""Which settings a reload (SIGHUP) applies to the running daemon, and which wait for a restart.

A setting is live when everything that reads it can be handed the new value without closing a
socket or losing state: the log level, the addresses put in answers, URL lifetimes, rate limits and
caps, the loader binaries, the dashboard's credentials. The rest (ports, listen addresses,
interfaces, directories, the state store, the registry client, the log format) is read once, when
the listeners and stores are made: a reload keeps their running values and logs that they need a
restart. docs/operations/reload.md lists both; netbootd.toml marks the restart ones "(restart)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from netbootd.config.settings import Settings

# Dotted keys, or a table name for every key in it.
LIVE = frozenset({
    "log.level",
    "advertise", "advertise6",
    "http.public_url", "http.signed_url_ttl", "http.callback_url_ttl",
    "http.rate_limit", "http.rate_burst", "http.max_transfers", "http.max_queued", "http.queue_timeout",
    "http.stall_timeout", "http.max_url_length", "http.max_header_bytes", "http.max_headers",
    "tftp.max_transfers", "tftp.timeout", "tftp.retries", "tftp.max_blksize", "tftp.rate_limit", "tftp.rate_burst",
    "ipxe", "grub", "uki",
    "ui.auth_file",
    "shutdown_grace",
})  # fmt: skip


def is_live(key: str) -> bool:
    return key in LIVE or key.split(".", 1)[0] in LIVE


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def flatten(settings: Settings) -> dict[str, Any]:
    """Every setting by its dotted key ("http.port"), as JSON values (the management API sends this)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(Settings):
        if field.name == "source":
            continue
        value = getattr(settings, field.name)
        if attrs.has(type(value)):
            for sub in attrs.fields(type(value)):
                out[f"{field.name}.{sub.name}"] = _plain(getattr(value, sub.name))
        else:
            out[field.name] = _plain(value)
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ, in the settings' own order."""
    return [key for key in new if old.get(key) != new[key]] + [key for key in old if key not in new]


@attrs.frozen
class Reload:
    """What a reread settings file does to the running settings."""

    settings: Settings  # the running settings with the live changes applied
    applied: tuple[str, ...]  # live keys that changed: in effect now
    restart: tuple[str, ...]  # keys that changed but keep their running value until a restart


def plan_reload(running: Settings, new: Settings) -> Reload:
    """The running settings, with what `new` changes in live keys; the rest kept (and named)."""
    keys = changed_keys(flatten(running), flatten(new))
    applied = tuple(k for k in keys if is_live(k))
    merged = running
    for key in applied:
        merged = _set(merged, key, _get(new, key))
    return Reload(attrs.evolve(merged, source=new.source), applied, tuple(k for k in keys if not is_live(k)))


def _get(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _set(obj: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if not rest:
        return attrs.evolve(obj, **{head: value})
    return attrs.evolve(obj, **{head: _set(getattr(obj, head), rest, value)})
