"""The only wiring: settings → core → edges and listeners, plus reload.

Nothing else knows how the pieces connect; each edge gets the core and its settings.
"""

from __future__ import annotations

import errno
import ipaddress
import resource
import signal
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from netbootd import health, metrics
from netbootd.config.catalog import build_catalog
from netbootd.config.lastgood import LastGoodStore
from netbootd.config.machinesdir import is_ignored_name, load_machines
from netbootd.config.preflight import SecretFileError, signing_key, ui_credentials
from netbootd.config.settings import Settings
from netbootd.config.watch import DirectoryWatcher
from netbootd.core import BootCore
from netbootd.core.signing import UrlSigner
from netbootd.images.resolve import image_machines
from netbootd.logs import get_logger
from netbootd.sdnotify import Notifier

log = get_logger("netbootd.service")


def raise_fd_limit(s: Settings) -> None:
    """Every TFTP transfer and HTTP connection is a file descriptor: a boot storm at the
    configured caps needs more than the usual soft limit of 1024. Raise it to what the caps
    need, within the hard limit (as Go's runtime and nginx's worker_rlimit_nofile do)."""
    need = s.tftp.max_transfers + s.http.max_transfers + s.http.max_queued + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warn("open file limit below what the transfer caps need; raise LimitNOFILE (or ulimit -n) "
                 "or lower tftp.max_transfers / http.max_transfers / http.max_queued", limit=target, need=need)


HUP_COALESCE = 0.05  # seconds: SIGHUPs this close together make one reload


class StartupError(Exception):
    """A listener could not start; the message says what to do."""


def bind_error(proto: str, port: int, setting: str, exc: Exception) -> StartupError:
    err = getattr(exc, "socketError", exc)
    code = getattr(err, "errno", None)
    if code == errno.EACCES:
        return StartupError(
            f"cannot bind {proto} port {port}: ports below 1024 need root or CAP_NET_BIND_SERVICE "
            f"(run as root, use systemd/netbootd.service, or set {setting} to a higher port)"
        )
    if code == errno.EADDRINUSE:
        return StartupError(
            f"cannot bind {proto} port {port}: another program holds it (find it with `ss -lnp`, or set {setting})"
        )
    if code == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot bind {proto} port {port}: the listen address is not on this host (check {setting})")
    return StartupError(f"cannot bind {proto} port {port}: {err}")


def url_signer(settings: Settings) -> UrlSigner:
    """The shared key file when configured (HA: every host verifies every host's URLs), else
    this host's own key in state_dir. load_settings already checked the file; reading it again
    here catches a file changed since, before anything listens."""
    ttl = settings.http.signed_url_ttl
    try:
        key = signing_key(settings)
    except SecretFileError as exc:
        raise StartupError(exc.at_start) from None
    if key is None:
        return UrlSigner.from_state_dir(settings.state_dir, ttl)
    signer = UrlSigner(key, ttl)
    log.info("URL signing key loaded", path=str(settings.http.signing_key_file), key_id=signer.key_id)
    return signer


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" is every address


class Netbootd:
    def __init__(self, settings: Settings, reactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.core = BootCore(settings, signer=url_signer(settings))
        self.ui: Any = None  # netbootd.ui.Dashboard on ui.listen
        self.ui_port: Any = None
        if settings.ui.listen:
            from netbootd.ui import WatchedTimeline

            self.core.timeline = WatchedTimeline()  # tells the dashboard which machines changed
        self.ports: list[Any] = []
        self.site: Any = None
        self.http_port: Any = None
        self.tftp_port: Any = None  # the first TFTP port (its server's transfers are shared with the others)
        self.tftp_ports: list[Any] = []
        self.watcher: DirectoryWatcher | None = None
        self.notifier = Notifier()
        self.watchdog: task.LoopingCall | None = None
        self.progress: task.LoopingCall | None = None
        self._hup_reload: Any = None  # the reload a SIGHUP scheduled, until it runs
        self.images: Any = None  # netbootd.images.proxy.ImageProxy once HTTP is up
        self.resolver: task.LoopingCall | None = None
        self._resolve_retry: Any = None
        self._resolve_backoff = health.IMAGE_RETRY_FIRST
        self.images_watch = health.ImageWatch(reactor.seconds)
        self.url_cache: Any = None  # netbootd.images.urlcache.UrlCache, made when GRUB first needs a URL
        self.grub_watch: task.LoopingCall | None = None
        self.dhcp6_rejoin: task.LoopingCall | None = None  # joins new interfaces to ff02::1:2
        self.last_good = LastGoodStore(settings.state_dir)
        self.problems: list[dict[str, Any]] = []
        self.last_reload = 0.0
        self.started = time.time()
        self.reload("start")

    # ------------------------------------------------------------------ configuration

    def reload(self, why: str = "") -> None:
        if self.ports:
            self.notifier.reloading()
        if why == "SIGHUP" and self.ui is not None:
            self._reload_ui_auth()
        previous = self.core.catalog if self.last_reload else None
        result = load_machines(self.settings)
        catalog = build_catalog(result, previous, self.last_good)
        self.core.replace_catalog(catalog)
        self.last_reload = time.time()
        if result.directory_ok:
            self.last_good.save(result.machines.values())  # what loaded cleanly is the new last good
            self.last_good.forget({p.name[: -len(".toml")] for p in self._machine_files()})
        metrics.config_errors.set(len(result.errors))
        metrics.machines.set(len(catalog.files))
        metrics.config_reloads.labels("errors" if result.errors else "ok").inc()
        self._log_changes(why, previous, catalog)
        if self.ports:
            self.notifier.ready(self.status_line())
        self.images_watch.configured(image_machines(catalog.files.values()))
        self.refresh_problems()
        if self.images is not None:
            self.resolve_images()

    def _machine_files(self):
        try:
            return [p for p in self.settings.machines_dir.iterdir() if not is_ignored_name(p.name)]
        except OSError:
            return []

    def _log_changes(self, why: str, previous, catalog) -> None:
        """Log what changed, not everything again: new and fixed errors, and which machine files
        were added, changed, removed, broken or held (never an editor's temp file name)."""
        before = set(previous.errors) if previous is not None else set()
        for err in catalog.errors:
            if err not in before:
                log.error("config error", file=str(err.file), line=err.line, key=err.key, error=err.message)
        for err in sorted(before - set(catalog.errors), key=str):
            log.info("config error fixed", file=str(err.file), line=err.line, key=err.key)
        old = previous.files if previous is not None else {}
        changes = []
        for name in sorted(set(old) | set(catalog.files) | set(h.name for h in catalog.held.values())):
            if any(h.name == name for h in catalog.held.values()):
                change = "held"
            elif name in catalog.stale:
                change = "broken, serving last good" if (previous is None or name not in previous.stale) else ""
            elif name not in old:
                change = "added"
            elif name not in catalog.files:
                change = "removed"
            elif old[name] != catalog.files[name] or (previous is not None and name in previous.stale):
                change = "changed"
            else:
                change = ""
            if change:
                changes.append(f"{name}.toml {change}")
        if previous is None:
            log.info("configuration loaded", trigger=why, machines=catalog.count_line(), errors=len(catalog.errors),
                     held=len(catalog.held), kept_last_good=",".join(sorted(catalog.stale)))
            return
        log.info(
            "configuration reloaded",
            trigger=why,
            machines=catalog.count_line(),
            errors=len(catalog.errors),
            held=len(catalog.held),
            changed="; ".join(changes[:20]) + (f"; and {len(changes) - 20} more" if len(changes) > 20 else "")
            or "nothing",
        )

    def refresh_problems(self) -> list[dict[str, Any]]:
        catalog = self.core.catalog
        self.problems = (
            health.config_problems(catalog)
            + health.loader_problems(self.settings, catalog)
            + self.images_watch.problems()
        )
        health.set_gauges(self.problems)
        return self.problems

    def _image_resolved(self, ref, arch: str, image) -> None:
        """The proxy resolved an image (for a machine asking): the core learns its layers at once."""
        from netbootd.images.resolve import boot_layers

        layers = boot_layers(image)
        self.core.image_resolved(str(ref), arch, layers.kinds())
        key = str(ref)
        if key in self.images_watch.images and not self.images_watch.images[key].ok:
            self.images_watch.resolved(key, image.digest, layers.describe())
            self.refresh_problems()

    def resolve_images(self) -> defer.Deferred:
        """Learn, off the reactor thread, which boot layers every configured image has, so the
        core can offer a UKI to HTTP-boot firmware and leave out a squashfs an image lacks."""
        from twisted.internet import threads

        from netbootd.images.resolve import boot_layers, resolve_machines

        machines = image_machines(self.core.catalog.files.values())
        if not machines or self.images is None:
            return defer.succeed(None)

        def done(results) -> None:
            seen: set[tuple[str, str]] = set()
            for res in results:
                key = str(res.ref)
                if (key, res.arch) in seen:
                    continue
                seen.add((key, res.arch))
                if res.image is not None:
                    self.core.image_resolved(key, res.arch, boot_layers(res.image).kinds())
                    if res.required:
                        self.images_watch.resolved(key, res.image.digest, boot_layers(res.image).describe())
                elif res.required:
                    self.images_watch.failed(key, res.ref.registry, res.error, res.kind)
            self.refresh_problems()
            if self.images_watch.failing():
                # don't wait for the 10-minute tick: a registry that comes back is seen soon
                if self._resolve_retry is None or not self._resolve_retry.active():
                    self._resolve_retry = self.reactor.callLater(self._resolve_backoff, self.resolve_images)
                self._resolve_backoff = min(self._resolve_backoff * 2, health.IMAGE_RETRY_MAX)
            else:
                self._resolve_backoff = health.IMAGE_RETRY_FIRST

        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), resolve_machines,
                                      self.images.registry, machines, self.settings.registry.architecture)
        d.addCallback(done)
        d.addErrback(lambda f: log.failure("image resolution failed", f))
        return d

    def fetch_artefact(self, artefact) -> defer.Deferred:
        """A URL or image layer on disk, for GRUB's TFTP (netbootd.core.grubfiles)."""
        if artefact.kind == "layer":
            return self.images.layer_file(artefact.image, artefact.media_type, artefact.arch)
        if self.url_cache is None:
            from netbootd.images.urlcache import UrlCache

            self.url_cache = UrlCache(self.settings.cache_dir / "urls", self.reactor)
        return self.url_cache.get(artefact.location)

    def sighup(self) -> None:
        """Reload soon: a burst of SIGHUPs is one reload (each would block the reactor for the
        whole reload: a storm of 200 took every request's turn for seconds). Every signal is
        still followed by a reload that starts after it."""
        if self._hup_reload is None or not self._hup_reload.active():
            self._hup_reload = self.reactor.callLater(HUP_COALESCE, self.reload, "SIGHUP")

    def status_line(self) -> str:
        """One line for `systemctl status`."""
        catalog = self.core.catalog
        errors = f", {len(catalog.errors)} config error(s)" if catalog.errors else ""
        errors += f", {len(catalog.held)} held" if catalog.held else ""
        s = self.settings
        edges = [
            f"dhcp {s.dhcp.port}+{s.dhcp.proxy_port}" if s.dhcp.enabled else "",
            f"tftp {s.tftp.port}" if s.tftp.enabled else "",
            f"http {s.http.port}" if s.http.enabled else "",
        ]
        return f"serving {catalog.count_line()}{errors}; " + ", ".join(e for e in edges if e)

    def health(self) -> dict[str, Any]:
        """/healthz: "ok", or "degraded" with every problem (HTTP 200 either way: the daemon serves)."""
        catalog = self.core.catalog
        return {
            "status": "degraded" if self.problems else "ok",
            "summary": catalog.count_line(),
            "machines": len(catalog.files),
            "default": catalog.default is not None,
            "held": sorted(h.name for h in catalog.held.values()),
            "problems": self.problems,
            "config_errors": [str(e) for e in catalog.errors],
            "last_reload": round(self.last_reload, 3),
            "uptime": round(time.time() - self.started, 1),
        }

    # ------------------------------------------------------------------ dashboard

    def _reload_ui_auth(self) -> None:
        try:
            now = self.ui.reload_auth()
        except SecretFileError as exc:
            log.error("ui.auth_file unusable; the dashboard keeps the credentials it had", error=str(exc))
        else:
            log.info("dashboard credentials reloaded", credentials=now)

    def _image_states(self) -> list[dict[str, Any]]:
        return [{"ref": st.ref, "ok": st.ok, "digest": st.digest, "error": st.error, "kind": st.kind,
                 "machines": sorted(st.machines), "failures": st.failures}
                for st in self.images_watch.images.values()]

    def _cache_usage(self) -> dict[str, Any] | None:
        if self.images is None:
            return None
        cache = self.images.cache
        return {"path": str(cache.root), "bytes": cache.total, "max_bytes": cache.max_bytes,
                "blobs": len(cache.entries), "usable": cache.usable}

    def start_ui(self) -> None:
        """The dashboard on ui.listen, a Site of its own: never the boot network's HTTP port."""
        from netbootd.config.settings import parse_listen
        from netbootd.ui import Dashboard

        s = self.settings
        try:
            host, port = parse_listen(s.ui.listen)
        except ValueError as exc:  # the settings loader catches it first; kept for Settings made in code
            raise StartupError(f"ui.listen = {exc}") from None
        try:
            credentials = ui_credentials(s)
        except SecretFileError as exc:
            raise StartupError(exc.at_start) from None
        self.ui = Dashboard(self.core, s, self.reactor, health=self.health, problems=lambda: self.problems,
                            images=self._image_states, cache=self._cache_usage, credentials=credentials)
        try:
            self.ui_port = self.reactor.listenTCP(port, self.ui.site(), interface=host)
        except CannotListenError as exc:
            raise bind_error("TCP", port, 'ui.listen, or ui.listen = "" for no dashboard', exc) from None
        self.ports.append(self.ui_port)
        if credentials is None and not _loopback(host):
            log.warn("the dashboard has no authentication and listens beyond this host: set ui.auth_file "
                     "(SECURITY.md)", listen=s.ui.listen)

    def _metrics_elsewhere(self) -> str | None:
        """Why /metrics is not on the boot network's HTTP port, None while it still is."""
        s = self.settings.ui
        if s.metrics_on_http_port:
            return None
        if s.listen:
            return f"/metrics moved to the management listener: http://{s.listen}/metrics (ui.listen)"
        return "/metrics is off: ui.metrics_on_http_port = false and no ui.listen"

    # ------------------------------------------------------------------ listeners

    def start(self) -> None:
        """Start every enabled listener; raises StartupError with an actionable message."""
        s = self.settings
        raise_fd_limit(s)
        try:
            if s.ui.listen:
                self.start_ui()
            if s.http.enabled:
                from netbootd.http.app import make_site
                from netbootd.images.proxy import ImageProxy

                self.images = ImageProxy(s, self.reactor)
                self.images.on_resolved = self._image_resolved
                self.core.grub_files.fetch = self.fetch_artefact
                self.site = make_site(self.core, self.health, images=self.images,
                                      metrics_elsewhere=self._metrics_elsewhere())
                from netbootd import transfer
                from netbootd.http.listen import listen_http

                transfer.configure(s.http.sendfile_thread_count(), self.reactor)

                try:
                    # a large backlog (the kernel caps it at net.core.somaxconn): each overflow in a storm costs a
                    # machine a 1 s SYN retry
                    http_ports = listen_http(self.reactor, s.http.port, self.site, s.http.listen)
                except CannotListenError as exc:
                    raise bind_error("TCP", s.http.port, "http.port", exc) from None
                self.http_port = http_ports[0]
                self.ports.extend(http_ports)
            if s.tftp.enabled:
                from netbootd.tftp import listen_tftp_all

                try:
                    self.tftp_ports = listen_tftp_all(self.reactor, s, self.core)
                    self.tftp_port = self.tftp_ports[0]
                    self.ports.extend(self.tftp_ports)
                except CannotListenError as exc:  # the edge's message already says what to do
                    raise StartupError(str(exc)) from None
            if s.dhcp.enabled:
                from netbootd.dhcp import DhcpBindError, listen_dhcp

                try:
                    self.ports.extend(listen_dhcp(self.reactor, s, self.core))
                except (DhcpBindError, OSError) as exc:
                    raise StartupError(str(exc)) from None
                if s.dhcp.ipv6:
                    from netbootd.dhcp6.listen import listen_dhcp6

                    try:
                        ports6, self.dhcp6_rejoin = listen_dhcp6(self.reactor, s, self.core)
                    except OSError as exc:
                        raise StartupError(str(exc)) from None
                    self.ports.extend(ports6)
        except BaseException:
            self.stop()
            raise
        self.watcher = DirectoryWatcher(self.reactor, s.machines_dir, self.reload)
        self.watcher.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.sighup))
        log.info(
            "listening",
            ui=s.ui.listen or "off",
            metrics=",".join(where for where, on in ((s.ui.listen, bool(s.ui.listen)),
                                                     (f"http {s.http.port}", s.http.enabled and s.ui.metrics_on_http_port))
                             if on) or "off",
            http=s.http.port if s.http.enabled else "off",
            sendfile_threads=s.http.sendfile_thread_count() if s.http.enabled else 0,
            tftp=s.tftp.port if s.tftp.enabled else "off",
            dhcp=f"{s.dhcp.port},{s.dhcp.proxy_port}" if s.dhcp.enabled else "off",
            dhcp6=f"{s.dhcp.port6},{s.dhcp.proxy_port}" if self.dhcp6_rejoin is not None else "off",
            machines_dir=str(s.machines_dir),
        )
        if self.images is not None:
            # tags move: look again every 10 minutes (the first run happens now)
            self.resolver = task.LoopingCall(self.resolve_images)
            self.resolver.clock = self.reactor
            self.resolver.start(600.0, now=True)
        # GRUB sent but its grub.cfg never asked for: say what most likely happened (grubfiles.py)
        self.grub_watch = task.LoopingCall(lambda: self.core.grub_files.overdue(time.time()))
        self.grub_watch.clock = self.reactor
        self.grub_watch.start(10.0, now=False)
        if self.site is not None:
            self.progress = task.LoopingCall(self.site.log_progress)
            self.progress.clock = self.reactor
            self.progress.start(10.0, now=False)
        if self.notifier.watchdog_interval:
            self.watchdog = task.LoopingCall(self.notifier.watchdog)
            self.watchdog.clock = self.reactor
            self.watchdog.start(self.notifier.watchdog_interval, now=True)
        self.notifier.ready(self.status_line())

    def _busy(self) -> tuple[int, int]:
        http = len(self.site.active) if self.site is not None else 0
        server = getattr(self.tftp_port, "protocol", None)
        tftp = len(getattr(server, "sessions", ()))
        return http, tftp

    @defer.inlineCallbacks
    def shutdown(self):
        """SIGTERM: take no new work, let running transfers finish for `shutdown_grace` seconds,
        then close what is left. Returned Deferred holds the reactor's shutdown until done."""
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        # New connections and DHCP requests stop here; open HTTP connections carry on.
        for port in [p for p in self.ports if p not in self.tftp_ports]:
            yield port.stopListening()
        if self.ui is not None:
            self.ui.hub.finish_all()  # dashboards see the stream end (and reconnect to whatever comes next)
        for port in self.tftp_ports:
            draining = getattr(getattr(port, "protocol", None), "drain", None)
            if callable(draining):
                draining()  # the TFTP server refuses new requests but keeps running transfers
        deadline = self.reactor.seconds() + self.settings.shutdown_grace
        http, tftp = self._busy()
        if http or tftp:
            log.info("waiting for running transfers", http=http, tftp=tftp, grace=self.settings.shutdown_grace)
        while any(self._busy()) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        http, tftp = self._busy()
        if http or tftp:
            log.warn("grace period over, closing transfers", http=http, tftp=tftp)
        for request in list(self.site.active if self.site is not None else ()):
            request.channel.transport.abortConnection()
        for port in self.tftp_ports:
            yield port.stopListening()
        for loop in (self.watchdog, self.progress, self.resolver, self.grub_watch, self.dhcp6_rejoin):
            if loop is not None and loop.running:
                loop.stop()
        if self._resolve_retry is not None and self._resolve_retry.active():
            self._resolve_retry.cancel()
        if self.images is not None:
            yield self.images.close()
        self.ports = []
        log.info("stopped")

    def stop(self) -> None:
        """Immediate stop (startup failure, tests)."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        for port in self.ports:
            port.stopListening()
        self.ports = []
