"""`netbootd status [MAC] [--watch]`: the boot timeline of a running daemon, as a terminal table."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx


def _age(now: float, t: float | None) -> str:
    if not t:
        return "-"
    d = max(0.0, now - t)
    return f"{d:.0f}s ago" if d < 120 else (f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.0f}h ago")


def _details(event: dict[str, Any]) -> str:
    skip = {"time", "stage", "ip"}
    text = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    if event.get("stage") != "http":
        return text
    # a download first says what it was (kernel, initrd, squashfs, preseed.cfg), a 404 that it was missing
    name = str(event.get("role") or str(event.get("file", "")).rsplit("/", 1)[-1])
    head = ("MISSING " if event.get("status") == 404 else "") + name
    return f"{head.strip()}  {text}" if head.strip() else text


UNATTRIBUTED_SHOWN = 10  # the newest; /machines has the rest


def render_summary(doc: dict[str, Any], now: float) -> str:
    rows = [("MAC", "IP", "STAGE", "LAST SEEN", "EVENTS")]
    for m in doc.get("machines", []):
        rows.append((m["mac"], m.get("ip") or "-", m.get("stage") or "-", _age(now, m.get("last_seen")), str(m["events"])))
    if len(rows) == 1:
        text = "netbootd has seen no machine yet\n"
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        text = "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)
    if "unattributed" not in doc:  # a netbootd from before the list
        return text
    return text + _render_unattributed(doc["unattributed"], now)


def _render_unattributed(events: list[dict[str, Any]], now: float) -> str:
    """Requests no machine could be found for (unknown, stale or shared address), newest last."""
    if not events:
        return "\nunattributed: none\n"
    shown = events[-UNATTRIBUTED_SHOWN:]
    more = f", the newest {len(shown)} shown (all in /machines)" if len(events) > len(shown) else ""
    lines = [f"\nunattributed: {len(events)} event(s) no machine could be found for{more}"]
    for e in shown:
        details = _details({k: v for k, v in e.items() if k != "why"})
        lines.append(f"  {_age(now, e.get('time')):>8}  {e.get('ip') or '-':<15} {e.get('stage', '?'):<9} {details}"
                     f"  ({e.get('why', '')})")
    return "\n".join(lines) + "\n"


def render_health(doc: dict[str, Any]) -> str:
    """The same problems /healthz lists, one per line: what, which machines, what is wrong."""
    head = f"netbootd {doc.get('status', '?')}: {doc.get('summary', '')}"
    life = doc.get("lifecycle") or {}
    states = {k: v for k, v in (life.get("states") or {}).items() if v}
    if states:  # machines that provision once ([lifecycle] once = true), by state
        head += "; provision once: " + ", ".join(f"{n} {state}" for state, n in states.items())
    problems = doc.get("problems") or []
    if not problems:
        return head + ", no problems\n"
    lines = [f"{head}, {len(problems)} problem(s):"]
    for p in problems:
        machines = ", ".join(p.get("machines") or []) or "-"
        lines.append(f"  {p['kind']:<16} {p['what']}")
        lines.append(f"  {'':<16} machines: {machines}")
        lines.append(f"  {'':<16} {p['message']}")
    return "\n".join(lines) + "\n"


def render_machine(doc: dict[str, Any], now: float) -> str:
    lines = [f"{doc['mac']}  ip {doc.get('ip') or '-'}  stage {doc.get('stage') or '-'}"]
    start = doc["events"][0]["time"] if doc.get("events") else now
    for e in doc.get("events", []):
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        lines.append(f"  {stamp}  +{e['time'] - start:7.2f}s  {e['stage']:<9} {_details(e)}")
    return "\n".join(lines) + "\n"


def status(url: str, mac: str | None, watch: float | None, user: str | None = None) -> int:
    """`url`: the management listener (ui.listen), where the timeline and /healthz are."""
    from netbootd.manage import auth_kwargs

    auth = auth_kwargs(user)
    while True:
        path = f"/machines/{mac}" if mac else "/machines"
        try:
            r = httpx.get(url.rstrip("/") + path, timeout=5, **auth)
        except httpx.HTTPError as exc:
            print(f"netbootd status: cannot reach {url}: {exc} (is netbootd running? pass --url)", file=sys.stderr)
            return 2
        if r.status_code == 404 and mac and "ui.listen" not in r.text:  # not the boot port's "not here"
            text = f"netbootd has seen nothing of {mac} yet\n"
        elif r.status_code == 401:
            print(f"netbootd status: {url} asks for credentials (ui.auth_file): set NETBOOTD_TOKEN, or pass --user "
                  "with NETBOOTD_PASSWORD", file=sys.stderr)
            return 2
        elif r.status_code != 200:
            print(f"netbootd status: {url}{path} answered {r.status_code}: {r.text.strip()}", file=sys.stderr)
            return 2
        else:
            text = render_machine(r.json(), time.time()) if mac else render_summary(r.json(), time.time())
        if not mac:
            try:
                text = render_health(httpx.get(url.rstrip("/") + "/healthz", timeout=5, **auth).json()) + "\n" + text
            except (httpx.HTTPError, ValueError) as exc:
                text = f"netbootd health: cannot read {url}/healthz: {exc}\n\n" + text
        if watch is None:
            sys.stdout.write(text)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + url + "\n" + text)
        sys.stdout.flush()
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0
