"""The dashboard's HTTP side: a Klein app on the management listener (ui.listen); its only writes
are the lifecycle actions (POST /api/lifecycle).

Pages (static HTML + vanilla JS from netbootd/ui/static, shipped in the package: no CDN, boot
networks are often offline): / (fleet), /machine/<mac>, /health. Their data: /api/fleet,
/api/events (Server-Sent Events, netbootd.ui.live), /api/machine/<mac>, /api/health; and
/metrics (Prometheus). For scripts and `netbootd status`: /machines, /machines/<mac> (the boot
timeline: never on the boot network's port), /healthz, /api/settings (the running settings).
Every request passes the gate first: credentials when ui.auth_file is set,
and without them a Host header that names the listener by address or localhost (a web page the
operator visits cannot turn a name of its own into 127.0.0.1 and read an unauthenticated dashboard:
DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
from importlib import resources
from typing import Any, ClassVar

import attrs
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import server
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException

from netbootd.model import normalize_mac
from netbootd.ui.auth import Authenticator

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = {"fleet": "index.html", "machine": "machine.html", "health": "health.html"}
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}
MAX_ACTION_BYTES = 64 * 1024
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page assets, read once from the installed package (importlib.resources: works from a
    wheel, a checkout or a zip)."""
    out = {}
    for entry in resources.files("netbootd.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


class UiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(request, doc: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(doc, separators=(",", ":")).encode()


@attrs.frozen
class DashboardApp:
    dashboard: Any  # netbootd.ui.Dashboard
    static: dict[str, tuple[bytes, str]]

    app: ClassVar[Klein] = Klein()

    @app.handle_errors(UiError)
    def _error(self, request, failure):
        request.setResponseCode(failure.value.status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return failure.value.message.encode() + b"\n"

    def _asset(self, request, name: str) -> bytes:
        found = self.static.get(name)
        if found is None:
            raise UiError(404, f"no such file: {name}")
        body, content_type = found
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-cache")
        return body

    # -------------------------------------------------------------- pages

    @app.route("/", methods=["GET"])
    def fleet_page(self, request):
        return self._asset(request, PAGES["fleet"])

    @app.route("/machine/<ident>", methods=["GET"])
    def machine_page(self, request, ident: str):
        return self._asset(request, PAGES["machine"])

    @app.route("/health", methods=["GET"])
    def health_page(self, request):
        return self._asset(request, PAGES["health"])

    @app.route("/static/<name>", methods=["GET"])
    def asset(self, request, name: str):
        return self._asset(request, name)

    # -------------------------------------------------------------- data

    @app.route("/api/fleet", methods=["GET"])
    def fleet(self, request):
        return _json(request, self.dashboard.fleet_doc())

    @app.route("/api/events", methods=["GET"])
    def events(self, request):
        return EventStream(self.dashboard.hub)  # a resource: Klein would finish the request itself

    @app.route("/api/machine/<ident>", methods=["GET"])
    def machine(self, request, ident: str):
        try:
            mac = normalize_mac(ident)
        except ValueError:
            raise UiError(400, f"{ident!r} is not a MAC address") from None
        d = self.dashboard.machine_doc(mac)
        d.addCallback(lambda doc: _json(request, doc) if doc is not None else self._unknown(request, mac))
        return d

    @staticmethod
    def _unknown(request, mac: str) -> bytes:
        return _json(request, {"error": f"netbootd has no file for {mac} and has not seen it"}, 404)

    @app.route("/api/health", methods=["GET"])
    def health(self, request):
        return _json(request, self.dashboard.health_doc())

    # -------------------------------------------------------------- for scripts and `netbootd status`

    @app.route("/machines", methods=["GET"])
    def timeline(self, request):
        """The boot timeline: every machine seen, and what no machine could be found for."""
        timeline = self.dashboard.timeline
        return _json(request, {"machines": timeline.summary(), "unattributed": timeline.unattributed()})

    @app.route("/machines/<ident>", methods=["GET"])
    def timeline_machine(self, request, ident: str):
        """A machine's timeline, and its downloads still running (what `netbootd try` shows as progress)."""
        entry = self.dashboard.timeline.machine(ident)
        try:
            downloads = self.dashboard.downloads(normalize_mac(ident))
        except ValueError:
            downloads = []
        if entry is None and downloads:  # a download that has no event yet (one is filed when it ends)
            entry = {"mac": normalize_mac(ident), "ip": "", "stage": "", "last_seen": None, "events": []}
        if entry is None:
            raise UiError(404, f"netbootd has seen nothing of {ident}")
        return _json(request, {**entry, "downloads": downloads})

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        return _json(request, self.dashboard.health())

    @app.route("/api/settings", methods=["GET"])
    def settings(self, request):
        """The settings the daemon runs with, and those changed in its file that wait for a restart
        (`netbootd check --diff-running`)."""
        return _json(request, self.dashboard.settings_doc())

    # -------------------------------------------------------------- lifecycle (the management API)

    @app.route("/api/lifecycle", methods=["GET"])
    def lifecycle(self, request):
        return _json(request, self.dashboard.lifecycle_doc())

    @app.route("/api/lifecycle/<ident>", methods=["GET"])
    def lifecycle_machine(self, request, ident: str):
        try:
            mac = normalize_mac(ident)
        except ValueError:
            raise UiError(400, f"{ident!r} is not a MAC address") from None
        return self.dashboard.lifecycle_machine(mac).addCallback(lambda doc: _json(request, doc))

    @app.route("/api/lifecycle", methods=["POST"])
    def lifecycle_action(self, request):
        """{"action": "reprovision" | "done" | "failed", and "macs": [...] | "profile": P | "state": S}"""
        self._writable(request)
        try:
            doc = json.loads(request.content.read(MAX_ACTION_BYTES + 1)[:MAX_ACTION_BYTES] or b"{}")
        except ValueError as exc:
            raise UiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UiError(400, "the body is a JSON object")
        who = self.dashboard.auth.who(request.getHeader(b"authorization")) or "loopback (no ui.auth_file)"
        source = request.getClientAddress().host
        try:
            d = self.dashboard.lifecycle_act(doc, who, source)
        except ValueError as exc:
            raise UiError(400, str(exc)) from None
        return d.addCallback(lambda result: _json(request, result, 200 if not result["errors"] else 503))

    def _writable(self, request) -> None:
        """Actions change what machines boot: with credentials (or on a loopback listener without
        ui.auth_file), as JSON (a browser cannot send that cross-site without a preflight this
        server never grants), and never from another site's page."""
        if not self.dashboard.auth.enabled and not self.dashboard.on_loopback:
            raise UiError(403, "actions need ui.auth_file when ui.listen is not a loopback address (SECURITY.md)")
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise UiError(415, "actions are JSON: Content-Type: application/json")
        site = (request.getHeader(b"sec-fetch-site") or b"").lower()
        if site in (b"cross-site", b"same-site"):
            raise UiError(403, "refused: a request from another site's page")
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if origin and origin != "null" and origin.split("://", 1)[-1] != host:
            raise UiError(403, f"refused: Origin {origin[:100]!r} is not this dashboard ({host[:100]})")

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest()


class EventStream(Resource):
    """/api/events: stays open; netbootd.ui.live writes to it."""

    isLeaf = True

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request):
        if self.hub.open(request) is None:
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"10")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"too many dashboards are watching; close one, or read /api/fleet\n"
        return server.NOT_DONE_YET


def _host_is_address(host: str) -> bool:
    """Host header names the server by IP address (any port) or localhost."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower().rstrip(".") in _LOCAL_NAMES:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Gate(Resource):
    """Wraps the Klein app's resource: authentication, the Host check, security headers, and
    werkzeug's own refusals as a plain 400 (see netbootd.http.guard for why)."""

    isLeaf = True

    def __init__(self, inner: Resource, auth: Authenticator) -> None:
        super().__init__()
        self._inner = inner
        self.auth = auth

    def render(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if not self.auth.allows(request.getHeader(b"authorization")):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", self.auth.challenge())
            return self._plain(request, "credentials required (ui.auth_file)")
        if not self.auth.enabled:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if host and not _host_is_address(host):
                request.setResponseCode(421, b"Misdirected Request")
                return self._plain(request, f"Host {host[:100]!r}: without ui.auth_file the dashboard answers only "
                                            "requests naming it by address or localhost (set ui.auth_file to use a name)")
        try:
            return self._inner.render(request)
        except HTTPException as exc:
            request.setResponseCode(exc.code or 400)
            return self._plain(request, f"bad request: {exc.name}")

    @staticmethod
    def _plain(request, message: str) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode() + b"\n"


class QuietSite(server.Site):
    """No access log line per request: a dashboard polls, and its streams are long-lived."""

    def log(self, request) -> None:
        pass


def make_ui_site(dashboard, auth: Authenticator) -> server.Site:
    app = DashboardApp(dashboard, load_static())
    site = QuietSite(Gate(app.app.resource(), auth))
    site.displayTracebacks = False
    site.noisy = False
    return site
