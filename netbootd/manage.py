"""`netbootd state` and `netbootd reprovision`: the lifecycle through a running daemon's management
API on ui.listen (/api/lifecycle), never its database directly, so every netbootd of an HA pair and
its dashboards see the same change at once.

Credentials: ui.auth_file's. NETBOOTD_TOKEN (a bearer token), or --user with the password from
NETBOOTD_PASSWORD (or asked for on a terminal). Without ui.auth_file the daemon takes actions only
on a loopback listener.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Any

import httpx


class ManageError(Exception):
    """The daemon could not be asked, or refused; the message says what to do."""


def _auth(user: str | None) -> dict[str, str] | tuple[str, str] | None:
    token = os.environ.get("NETBOOTD_TOKEN")
    if token:
        return {"authorization": f"Bearer {token}"}
    if user:
        password = os.environ.get("NETBOOTD_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise ManageError("--user needs a password: set NETBOOTD_PASSWORD (no terminal to ask on)")
            password = getpass.getpass(f"password for {user}: ")
        return (user, password)
    return None


def listener_url(settings) -> str:
    """http://HOST:PORT of ui.listen, as a client on this host reaches it; ManageError when it is off."""
    from netbootd.config.settings import parse_listen

    if not settings.ui.listen:
        raise ManageError(f"ui.listen is off in {settings.source or 'the built-in defaults'}: the management API "
                          "lives there (set ui.listen, or pass --url)")
    host, port = parse_listen(settings.ui.listen)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def auth_kwargs(user: str | None) -> dict[str, Any]:
    """httpx keyword arguments carrying the credentials (NETBOOTD_TOKEN, or --user's), for
    commands that only read (status, check --diff-running)."""
    auth = _auth(user)
    if isinstance(auth, dict):
        return {"headers": auth}
    return {"auth": auth} if auth is not None else {}


def _call(method: str, url: str, user: str | None, json: Any = None) -> Any:
    auth = _auth(user)
    headers = {"accept": "application/json"}
    if isinstance(auth, dict):
        headers.update(auth)
        auth = None
    try:
        r = httpx.request(method, url, json=json, headers=headers, auth=auth, timeout=30)
    except httpx.HTTPError as exc:
        raise ManageError(f"cannot reach netbootd's management listener at {url}: {exc} (is ui.listen set and "
                          "netbootd running? --url names another address)") from None
    if r.status_code == 401:
        raise ManageError("netbootd asks for credentials (ui.auth_file): set NETBOOTD_TOKEN, or pass --user "
                          "with NETBOOTD_PASSWORD")
    if r.status_code >= 400 and r.status_code != 503:
        raise ManageError(f"netbootd refused ({r.status_code}): {r.text.strip()}")
    return r.json()


def _age(now: float, t: float | None) -> str:
    if not t:
        return "-"
    d = max(0.0, now - t)
    return f"{d:.0f}s ago" if d < 120 else (f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago")


def render_states(doc: dict[str, Any], macs: list[str], now: float) -> str:
    rows = [("MAC", "MACHINE", "PROFILE", "STATE", "SINCE", "BY", "FROM")]
    for m in doc.get("machines", []):
        if macs and m["mac"] not in macs:
            continue
        rows.append((m["mac"], m.get("name") or "-", m.get("profile") or "-", m.get("state") or "-",
                     _age(now, m.get("since")), m.get("by") or "-", m.get("source") or "-"))
    store = doc.get("store", {})
    head = "" if store.get("ok", True) else f"state store UNAVAILABLE: {store.get('reason')}\n"
    if len(rows) == 1:
        return head + "no machine provisions once ([lifecycle] once = true) and none has a stored state\n"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return head + "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def state(base: str, macs: list[str], user: str | None) -> int:
    doc = _call("GET", f"{base}/api/lifecycle", user)
    sys.stdout.write(render_states(doc, macs, time.time()))
    return 0


def act(base: str, action: str, selection: dict[str, Any], user: str | None) -> int:
    doc = _call("POST", f"{base}/api/lifecycle", user, {"action": action, **selection})
    for row in doc.get("changed", []):
        print(f"{row['mac']}: {row['state']}")
    for row in doc.get("errors", []):
        print(f"{row['mac']}: NOT CHANGED: {row['error']}", file=sys.stderr)
    if not doc.get("changed") and not doc.get("errors"):
        print(f"no machine matched {selection}", file=sys.stderr)
        return 1
    return 1 if doc.get("errors") else 0


def daemon_states(settings, mac: str):
    """The machine's lifecycle state as the running daemon holds it (its management API on
    ui.listen), for `netbootd explain`; without a daemon to ask, none (shown as provisioning, and
    explain says so)."""
    from netbootd.config.settings import parse_listen
    from netbootd.core.lifecycle import SnapshotStore
    from netbootd.state.model import Record, State, StoreStatus

    where = "no ui.listen"
    if settings.ui.listen:
        host, port = parse_listen(settings.ui.listen)
        host = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
        where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        try:
            headers = {"authorization": f"Bearer {os.environ['NETBOOTD_TOKEN']}"} if "NETBOOTD_TOKEN" in os.environ else {}
            r = httpx.get(f"{where}/api/lifecycle", timeout=2, headers=headers)
            if r.status_code == 200:
                doc = r.json()
                store = doc.get("store", {})
                records = {row["mac"]: Record(row["mac"], State(row["state"]), row.get("since", 0.0), row.get("by", ""),
                                              row.get("source", ""), 0)
                           for row in doc.get("machines", []) if row.get("since") and row.get("state") in set(State)}
                status = StoreStatus(bool(store.get("ok", True)), store.get("reason", ""), time.time(),
                                     bool(store.get("loaded", True)), f"the daemon at {where}")
                return SnapshotStore(records, status)
            where += f" (answered {r.status_code})"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            where += f" ({type(exc).__name__})"
    return SnapshotStore({}, StoreStatus.up("none"), note=f"not asked of a running netbootd ({where}): shown as a "
                                                          "new machine's")
