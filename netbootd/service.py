"""The only wiring: settings → core → edges and listeners, plus reload.

`Netbootd` is a Twisted MultiService of named children, started in order and stopped in reverse:
"state" (the lifecycle's store), "ui" (the dashboard's listener), "http", "tftp", "dhcp", "dhcp6", "config-watch" (the machines
directory), and the periodic jobs "images-resolve", "loader-watch", "http-progress", "dhcp6-rejoin",
"watchdog", "state-watch". Nothing else knows how the pieces connect; each edge gets the core (through the
interface it needs, netbootd.core.interfaces), the timeline it records into, and its settings.
"""

from __future__ import annotations

import ipaddress
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from netbootd import health, metrics
from netbootd.binderrors import bind_message
from netbootd.config.catalog import build_catalog
from netbootd.config.errors import ConfigInvalid
from netbootd.config.lastgood import LastGoodStore
from netbootd.config.live import LIVE, flatten, plan_reload
from netbootd.config.machinesdir import is_ignored_name, load_machines
from netbootd.config.preflight import SecretFileError, signing_key, ui_credentials
from netbootd.config.settings import Settings
from netbootd.config.settingsfile import load_settings
from netbootd.config.watch import DirectoryWatcher
from netbootd.core import files
from netbootd.core.decide import BootCore
from netbootd.core.plan import LAYER
from netbootd.core.signing import UrlSigner
from netbootd.core.timeline import Timeline
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


def bind_error(proto: str, port: int, setting: str, exc: Exception, listen_setting: str = "") -> StartupError:
    """`listen_setting`: the setting of the address (http.listen), named when the address is not on this host."""
    kw = {"not_here": f"the listen address is not on this host (check {listen_setting})"} if listen_setting else {}
    return StartupError(bind_message(f"cannot bind {proto} port {port}", exc, port=port, setting=setting, **kw))


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


class Listening(service.Service):
    """A named listener: `listen()` opens its ports (raising StartupError); stopping closes them."""

    def __init__(self, name: str, listen: Callable[[], list[Any]]) -> None:
        self.setName(name)
        self._listen = listen
        self.ports: list[Any] = []

    def startService(self) -> None:
        self.ports = list(self._listen())
        super().startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])


class Watching(service.Service):
    """The machines directory's watcher as a service."""

    def __init__(self, watcher: DirectoryWatcher) -> None:
        self.setName("config-watch")
        self.watcher = watcher

    def startService(self) -> None:
        self.watcher.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.watcher.stop()


def every(name: str, seconds: float, job: Callable[[], Any], reactor: Any) -> internet.TimerService:
    """A periodic job (run at start, then every `seconds`) on the daemon's reactor."""
    timer = internet.TimerService(seconds, job)
    timer.clock = reactor
    timer.setName(name)
    return timer


class StateService(service.Service):
    """The open state store, as a child: health follows it (`check`), and stopping closes it."""

    def __init__(self, daemon: Netbootd) -> None:
        self.setName("state")
        self.daemon = daemon
        self._seen: tuple = ()

    def check(self) -> None:
        """Refresh health when the store goes away or comes back."""
        status = self.daemon.states.status()
        seen = (status.ok, status.loaded, status.reason)
        if seen != self._seen:
            self._seen = seen
            self.daemon.refresh_problems()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.daemon.states.stop()


class Netbootd(service.MultiService):
    def __init__(self, settings: Settings, reactor) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        # What each machine's boot has done so far: the edges record into it, the dashboard and
        # /machines read it. Watched when there is a dashboard: it tells the page which rows changed.
        self.timeline: Timeline
        if settings.ui.listen:
            from netbootd.ui import WatchedTimeline

            self.timeline = WatchedTimeline()
        else:
            self.timeline = Timeline()
        from netbootd.state import open_store

        # the lifecycle's states: SQLite in state_dir, or the PostgreSQL every node shares
        self.states = open_store(settings, reactor)
        self.exit_code = 0  # 1: the start failed (cmd_serve's exit status)
        self.core = BootCore(settings, signer=url_signer(settings), timeline=self.timeline, fetch=self.fetch_artefact,
                             states=self.states)
        self.ui: Any = None  # netbootd.ui.Dashboard on ui.listen
        self.site: Any = None  # the boot network's HTTP site
        self.images: Any = None  # netbootd.images.proxy.ImageProxy, with the HTTP listener
        self.url_cache: Any = None  # netbootd.images.urlcache.UrlCache, made when GRUB first needs a URL
        self.notifier = Notifier()
        self._hup_reload: Any = None  # the reload a SIGHUP scheduled, until it runs
        self._resolve_retry: Any = None
        self._resolve_backoff = health.IMAGE_RETRY_FIRST
        self.images_watch = health.ImageWatch(reactor.seconds)
        self.last_good = LastGoodStore(settings.state_dir)
        self.problems: list[dict[str, Any]] = []
        self.last_reload = 0.0
        self.log_format_override: str | None = None  # serve --log-format: kept over the file's on reload
        self.pending_restart: dict[str, Any] = {}  # settings the file changed that wait for a restart
        self._open_default_warned = False
        self.started = time.time()
        self.reload("start")

    # ------------------------------------------------------------------ configuration

    def reload(self, why: str = "") -> None:
        if self.running:
            self.notifier.reloading()
        settings_changed: list[str] = []
        if why == "SIGHUP":
            had_auth_file = self.settings.ui.auth_file is not None
            settings_changed = self._reload_settings()
            if self.ui is not None and (had_auth_file or self.settings.ui.auth_file is not None):
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
        self._log_changes(why, previous, catalog, settings_changed)
        if self.running:
            self._warn_open_default()
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

    def _reload_settings(self) -> list[str]:
        """Read netbootd.toml again (SIGHUP) and apply what can change without a restart
        (netbootd.config.live); returns the keys applied. A file with errors changes nothing."""
        source = self.settings.source
        if source is None or not source.is_file():  # built-in defaults, or a machines directory: no file
            return []
        try:
            new = load_settings(source)
        except ConfigInvalid as exc:
            for err in exc.errors:
                log.error("settings file has errors: nothing changed, the running settings stay", file=str(err.file),
                          line=err.line, key=err.key, error=err.message)
            return []
        if self.log_format_override:
            new = attrs.evolve(new, log=attrs.evolve(new.log, format=self.log_format_override))
        plan = plan_reload(self.settings, new)
        self.pending_restart = {k: v for k, v in flatten(new).items() if k in plan.restart}
        if plan.restart:
            log.warn("settings changed that need a restart; they keep their running values until then",
                     needs_restart=",".join(plan.restart))
        if plan.applied:
            self._apply_settings(plan.settings, plan.applied)
        return list(plan.applied)

    def _apply_settings(self, settings: Settings, keys: tuple[str, ...]) -> None:
        """Hand every part that reads a live setting its new value (netbootd.config.live.LIVE)."""
        from netbootd.logs import set_level
        from netbootd.ratelimit import PerClientLimiter

        self.settings = settings
        tables = {k.split(".", 1)[0] for k in keys}
        self.core.replace_settings(settings, loaders=bool(tables & {"ipxe", "grub", "uki"}))
        if "log.level" in keys:
            set_level(settings.log.level)
        for port in self.ports("dhcp"):
            port.protocol.set_advertise(settings.advertise)
        for port in self.ports("dhcp6"):
            port.protocol.advertise6 = settings.advertise6
        tftp = settings.tftp
        rate = (PerClientLimiter(tftp.rate_limit, tftp.rate_burst, self.reactor.seconds)
                if {"tftp.rate_limit", "tftp.rate_burst"} & set(keys) else None)
        for port in self.ports("tftp"):  # one limiter for both, as TftpServer.sibling shares it
            port.protocol.reconfigure(tftp, rate)
        if self.site is not None:
            from netbootd.http import limits

            limits.reconfigure(self.site, settings.http)
        if self.ui is not None:
            self.ui.settings = settings
        if self.images is not None:
            self.images.settings = settings

    def settings_doc(self) -> dict[str, Any]:
        """/api/settings on ui.listen: what runs, and what the file changed that waits for a restart."""
        return {"source": str(self.settings.source or ""), "settings": flatten(self.settings),
                "needs_restart": self.pending_restart, "live": sorted(LIVE),
                # set on the command line (serve --log-format), over the file's: not a difference to report
                "command_line": ["log.format"] if self.log_format_override else []}

    def _log_changes(self, why: str, previous, catalog, settings_changed: list[str] | None = None) -> None:
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
        if settings_changed:
            changes.insert(0, ",".join(settings_changed))
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

    def lifecycle_summary(self) -> dict[str, Any]:
        status = self.core.states.status()
        return health.lifecycle_summary(self.core.lifecycle_rows(), status.ok, status.loaded, status.reason)

    def refresh_problems(self) -> list[dict[str, Any]]:
        catalog = self.core.catalog
        once = sorted(m.name for m in catalog.files.values() if m.lifecycle.once)
        self.problems = (
            health.config_problems(catalog)
            + [p for loader in self.core.loaders.values() for p in loader.problems(catalog)]
            + self.images_watch.problems()
            + health.store_problems(self.lifecycle_summary(), once)
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
        """A URL or image layer on disk, for a loader that serves it over TFTP (GRUB)."""
        if artefact.source == LAYER:
            if self.images is None:
                return defer.fail(files.FileNotFound(f"{artefact.describe()}: the image proxy is off (http.enabled)"))
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
        state = self.namedServices.get("state")
        if isinstance(state, StateService):
            state.check()  # the store's status now, not at the last tick
        catalog = self.core.catalog
        return {
            "status": "degraded" if self.problems else "ok",
            "summary": catalog.count_line(),
            "machines": len(catalog.files),
            "default": catalog.default is not None,
            "held": sorted(h.name for h in catalog.held.values()),
            "problems": self.problems,
            "config_errors": [str(e) for e in catalog.errors],
            "lifecycle": self.lifecycle_summary(),
            "last_reload": round(self.last_reload, 3),
            "uptime": round(time.time() - self.started, 1),
        }

    # ------------------------------------------------------------------ dashboard

    def _reload_ui_auth(self) -> None:
        """ui.auth_file read again: set now, or set until this reload (then the dashboard is open)."""
        try:
            now = self.ui.reload_auth()
        except SecretFileError as exc:
            log.error("ui.auth_file unusable; the dashboard keeps the credentials it had", error=str(exc))
        else:
            if self.settings.ui.auth_file is None:
                log.warn("dashboard authentication off: ui.auth_file is no longer set", listen=self.settings.ui.listen)
            else:
                log.info("dashboard credentials reloaded", credentials=now, auth_file=str(self.settings.ui.auth_file))

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

    def _metrics_elsewhere(self) -> str | None:
        """Why /metrics is not on the boot network's HTTP port, None while it still is."""
        s = self.settings.ui
        if s.metrics_on_http_port:
            return None
        if s.listen:
            return f"/metrics moved to the management listener: http://{s.listen}/metrics (ui.listen)"
        return "/metrics is off: ui.metrics_on_http_port = false and no ui.listen"

    # ------------------------------------------------------------------ listeners

    def _listen_ui(self) -> list[Any]:
        """The dashboard on ui.listen, a Site of its own: never the boot network's HTTP port."""
        from netbootd.config.settings import parse_listen
        from netbootd.ui import Dashboard, WatchedTimeline

        s = self.settings
        try:
            host, port = parse_listen(s.ui.listen)
        except ValueError as exc:  # the settings loader catches it first; kept for Settings made in code
            raise StartupError(f"ui.listen = {exc}") from None
        try:
            credentials = ui_credentials(s)
        except SecretFileError as exc:
            raise StartupError(exc.at_start) from None
        assert isinstance(self.timeline, WatchedTimeline)  # made so in __init__ when ui.listen is set
        self.ui = Dashboard(self.core, self.timeline, s, self.reactor, health=self.health, settings_doc=self.settings_doc,
                            problems=lambda: self.problems, images=self._image_states, cache=self._cache_usage,
                            credentials=credentials,
                            downloads=lambda mac: self.site.downloads_of(mac) if self.site is not None else [])
        try:
            port_ = self.reactor.listenTCP(port, self.ui.site(), interface=host)
        except CannotListenError as exc:
            raise bind_error("TCP", port, 'ui.listen, or ui.listen = "" for no dashboard', exc) from None
        if credentials is None and not _loopback(host):
            log.warn("the dashboard has no authentication and listens beyond this host: set ui.auth_file "
                     "(SECURITY.md)", listen=s.ui.listen)
        return [port_]

    def _listen_http(self) -> list[Any]:
        from netbootd import transfer
        from netbootd.http.app import make_site
        from netbootd.http.listen import listen_http
        from netbootd.images.proxy import ImageProxy

        s = self.settings
        self.images = ImageProxy(s, self.reactor, on_resolved=self._image_resolved)
        self.site = make_site(self.core, self.timeline, s.http, self.health, images=self.images,
                              metrics_elsewhere=self._metrics_elsewhere(), management=s.ui.listen)
        transfer.configure(s.http.sendfile_thread_count(), self.reactor)
        try:
            # a large backlog (the kernel caps it at net.core.somaxconn): each overflow in a storm costs a
            # machine a 1 s SYN retry
            return listen_http(self.reactor, s.http.port, self.site, s.http.listen)
        except CannotListenError as exc:
            raise bind_error("TCP", s.http.port, "http.port", exc, "http.listen") from None

    def _listen_tftp(self) -> list[Any]:
        from netbootd.tftp import listen_tftp_all

        try:
            return listen_tftp_all(self.reactor, self.settings, self.core)
        except CannotListenError as exc:  # the edge's message already says what to do
            raise StartupError(str(exc)) from None

    def _listen_dhcp(self) -> list[Any]:
        from netbootd.dhcp import DhcpBindError, listen_dhcp

        try:
            return listen_dhcp(self.reactor, self.settings, self.core)
        except (DhcpBindError, OSError) as exc:
            raise StartupError(str(exc)) from None

    def _listen_dhcp6(self) -> list[Any]:
        from netbootd.dhcp6.listen import JOIN_INTERVAL, listen_dhcp6

        try:
            ports, rejoin = listen_dhcp6(self.reactor, self.settings, self.core)
        except OSError as exc:
            raise StartupError(str(exc)) from None
        if rejoin is not None:  # interfaces that appear later join ff02::1:2
            timer = every("dhcp6-rejoin", JOIN_INTERVAL, rejoin, self.reactor)
            timer.setServiceParent(self)
            timer.startService()  # the daemon is starting: its children are started one by one
        return ports

    def _children(self) -> list[service.Service]:
        """What runs, in start order (stopped in reverse)."""
        s = self.settings
        state = StateService(self)
        out: list[service.Service] = [state, every("state-watch", 5.0, state.check, self.reactor)]
        if s.ui.listen:
            out.append(Listening("ui", self._listen_ui))
        if s.http.enabled:
            out.append(Listening("http", self._listen_http))
        if s.tftp.enabled:
            out.append(Listening("tftp", self._listen_tftp))
        if s.dhcp.enabled:
            out.append(Listening("dhcp", self._listen_dhcp))
            if s.dhcp.ipv6:
                out.append(Listening("dhcp6", self._listen_dhcp6))
        out.append(Watching(DirectoryWatcher(self.reactor, s.machines_dir, self.reload)))
        if s.http.enabled:
            out.append(every("images-resolve", 600.0, self.resolve_images, self.reactor))  # tags move
            out.append(every("http-progress", 10.0, lambda: self.site.log_progress(), self.reactor))
        # a loader's chain that went quiet (GRUB sent, its grub.cfg never asked for): say what most likely happened
        out.append(every("loader-watch", 10.0, self._loaders_tick, self.reactor))
        if self.notifier.watchdog_interval:
            out.append(every("watchdog", self.notifier.watchdog_interval, self.notifier.watchdog, self.reactor))
        return out

    def _loaders_tick(self) -> None:
        now = time.time()
        for loader in self.core.loaders.values():
            loader.tick(now)

    def ports(self, name: str) -> list[Any]:
        """The listening ports of the child `name` ("http", "tftp", "dhcp", "dhcp6", "ui")."""
        child = self.namedServices.get(name)
        return list(child.ports) if isinstance(child, Listening) else []

    @property
    def tftp_port(self) -> Any:
        """The first TFTP port (its server's transfers are shared with the others)."""
        ports = self.ports("tftp")
        return ports[0] if ports else None

    @property
    def http_port(self) -> Any:
        ports = self.ports("http")
        return ports[0] if ports else None

    def begin(self) -> defer.Deferred:
        """Open the state store (its view read off the reactor), then start everything. Nothing
        listens before the store answered: a store that refuses us (a corrupt SQLite file, wrong
        PostgreSQL credentials) stops the start with StartupError; one that cannot be reached
        yet is retried in the background, machines that provision once held until it is read."""
        from netbootd.state import StateStoreError

        def opened(_) -> None:
            status = self.states.status()
            log.info("state store open", where=status.where, ok=status.ok, reason=status.reason or None,
                     machines=len(self.states.view()))
            self.start()

        def refused(failure):
            failure.trap(StateStoreError)
            raise StartupError(f"the state store cannot be used (nothing is provisioned on a state that cannot be "
                               f"read): {failure.value}")

        return self.states.start().addCallbacks(opened, refused)

    def start(self) -> None:
        """Start every enabled listener and job; raises StartupError with an actionable message
        (and leaves nothing listening)."""
        s = self.settings
        raise_fd_limit(s)
        try:
            for child in self._children():
                child.setServiceParent(self)  # the parent is not running yet: this starts nothing
                child.startService()
        except BaseException:
            self.stop()
            raise
        service.Service.startService(self)  # the children run already
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
            dhcp6=f"{s.dhcp.port6},{s.dhcp.proxy_port}" if self.ports("dhcp6") else "off",
            machines_dir=str(s.machines_dir),
        )
        if s.dhcp.enabled:
            log.info("answering PXE", interfaces=",".join(s.dhcp.interfaces) or "every interface (dhcp.interfaces = [])",
                     unknown_machines=self._unknown_answer())
        self._warn_open_default()
        self.notifier.ready(self.status_line())

    def _unknown_answer(self) -> str:
        default = self.core.catalog.default
        if default is None:
            return "not answered (no default.toml)"
        return "not answered (default.toml: boot.ignore = true)" if not default.answers else "answered by default.toml"

    def _warn_open_default(self) -> None:
        """Every interface and a default.toml that answers: any machine that network-boots on any
        network this host is on (an office LAN, a laptop's Wi-Fi) is offered it. Said at start and
        whenever a reload makes it so."""
        s = self.settings
        default = self.core.catalog.default
        open_now = s.dhcp.enabled and not s.dhcp.interfaces and default is not None and default.answers
        if open_now and not self._open_default_warned:
            log.warn("answering PXE on every interface, and default.toml answers every unknown machine: set "
                     "dhcp.interfaces to the boot network's interface(s), or remove default.toml",
                     default=str(default.source) if default is not None else "")
        self._open_default_warned = bool(open_now)

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
        watch = self.namedServices.get("config-watch")
        if watch is not None and watch.running:
            watch.stopService()
        # New connections and DHCP requests stop here; open HTTP connections carry on.
        for name in ("ui", "dhcp6", "dhcp", "http"):
            child = self.namedServices.get(name)
            if child is not None and child.running:
                yield child.stopService()
        if self.ui is not None:
            self.ui.hub.finish_all()  # dashboards see the stream end (and reconnect to whatever comes next)
        for port in self.ports("tftp"):
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
        yield self.stopService()  # the TFTP listener and the periodic jobs (the rest stopped already)
        if self._resolve_retry is not None and self._resolve_retry.active():
            self._resolve_retry.cancel()
        if self.images is not None:
            yield self.images.close()
        log.info("stopped")

    def stopService(self) -> defer.Deferred:
        """Stop every child still running, in reverse start order."""
        service.Service.stopService(self)
        running = [child for child in reversed(list(self)) if child.running]
        return defer.DeferredList([defer.maybeDeferred(child.stopService) for child in running])

    def stop(self) -> None:
        """Immediate stop (startup failure, tests)."""
        self.stopService()
