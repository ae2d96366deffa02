"""`netbootd check --diff-running`: what a reload (SIGHUP) of the running daemon would do with the
settings file as it is now: the settings it would apply, and those that wait for a restart. The
running settings come from the management API (GET /api/settings on ui.listen)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import httpx

from netbootd.config.live import changed_keys, flatten, is_live
from netbootd.config.settings import Settings


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) or value else '""'


def diff_lines(running: dict[str, Any], in_file: dict[str, Any], command_line: Iterable[str] = ()) -> list[str]:
    """One line per setting that differs: `reload  key: old → new`, or `restart key: ...`;
    `command_line`: keys the daemon's command line set (serve --log-format), whatever the file says."""
    lines = []
    for key in changed_keys(running, in_file):
        if key in command_line:
            continue
        when = "reload " if is_live(key) else "restart"
        lines.append(f"{when}  {key}: {_show(running.get(key))} → {_show(in_file.get(key))}")
    return lines


def diff_running(settings: Settings, url: str | None, user: str | None) -> int:
    """0: the daemon runs what the file says; 1: it differs (the lines say how); 2: cannot ask."""
    from netbootd.manage import ManageError, auth_kwargs, listener_url

    try:
        base = url.rstrip("/") if url else listener_url(settings)
    except ManageError as exc:
        print(f"netbootd check: {exc}", file=sys.stderr)
        return 2
    try:
        r = httpx.get(f"{base}/api/settings", timeout=5, **auth_kwargs(user))
    except (httpx.HTTPError, ManageError) as exc:
        print(f"netbootd check: cannot read the running settings from {base}/api/settings: {exc} "
              "(is netbootd running, with ui.listen? pass --url)", file=sys.stderr)
        return 2
    if r.status_code != 200:
        print(f"netbootd check: {base}/api/settings answered {r.status_code}: {r.text.strip()[:200]}", file=sys.stderr)
        return 2
    doc = r.json()
    lines = diff_lines(doc["settings"], flatten(settings), doc.get("command_line", ()))
    running_from = doc.get("source") or "built-in defaults"
    if not lines:
        print(f"the running daemon ({running_from}) runs these settings: a reload changes no setting")
        return 0
    print(f"the running daemon ({running_from}) differs from {settings.source}:")
    for line in lines:
        print(f"  {line}")
    live = sum(1 for line in lines if line.startswith("reload"))
    print(f"{live} setting(s) a reload (systemctl reload netbootd, SIGHUP) applies, {len(lines) - live} that need a "
          "restart")
    return 1
