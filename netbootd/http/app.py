"""The HTTP edge: Klein routes that translate requests into calls on the boot core.

Routes (docs/http-routes.md): /ipxe, /ipxe/<mac-or-uuid>, /ignition, /ignition/<mac-or-uuid>,
/httpboot, /booty/<mac>.bty, /files/<path>, /host/<path>, /boot/<ipxe binary>, /uki/<mac>/<arch>.efi,
/beacon, /healthz, /metrics (while ui.metrics_on_http_port lasts). Nothing of the operator's:
/machines (the timeline) answers 404 naming ui.listen, where it is served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import server
from werkzeug.exceptions import NotFound

from netbootd import metrics as core_metrics
from netbootd.config.settings import HttpSettings
from netbootd.config.templates import TemplateError
from netbootd.core import files as core_files
from netbootd.core.ident import mac_in_path
from netbootd.core.interfaces import CallbackRefused, Denied, HttpCore, NoScript
from netbootd.core.lifecycle import StoreUnavailable
from netbootd.core.timeline import Timeline
from netbootd.http import limits, metrics
from netbootd.http.files import CONTENT_TYPES, FileResource, PartsResource
from netbootd.http.guard import GuardedResource
from netbootd.http.hot import HotRoutes
from netbootd.logs import RateLimiter, get_logger
from netbootd.model import Arch, normalize_mac, normalize_uuid

log = get_logger("netbootd.http")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_AUTHORITY = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9a-fA-F:.]+\](:\d{1,5})?$")
_PLATFORM_ARCH = {
    ("pcbios", "i386"): Arch.BIOS,
    ("pcbios", "x86_64"): Arch.BIOS,
    ("efi", "i386"): Arch.EFI32,
    ("efi", "x86_64"): Arch.EFI64,
    ("efi", "arm32"): Arch.ARM32,
    ("efi", "arm64"): Arch.ARM64,
}


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode())
    if not values:
        return ""
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HttpError(400, f"parameter {name} is not UTF-8") from None


def _identity(text: str) -> tuple[str | None, str | None]:
    """A path or query id: a MAC (any form) or an SMBIOS UUID."""
    try:
        return normalize_mac(text), None
    except ValueError:
        pass
    try:
        return None, normalize_uuid(text)
    except ValueError:
        raise HttpError(400, f"{text!r} is neither a MAC address nor a UUID") from None


def _query_identity(request) -> tuple[str | None, str | None]:
    mac_text, uuid_text = _arg(request, "mac"), _arg(request, "uuid")
    mac = uuid = None
    if mac_text:
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            raise HttpError(400, f"mac={mac_text!r} is not a MAC address") from None
    if uuid_text:
        try:
            uuid = normalize_uuid(uuid_text)
        except ValueError:
            uuid = None  # iPXE sends an empty or odd ${uuid} on some firmware: the MAC decides then
    if not mac and not uuid:
        raise HttpError(400, "give mac=<MAC> or uuid=<UUID>")
    return mac, uuid


def _arch(request) -> Arch | None:
    """The client's architecture from the query (arch=, or iPXE's platform/buildarch); None: not said."""
    text = _arg(request, "arch")
    if text:
        try:
            return Arch(text)
        except ValueError:
            raise HttpError(400, f"arch={text!r}; expected one of {', '.join(a.value for a in Arch)}") from None
    platform, buildarch = _arg(request, "platform"), _arg(request, "buildarch")
    if platform or buildarch:
        arch = _PLATFORM_ARCH.get((platform, buildarch))
        if arch is None:
            raise HttpError(400, f"unknown platform/buildarch {platform}/{buildarch}")
        return arch
    return None  # boot-operator's clients send no arch: the machine file's, else x86-64 UEFI


def _text(request, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    request.setHeader(b"content-type", content_type.encode())
    return body.encode()


def _json(request, doc: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return (json.dumps(doc, indent=1) + "\n").encode()


@attrs.frozen
class BootApp:
    core: HttpCore
    timeline: Timeline  # where this edge records what each machine fetched
    health: Callable[[], dict[str, Any]] = lambda: {"status": "ok"}
    images: Any = None  # netbootd.images.proxy.ImageProxy: /image and /httpboot/<repo>/sha256-<hex>.efi
    # None: /metrics is served here; else why not (it moved to the management listener, ui.listen)
    metrics_elsewhere: str | None = None
    management: str = ""  # ui.listen as HOST:PORT a client on this host reaches ("": off), named by 404s

    app: ClassVar[Klein] = Klein()

    def host(self, request) -> str:
        """How this client reached us: its Host header, checked, else the socket's address."""
        header = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if header and _AUTHORITY.match(header):
            return header
        local = request.getHost()
        return f"{local.host}:{local.port}"

    @app.handle_errors(HttpError)
    def _http_error(self, request, failure):
        err = failure.value
        request.setResponseCode(err.status)
        return _text(request, err.message + "\n")

    # -------------------------------------------------------------- iPXE

    @app.route("/ipxe", methods=["GET"])
    def ipxe_stub_or_query(self, request):
        if not request.args:
            return _text(request, self.core.chain_stub(self.host(request)))
        mac, uuid = _query_identity(request)
        return self._script(request, mac, uuid, _arch(request))

    @app.route("/ipxe/<ident>", methods=["GET"])
    def ipxe_by_id(self, request, ident: str):
        mac, uuid = _identity(ident)
        return self._script(request, mac, uuid, _arch(request))

    def _script(self, request, mac, uuid, asked: Arch | None):
        machine = self.core.find(mac, uuid)
        arch = self.core.machine_arch(machine, asked) if machine is not None else (asked or Arch.EFI64)
        try:
            script = self.core.script(mac, uuid, arch, self.host(request))
        except NoScript as exc:
            log.info("no script", mac=mac or "", uuid=uuid or "", arch=arch.value, reason=str(exc))
            raise HttpError(404, f"no boot script for this machine: {exc}") from None
        except (TemplateError, core_files.FileError) as exc:
            log.error("script failed", mac=mac or "", uuid=uuid or "", error=str(exc))
            raise HttpError(500, f"the machine's configuration failed to render: {exc}") from None
        ip = request.getClientAddress().host
        # with mac= the event is this machine's and teaches its address; by UUID only, the
        # address decides (the timeline is keyed by MAC)
        self.timeline.record("script", mac=mac, ip=ip, arch=arch.value, machine=machine.name if machine else None)
        log.info("script sent", mac=mac or "", uuid=uuid or "", arch=arch.value,
                 machine=machine.name if machine else "", kind=machine.boot.kind.value if machine else "")
        return _text(request, script)

    # -------------------------------------------------------------- Ignition

    @app.route("/ignition", methods=["GET"])
    def ignition_query(self, request):
        return self._ignition(request, *_query_identity(request), _arg(request, "exp"), _arg(request, "sig"))

    @app.route("/ignition/<ident>", methods=["GET"])
    def ignition_by_id(self, request, ident: str):
        return self._ignition(request, *_identity(ident), _arg(request, "exp"), _arg(request, "sig"))

    # -------------------------------------------------------------- lifecycle callbacks

    @app.route("/lifecycle/<outcome>", methods=["GET", "POST"])
    def lifecycle(self, request, outcome: str):
        """{{ done_url }} / {{ failed_url }}: GET or POST (curl, wget, a kickstart %post, a preseed
        late_command, an Ignition unit), idempotent; answered once the state is stored."""
        mac, uuid = _query_identity(request)
        client = request.getClientAddress().host
        reason = _arg(request, "reason")[:200]
        try:
            d = self.core.lifecycle_callback(outcome, mac, uuid, _arg(request, "exp"), _arg(request, "sig"), client,
                                             reason)
        except Denied as exc:
            log.warn("lifecycle report refused", mac=mac or "", uuid=uuid or "", outcome=outcome, client=client,
                     reason=str(exc))
            raise HttpError(403, f"refused: {exc}") from None
        except CallbackRefused as exc:
            log.warn("lifecycle report changes nothing", mac=mac or "", outcome=outcome, client=client, why=str(exc))
            raise HttpError(exc.status, str(exc)) from None
        except StoreUnavailable as exc:
            raise self._unavailable(request, exc) from None

        def stored(record):
            log.info("lifecycle report stored", mac=mac or "", outcome=outcome, state=record.state, client=client,
                     note=reason)
            return _text(request, f"ok: {mac or uuid} is {record.state}\n")

        return d.addCallbacks(stored, lambda f: self._store_failed(request, f))

    def _unavailable(self, request, exc: Exception) -> HttpError:
        request.setHeader(b"retry-after", b"10")
        log.error("lifecycle report not stored: the state store is unavailable; the installer will retry",
                  error=str(exc))
        return HttpError(503, f"not stored, retry: {exc}")

    def _store_failed(self, request, failure):
        failure.trap(StoreUnavailable)
        raise self._unavailable(request, failure.value)

    def _done_on(self, request, mac, uuid, event: str, body):
        """Ignition fetched or a beacon: when that marks the machine done, answer once it is stored."""
        try:
            d = self.core.lifecycle_event(mac, uuid, event, request.getClientAddress().host)
        except StoreUnavailable as exc:
            raise self._unavailable(request, exc) from None
        if d is None:
            return body
        return d.addCallbacks(lambda _record: body, lambda f: self._store_failed(request, f))

    def _ignition(self, request, mac, uuid, exp, sig):
        try:
            body = self.core.ignition(mac, uuid, exp, sig)
        except Denied as exc:
            log.warn("ignition refused", mac=mac or "", uuid=uuid or "", client=request.getClientAddress().host,
                     reason=str(exc))
            raise HttpError(403, f"refused: {exc}") from None
        if body is None:
            raise HttpError(404, "no Ignition config for this machine")
        self.timeline.record("ignition", mac=mac, ip=request.getClientAddress().host, size=len(body))
        log.info("ignition sent", mac=mac or "", uuid=uuid or "", size=len(body))
        request.setHeader(b"content-type", b"application/json")
        return self._done_on(request, mac, uuid, "ignition", body)

    # -------------------------------------------------------------- DHCP-extension JSON, BOOTy

    @app.route("/httpboot", methods=["GET"])
    def httpboot(self, request):
        idents = []
        for header in request.requestHeaders.getRawHeaders(b"x-forwarded-for", []):
            idents += [p.strip() for p in header.decode("latin-1").split(",") if p.strip()]
        if _arg(request, "mac"):
            idents.append(_arg(request, "mac"))
        status, body = self.core.httpboot(idents, self.host(request))
        return _json(request, body, status)

    @app.route("/booty/<name>", methods=["GET"])
    def booty(self, request, name: str):
        return self._booty(request, None, name)

    @app.route("/booty/<token>/<name>", methods=["GET"])
    def booty_signed(self, request, token: str, name: str):
        return self._booty(request, token, name)

    def _booty(self, request, token: str | None, name: str):
        if not name.endswith(".bty"):
            raise HttpError(404, "BOOTy configs are named <mac>.bty")
        mac, _ = _identity(name[: -len(".bty")])
        if mac is None:
            raise HttpError(400, "BOOTy configs are named by MAC address")
        try:
            body = self.core.booty(mac, token)
        except Denied as exc:
            log.warn("booty refused", mac=mac, client=request.getClientAddress().host, reason=str(exc))
            raise HttpError(403, f"refused: {exc}") from None
        if body is None:
            raise HttpError(404, "no BOOTy config for this machine")
        log.info("booty sent", mac=mac)
        request.setHeader(b"content-type", b"application/json")
        return body

    # -------------------------------------------------------------- files

    @app.route("/files/<path:rel>", methods=["GET"])
    def files(self, request, rel: str):
        try:
            path = self.core.file_path(rel)
        except core_files.AccessDenied as exc:
            raise HttpError(403, f"refused: {exc}") from None
        except core_files.FileNotFound:
            raise HttpError(404, f"no file {rel!r} under the files root") from None
        return FileResource(path)

    @app.route("/uki/<ident>/<name>", methods=["GET"])
    def uki(self, request, ident: str, name: str):
        """The UKI netbootd assembles of a kernel machine's files for UEFI HTTP boot (`<arch>.efi`)."""
        mac, _ = _identity(ident)
        arch_text = name[: -len(".efi")] if name.endswith(".efi") else ""
        if mac is None or arch_text not in ("efi64", "arm64"):
            raise HttpError(404, "assembled UKIs are /uki/<mac>/efi64.efi or /uki/<mac>/arm64.efi")
        try:
            d = self.core.uki(mac, Arch(arch_text), self.host(request))
        except NoScript as exc:
            raise HttpError(404, f"no UKI for this machine: {exc}") from None
        except (TemplateError, core_files.FileError) as exc:
            log.error("uki failed", mac=mac, arch=arch_text, error=str(exc))
            raise HttpError(500, f"cannot assemble this machine's UKI: {exc}") from None

        def failed(failure):
            log.error("uki failed", mac=mac, arch=arch_text, error=str(failure.value))
            raise HttpError(500, f"cannot assemble this machine's UKI: {failure.value}")

        def serve(uki):
            return PartsResource(uki.head, uki.body.path, uki.body.data_start, uki.tail, CONTENT_TYPES[".efi"])

        return d.addCallbacks(serve, failed)

    @app.route("/host/<path:name>", methods=["GET"])
    def host_files(self, request, name: str):
        try:
            path = self.core.host_path(name)
        except core_files.AccessDenied as exc:
            raise HttpError(403, f"refused: {exc}") from None
        except core_files.FileNotFound:
            raise HttpError(404, f"no machine file names /{name}") from None
        return FileResource(path)

    @app.route("/boot/<path:name>", methods=["GET"])
    def binaries(self, request, name: str):
        try:
            path = self.core.binary_path(name)
        except core_files.AccessDenied as exc:
            raise HttpError(403, f"refused: {exc}") from None
        except core_files.FileNotFound:
            raise HttpError(404, f"no boot binary {name!r} (configured: {self.core.binary_names()})") from None
        return FileResource(path)

    # -------------------------------------------------------------- progress and health

    @app.route("/beacon", methods=["GET"])
    def beacon(self, request):
        mac, uuid = _query_identity(request)
        stage = _arg(request, "stage") or "unknown"
        if not re.match(r"^[a-z][a-z0-9-]{0,31}$", stage):
            raise HttpError(400, "stage is a short lower-case word")
        core_metrics.boot_beacons.labels(stage).inc()
        self.timeline.record("beacon", mac=mac, ip=request.getClientAddress().host, beacon=stage)
        machine = self.core.find(mac, uuid)
        log.info("boot progress", mac=mac or "", uuid=uuid or "", stage=stage,
                 machine=machine.name if machine else "")
        return self._done_on(request, mac, uuid, f"beacon:{stage}", _text(request, "ok\n"))

    # -------------------------------------------------------------- what is not here

    @app.route("/machines", methods=["GET"])
    @app.route("/machines/<path:rest>", methods=["GET"])
    def machines(self, request, rest: str = ""):
        """Every MAC, address and error this daemon has seen is the operator's, not the boot
        network's: the timeline is served on the management listener only."""
        raise HttpError(404, self._managed_elsewhere("the boot timeline (/machines)"))

    def _managed_elsewhere(self, what: str) -> str:
        if self.management:
            return f"{what} is served on the management listener, ui.listen ({self.management}), not on this port"
        return f"{what} is served on the management listener, which is off (set ui.listen)"

    @app.route("/", methods=["GET"])
    def root(self, request):
        where = (f"the dashboard, the boot timeline and the management API are on ui.listen ({self.management})"
                 if self.management else "the dashboard is off (ui.listen)")
        return _text(request, "netbootd: network-boot server. This port serves machines as they boot (scripts, "
                              f"files, Ignition, callbacks); {where}\n")

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        request.setResponseCode(404)
        path = request.path.decode("latin-1", "replace")[:200]
        return _text(request, f"404: netbootd serves nothing at {path} (GET / says what this port is)\n")

    # -------------------------------------------------------------- OCI image layers (netbootd.images)

    @app.route("/image", methods=["GET"])
    def image(self, request):
        args = (_arg(request, n) for n in ("imageName", "version", "layerName", "layerDigest", "arch"))
        return self._image_errors(self._images().layer(*args))

    @app.route("/httpboot/<path:rest>", methods=["GET"])
    def httpboot_uki(self, request, rest: str):
        return self._image_errors(self._images().uki(rest))

    def _images(self):
        if self.images is None:
            raise HttpError(404, "the image proxy is not enabled")
        return self.images

    @staticmethod
    def _image_errors(d):
        def convert(failure):
            err = failure.value
            if isinstance(getattr(err, "status", None), int) and hasattr(err, "message"):
                raise HttpError(err.status, err.message)  # RegistryError: 400/403/404/502/504
            return failure

        return d.addErrback(convert)

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        return _json(request, self.health())

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        if self.metrics_elsewhere is not None:
            raise HttpError(404, self.metrics_elsewhere)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest()


_ROUTES = {"ipxe", "ignition", "httpboot", "booty", "files", "host", "boot", "beacon", "healthz", "metrics", "image",
           "machines", "lifecycle", "uki"}
_TRANSFER_ROUTES = {"files", "host", "boot", "image", "httpboot", "uki"}  # downloads that go into the boot timeline
_MISSING_ROUTES = frozenset({"files", "host", "boot"})  # a 404 here is a file a machine wanted and did not get
MISSING_CLIENTS = 4096  # clients whose "file not found" lines are rate-limited apart
PROGRESS_MIN_BYTES = 32 * 1024 * 1024  # downloads larger than this log their progress
_route_counters: dict[tuple[str, int], tuple[Any, Any]] = {}  # bounded: _ROUTES (+ other) x status codes


class MetricsSite(server.Site):
    """A Site that counts requests and bytes per route (first path segment, bounded set), files
    downloads into the boot timeline (named by what they are for the machine: the core's
    `download`), and files there too a request for a file that is not there (404 on /files,
    /boot), with a log line rate-limited per client. It knows which requests are still running
    (graceful shutdown waits for them; large ones log their progress)."""

    def __init__(self, resource, timeline: Timeline | None = None, core: HttpCore | None = None,
                 active: dict | None = None, **kwargs) -> None:
        super().__init__(resource, **kwargs)
        self.timeline = timeline
        self.core = core
        self.active: dict = active if active is not None else {}  # request -> start time
        self.missing_lines = RateLimiter(burst=5, period=60.0, clock=lambda: self.reactor.seconds())

    def getResourceFor(self, request):
        self.active[request] = self.reactor.seconds()
        request.notifyFinish().addBoth(lambda _: self.active.pop(request, None))
        return super().getResourceFor(request)

    def downloads_of(self, mac: str) -> list[dict[str, Any]]:
        """The machine's downloads still running: path, bytes sent, size, seconds so far (the
        management listener's /machines/<mac> lists them; `netbootd try` shows them as progress)."""
        now = self.reactor.seconds()
        running = []
        for request, started in list(self.active.items()):
            path = request.path.decode("latin-1", "replace")
            owner = mac_in_path(path) or (self.timeline.mac_for(request.getClientAddress().host)
                                          if self.timeline is not None else None)
            if owner != mac:
                continue
            length = (request.responseHeaders.getRawHeaders(b"content-length") or [b""])[0]
            running.append({"path": path[:200], "sent": request.sentLength or 0,
                            "total": int(length) if length.isdigit() else None,
                            "seconds": round(max(now - started, 0.0), 3)})
        return running

    @staticmethod
    def route_of(request) -> str:
        segment = request.path.split(b"/")[1].decode("latin-1", "replace") if request.path else ""
        return segment if segment in _ROUTES else "other"

    def log(self, request) -> None:
        route = self.route_of(request)
        counters = _route_counters.get((route, request.code))
        if counters is None:  # prometheus' labels() takes a lock and builds its key: once per route and status
            counters = (metrics.requests.labels(route, str(request.code)), metrics.bytes_sent.labels(route))
            _route_counters[(route, request.code)] = counters
        counters[0].inc()
        counters[1].inc(request.sentLength or 0)
        if self.timeline is not None and route in _TRANSFER_ROUTES and request.code in (200, 206):
            started = self.active.get(request)
            seconds = max(self.reactor.seconds() - started, 1e-6) if started else None
            ip = request.getClientAddress().host
            size = request.sentLength or 0
            path = request.path.decode("latin-1", "replace")
            named = mac_in_path(path)  # a per-machine file ("/files/52-54-00-12-34-56/...") names its machine
            what = self._what(named or self.timeline.mac_for(ip), request)
            mac = self.timeline.record(
                "http",
                mac=named,
                ip=ip,
                path=path[:200],
                bytes=size,
                seconds=round(seconds, 3) if seconds else None,
                mbps=round(size / seconds / 1e6, 1) if seconds else None,
                **what,
            )
            if size >= PROGRESS_MIN_BYTES:
                log.info("download finished", mac=mac or "", client=ip, path=request.path.decode("latin-1", "replace")[:200],
                         bytes=size, seconds=round(seconds or 0, 1))
        elif self.timeline is not None and route in _MISSING_ROUTES and request.code == 404:
            self._missing(request)

    def _what(self, mac: str | None, request) -> dict[str, str]:
        """What the machine fetched (its role, or the command line's file name), from the core."""
        if self.core is None:
            return {}
        uri = request.uri.decode("latin-1", "replace") if request.uri else request.path.decode("latin-1", "replace")
        return self.core.download(mac, uri)

    def _missing(self, request) -> None:
        """A file a machine asked for is not there: in its timeline (stage http, status 404, an
        error the dashboard shows) and in the log, at most a few lines a minute per client."""
        assert self.timeline is not None
        ip = request.getClientAddress().host
        path = request.path.decode("latin-1", "replace")[:200]
        named = mac_in_path(path)
        mac = self.timeline.record("http", mac=named, ip=ip, path=path, status=404, error="not found",
                                   **self._what(named or self.timeline.mac_for(ip), request))
        machine = self.core.find(mac, None) if self.core is not None and mac else None
        if self.missing_lines.tracked() > MISSING_CLIENTS:  # keyed by client: bounded, whatever the network
            self.missing_lines = RateLimiter(burst=5, period=60.0, clock=lambda: self.reactor.seconds())
        self.missing_lines.log(log.warn, f"404 {ip}", "file not found", mac=mac or "", client=ip,
                               machine=machine.name if machine is not None else "", path=path)

    def log_progress(self) -> None:
        """Called periodically: one line per large download still running."""
        now = self.reactor.seconds()
        for request, started in list(self.active.items()):
            sent = request.sentLength or 0
            if sent < PROGRESS_MIN_BYTES:
                continue
            length = request.responseHeaders.getRawHeaders(b"content-length", [b"0"])[0]
            total = int(length) if length.isdigit() else 0
            ip = request.getClientAddress().host
            elapsed = max(now - started, 1e-6)
            log.info(
                "download progress",
                mac=(self.timeline.mac_for(ip) if self.timeline is not None else None) or "",
                client=ip,
                path=request.path.decode("latin-1", "replace")[:200],
                sent=sent,
                total=total,
                percent=round(100 * sent / total, 1) if total else None,
                mbps=round(sent / elapsed / 1e6, 1),
            )


def make_site(core: HttpCore, timeline: Timeline, settings: HttpSettings, health: Callable[[], dict[str, Any]],
              images: Any = None, metrics_elsewhere: str | None = None, management: str = "") -> MetricsSite:
    """`metrics_elsewhere`: /metrics is not served on this port, and the 404 says this.
    `management`: ui.listen (HOST:PORT), where the timeline is (named by this port's 404 for it)."""
    app = BootApp(core, timeline, health, images, metrics_elsewhere, management)
    site = MetricsSite(GuardedResource(HotRoutes(app, app.app.resource(), HttpError)), timeline=timeline, core=core)
    site.displayTracebacks = False  # never show internals to a client
    limits.install(site, settings, _TRANSFER_ROUTES)  # rate limit, download cap, size limits
    return site
