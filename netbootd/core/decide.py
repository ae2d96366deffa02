"""The boot-decision core: every edge asks it what a machine gets; none decides on its own.

A machine's request is answered in three steps: find the machine (its own file, else the default;
a held machine gets nothing), take its `BootPlan` for this architecture and firmware
(netbootd.core.plan, memoised per catalog generation), and let the plan's loader
(netbootd.core.loaders) say what the firmware gets. All answers come from an in-memory `Catalog`
swapped atomically on reload, so a decision is a dictionary lookup and never blocks the reactor,
however many machines boot at once.

`BootCore` provides every edge's interface (netbootd.core.interfaces).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import Deferred

from netbootd.config.machines import BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.core import files, urls
from netbootd.core.context import boot_context, signing_identity
from netbootd.core.ident import mac_in_path
from netbootd.core.interfaces import CallbackRefused, Decision, Denied, NoScript
from netbootd.core.lifecycle import (
    FAILED,
    PROVISIONED,
    PROVISIONING,
    MemoryStore,
    StateStore,
    StoreUnavailable,
    may_report,
    state_of,
)
from netbootd.core.loaders import Fetch, Loader, Rendering, make_loaders
from netbootd.core.loaders.ipxe import chain_stub
from netbootd.core.plan import BootPlan, PlanBook, download_names, host_files, layer_role
from netbootd.core.signing import UrlSigner
from netbootd.core.timeline import Timeline
from netbootd.model import Arch, Client, Firmware, Offer, OfferKind, normalize_mac

__all__ = ["BootCore", "Decision", "Denied", "NoScript"]


class BootCore:
    def __init__(self, settings: Settings, catalog: Catalog | None = None, signer: UrlSigner | None = None,
                 timeline: Timeline | None = None, fetch: Fetch | None = None, states: StateStore | None = None) -> None:
        """`timeline`: what records each machine's boot (the dashboard's watched one, or a plain one);
        `fetch`: brings a URL or image layer into the cache, for loaders that serve them over TFTP;
        `states`: the lifecycle state store (netbootd.state; without one, states live in this process)."""
        self.settings = settings
        self.catalog = catalog or Catalog()
        # An ephemeral key unless the service hands one kept in the state directory.
        self.signer = signer or UrlSigner(secrets.token_bytes(32), settings.http.signed_url_ttl)
        self.timeline = timeline if timeline is not None else Timeline()
        # Boot layers each OCI image is known to have ({"kernel", "initramfs", "squashfs", "uki"}),
        # filled in the background by the service; plans read it, never the network.
        self.image_layers: dict[tuple[str, str], frozenset[str]] = {}  # (image, OCI arch) → boot layers
        self._fetch = fetch
        self.loaders: dict[str, Loader] = make_loaders(settings, self.timeline, fetch)
        self.states: StateStore = states if states is not None else MemoryStore()
        self.states.on_change(self._state_changed)  # this node's transitions and other nodes' alike
        self.plans = PlanBook(self.loaders, self._layers_of, lambda: self.states.status().reason)
        self._downloads: dict[int, tuple[Machine, dict[str, dict[str, str]]]] = {}  # id(machine) → names
        self._host_files: tuple[Catalog, frozenset[str]] | None = None  # what /host serves, per catalog

    def replace_settings(self, settings: Settings, loaders: bool) -> None:
        """Settings a reload changed (netbootd.config.live: the live ones). `loaders`: the loader
        binaries ([ipxe], [grub]) changed, so the loaders are made again from the new settings."""
        self.settings = settings
        self.signer.ttl = settings.http.signed_url_ttl
        if loaders:
            self.loaders = make_loaders(settings, self.timeline, self._fetch)
            self.plans = PlanBook(self.loaders, self._layers_of, lambda: self.states.status().reason)
        else:
            self.plans.forget()  # plans carry URLs built from settings (public_url)
        self._downloads = {}

    def replace_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog  # one reference swap: readers see the old or the new, never a mix
        self.plans.forget()
        self._downloads = {}
        self._host_files = None

    def image_resolved(self, ref: str, oci_arch: str, kinds: frozenset[str]) -> None:
        """The service learned (in the background, off the reactor) which boot layers an image has."""
        if self.image_layers.get((ref, oci_arch)) != kinds:
            self.image_layers[(ref, oci_arch)] = kinds
            self.plans.forget()

    def _layers_of(self, machine: Machine, arch: Arch) -> frozenset[str] | None:
        if machine.boot.kind is not BootKind.IMAGE or machine.boot.image is None:
            return None
        return self.image_layers.get((str(machine.boot.image), arch.oci))

    # ------------------------------------------------------------------ lookups

    def find(self, mac: str | None = None, uuid: str | None = None) -> Machine | None:
        return self.catalog.find(mac, uuid)

    def is_known(self, mac: str) -> bool:
        return mac in self.catalog.machines

    def plan(self, machine: Machine, arch: Arch, firmware: Firmware, mac: str | None = None) -> BootPlan:
        return self.plans.plan(machine, arch, firmware, self.state(machine, mac))

    def state(self, machine: Machine, mac: str | None) -> str:
        """A `once` machine's lifecycle state ("unknown" while the store was never read); "" otherwise."""
        if not machine.lifecycle.once:
            return ""
        return state_of(self.states, mac or machine.mac)

    def base_url(self, host: str) -> str:
        return urls.base_url(self.settings.http.public_url, host, self.settings.http.port)

    def file_url(self, base: str):
        root = self.settings.files_root

        def url(rel: str) -> str:
            rel = str(rel).lstrip("/")
            files.resolve_under(root, rel)  # raises if it is gone or outside the root
            return urls.file_url(base, rel)

        return url

    def rendering(self, plan: BootPlan, mac: str | None, uuid: str | None, host: str) -> Rendering:
        """Everything a loader needs to render `plan` for a machine that reached us at `host`."""
        base = self.base_url(host)
        ctx = boot_context(plan, mac, uuid, base, self.signer, self.settings.http.callback_url_ttl)
        return Rendering(plan, mac or plan.machine.mac or "", ctx, self.file_url(base))

    def machine_arch(self, machine: Machine, arch: Arch | None) -> Arch:
        """The architecture to serve: what the client said, else what its machine file says, else
        x86-64 UEFI (boot-operator's clients say nothing)."""
        if arch is not None:
            return arch
        return Arch(machine.arch) if machine.arch else Arch.EFI64

    def held(self, mac: str | None) -> str | None:
        """Why this MAC gets nothing ("held: <file>:<line>: <error>"), or None. Recorded in its timeline."""
        held = self.catalog.held_for(mac)
        if held is None:
            return None
        self.timeline.record("held", mac=mac, error=str(held.error))
        return held.reason

    def no_machine_reason(self) -> str:
        default = self.catalog.held.get("default")
        if default is not None:
            return f"unknown machine, and default.toml is broken with no last good version ({default.reason})"
        return "unknown machine and no default.toml"

    # ------------------------------------------------------------------ DHCP (DhcpCore)

    def decide(self, client: Client, server_ip: str) -> Decision:
        machine = self.find(client.mac, client.uuid)
        if machine is None:
            return Decision(None, self.held(client.mac) or self.no_machine_reason())
        if not machine.answers:
            return Decision(None, f"{machine.name}: boot.ignore = true", machine)
        base = self.base_url(server_ip)
        if client.firmware is Firmware.IPXE:
            # the script URL whatever the plan: the script request says why not, if not
            url = urls.script_url(base, client.mac, client.uuid, client.arch.value)
            return self._offer(OfferKind.IPXE_SCRIPT, url, machine)
        plan = self.plan(machine, client.arch, client.firmware, client.mac)
        if plan.refusal is not None:
            return Decision(None, plan.refusal, machine)
        if client.firmware is Firmware.HTTP_BOOT:
            # UEFI HTTP boot takes the EFI binary or UKI directly, else the UKI netbootd assembles
            # of the kernel, else iPXE over HTTP
            if not plan.loader and plan.efi is not None:
                url = plan.efi.url(base)
            elif plan.loader == "uki":
                url = urls.uki_url(base, client.mac, plan.arch.value)
            else:
                url = urls.binary_url(base, plan.bootfile)
            return self._offer(OfferKind.HTTP_EFI, url, machine)
        return self._offer(OfferKind.TFTP, plan.bootfile, machine)

    @staticmethod
    def _offer(kind: OfferKind, bootfile: str, machine: Machine) -> Decision:
        return Decision(Offer(kind, bootfile, machine.name), f"{machine.name}: {kind.value}", machine)

    def offer(self, client: Client, server_ip: str) -> Offer | None:
        return self.decide(client, server_ip).offer

    def dhcp_seen(self, client: Client, offer: Offer | None, reason: str, client_ip: str = "", port: int = 67) -> None:
        """The DHCP edge reports what it answered (or why not) to the boot timeline.

        `client_ip` is whatever address DHCP revealed (requested IP, ciaddr, 4011 source):
        TFTP and HTTP requests from it are then filed under this machine."""
        # On the DHCP hot path: plain attribute reads (`_value_`: Enum.value is a slow property in 3.11).
        event = {"port": port, "firmware": client.firmware._value_, "arch": client.arch._value_}
        if offer is None:
            event["answered"] = False
            event["reason"] = reason
        else:
            event["offered"] = f"{offer.kind._value_} {offer.bootfile}"
        self.timeline.record_dhcp(client.mac, client_ip, event)

    # ------------------------------------------------------------------ TFTP (TftpCore)

    def mac_for_ip(self, ip: str) -> str | None:
        """The MAC that claimed this address, if reliably known (TFTP and HTTP only see addresses)."""
        return self.timeline.mac_for(ip)

    def tftp_done(
        self, client_ip: str, name: str, size: int, seconds: float, error: str = "", probe: bool = False
    ) -> str | None:
        """The TFTP edge reports a finished (or failed) transfer; returns the MAC if known.

        Filed under the MAC the file name carries (a per-machine file), else under the machine
        that claimed the client's address. `probe`: the client only read the file's size from
        the OACK and ended the transfer (EDK2 does, before asking for the file again): a normal
        step, not an error."""
        if probe:
            return self.timeline.record("tftp", mac=mac_in_path(name), ip=client_ip, file=name, probe=True,
                                        seconds=round(seconds, 3))
        if error == "file not found" and any(loader.optional(name.lstrip("/")) for loader in self.loaders.values()):
            # shim's optional files and GRUB's module lists: "not found" is the normal answer
            return self.timeline.record("tftp", mac=mac_in_path(name), ip=client_ip, file=name, optional=True)
        return self.timeline.record(
            "tftp",
            mac=mac_in_path(name),
            ip=client_ip,
            file=name,
            bytes=size,
            seconds=round(seconds, 3),
            mbps=round(size / max(seconds, 1e-6) / 1e6, 1),
            error=error or None,
        )

    def open_tftp(self, name: str, client_ip: str = "", server_ip: str = "") -> BinaryIO | Deferred:
        """A name a loader serves (iPXE binaries; shim, GRUB, grub.cfg and each machine's files), else
        a file under tftp.root (per-machine binaries among them). Raises files.FileError; a Deferred
        when the bytes must be fetched first. A held machine (known by the address DHCP saw) gets
        no file at all."""
        why = self.held(self.mac_for_ip(client_ip)) if client_ip and self.catalog.held else None
        if why:
            raise files.AccessDenied(why)
        clean = files.clean_name(name)
        for loader in self.loaders.values():
            request = loader.tftp_request(clean)
            if request is None:
                continue
            rendering = None
            if request.mac:
                machine = self._serving(request.mac)
                arch = Arch(request.arch) if request.arch else loader.config_arch(machine)
                plan = self.plan(machine, arch, Firmware.EFI_PXE, request.mac)
                rendering = self.rendering(plan, request.mac, None, self.settings.advertise or server_ip or "127.0.0.1")
            client_mac = self.mac_for_ip(client_ip) if client_ip else None
            return loader.open_tftp(request, rendering, client_ip, client_mac, self.timeline.clock())
        if self.settings.tftp.root is None:
            raise files.FileNotFound(clean)
        return files.open_under(self.settings.tftp.root, clean)

    def _serving(self, mac: str) -> Machine:
        """The machine a per-machine name is for; FileError when it gets nothing."""
        why = self.held(mac)
        if why:
            raise files.AccessDenied(why)
        machine = self.find(mac, None)
        if machine is None:
            raise files.FileNotFound(self.no_machine_reason())
        if not machine.answers:
            raise files.FileNotFound(f"{machine.name}: boot.ignore = true")
        return machine

    # ------------------------------------------------------------------ HTTP (HttpCore)

    def binary_path(self, name: str) -> Path:
        """A loader binary for HTTP (the names a loader serves), else a file under tftp.root."""
        clean = files.clean_name(name)
        for loader in self.loaders.values():
            path = loader.http_binary(clean)
            if path is not None:
                return path
        if self.settings.tftp.root is not None:
            return files.resolve_under(self.settings.tftp.root, clean)
        raise files.FileNotFound(clean)

    def binary_names(self) -> list[str]:
        return sorted(self.settings.ipxe.names())

    def file_path(self, rel: str) -> Path:
        return files.resolve_under(self.settings.files_root, rel)

    def host_path(self, name: str) -> Path:
        catalog = self.catalog
        if self._host_files is None or self._host_files[0] is not catalog:
            self._host_files = (catalog, host_files(catalog.files.values()))
        return files.host_file(name, self._host_files[1])

    def download(self, mac: str | None, uri: str) -> dict[str, str]:
        """What a download (`uri`: path and query) is for the machine `mac`: {"role": ...} for an
        artefact of its plan (kernel, initrd, efi; an image layer: also squashfs), {"file": ...}
        for a file its command line names with file("..."); {} when it is neither or unknown."""
        parts = urlsplit(uri)
        path = parts.path
        if path == "/image":
            role = layer_role((parse_qs(parts.query).get("layerName") or [""])[0])
            return {"role": role} if role else {}
        if path.startswith(("/httpboot/", "/uki/")) and path.endswith(".efi"):
            return {"role": "efi"}  # an image's UKI layer, or the UKI netbootd assembled
        if not path.startswith(("/files/", "/host/")) or mac is None:
            return {}
        machine = self.find(mac, None)
        if machine is None:
            return {}
        hit = self._downloads.get(id(machine))
        if hit is None or hit[0] is not machine:
            hit = self._downloads[id(machine)] = (machine, download_names(machine))
        name = unquote(path[len("/files/"):] if path.startswith("/files/") else path[len("/host"):])
        return hit[1].get(name, {})

    def uki(self, mac: str, arch: Arch, host: str) -> Deferred:
        """The UKI assembled of the machine's kernel, initrds and command line for UEFI HTTP boot
        (netbootd.core.loaders.uki): Deferred[Uki]. Raises NoScript when the machine
        gets none (its plan says why), TemplateError, FileError; errbacks FileError, UkiError, OSError."""
        machine = self.find(mac, None)
        if machine is None:
            raise NoScript(self.held(mac) or self.no_machine_reason())
        plan = self.plan(machine, arch, Firmware.HTTP_BOOT, mac)
        if plan.refusal is not None:
            raise NoScript(plan.refusal)
        if plan.loader != "uki":
            raise NoScript(f"{machine.name}: UEFI HTTP boot on {arch.value} is not offered an assembled UKI "
                           f"({plan.loader or 'it boots its EFI binary / UKI'})")
        return self.loaders["uki"].uki(self.rendering(plan, mac, None, host))  # type: ignore[attr-defined]

    def chain_stub(self, host: str) -> str:
        return chain_stub(self.base_url(host))

    def script(self, mac: str | None, uuid: str | None, arch: Arch, host: str) -> str:
        machine = self.find(mac, uuid)
        if machine is None:
            raise NoScript(self.held(mac) or self.no_machine_reason())
        plan = self.plan(machine, arch, Firmware.IPXE, mac)
        if plan.refusal is not None:
            raise NoScript(plan.refusal)
        return self.loaders["ipxe"].render(self.rendering(plan, mac, uuid, host))

    def ignition(self, mac: str | None, uuid: str | None, exp: str = "", sig: str = "") -> bytes | None:
        """The machine's Ignition, None if it has none; raises Denied when the machine's
        URLs are signed (the default) and this request's signature does not hold."""
        machine = self.find(mac, uuid)
        if machine is None or not machine.answers or machine.ignition is None:
            return None
        if machine.signed_urls:
            why = self.signer.check("ignition", signing_identity(mac, uuid) or "", exp, sig)
            if why is not None:
                raise Denied(why)
        return machine.ignition

    def booty(self, mac: str, token: str | None = None) -> bytes | None:
        """BOOTy JSON; `token` is the "<exp>-<sig>" path segment of a signed BOOTYURL."""
        machine = self.find(mac, None)
        if machine is None or not machine.answers or machine.booty is None:
            return None
        if machine.signed_urls:
            exp, _, sig = (token or "").partition("-")
            why = self.signer.check("booty", mac, exp, sig)
            if why is not None:
                raise Denied(why)
        return json.dumps(dict(machine.booty)).encode()

    def efi_url(self, machine: Machine, host: str, arch: Arch | None = None) -> str:
        """The URL of the EFI binary / UKI UEFI HTTP boot would run directly, "" if none."""
        plan = self.plan(machine, self.machine_arch(machine, arch), Firmware.HTTP_BOOT)
        return plan.efi.url(self.base_url(host)) if plan.efi is not None else ""

    def httpboot(self, identities: list[str], host: str) -> tuple[int, dict[str, str]]:
        """boot-operator's /httpboot contract (reference.md §3), machine found by MAC among
        the X-Forwarded-For entries (IPs carry no identity here: netbootd keeps no leases)."""
        body: dict[str, str] = {"ClientIPs": ",".join(identities)}
        for ident in identities:
            try:
                mac = normalize_mac(ident)
            except ValueError:
                continue
            held = self.held(mac)
            if held:
                return 404, {"ClientIPs": body["ClientIPs"], "error": held}
            machine = self.catalog.machines.get(mac)
            url = self.efi_url(machine, host) if machine is not None and machine.answers else ""
            if url:
                if machine.uuid:  # type: ignore[union-attr]
                    body["SystemUUID"] = machine.uuid  # type: ignore[union-attr]
                body["UKIURL"] = url
                return 200, body
        default = self.catalog.default
        url = self.efi_url(default, host, Arch.EFI64) if default is not None and default.answers else ""
        if url:
            body["UKIURL"] = url
            return 200, body
        return 500, {"error": "no machine matches " + (body["ClientIPs"] or "(no X-Forwarded-For)")
                     + " and default.toml has no boot.efi or image"}

    # ------------------------------------------------------------------ lifecycle

    def lifecycle_callback(self, outcome: str, mac: str | None, uuid: str | None, exp: str, sig: str,
                           source: str, note: str = "") -> Deferred:
        """An installer's {{ done_url }} / {{ failed_url }}: checked like Ignition's signed URL (a
        forged, expired or other machine's URL changes nothing), then stored; the Deferred fires
        with the machine's state once the store has it."""
        if outcome not in ("done", "failed"):
            raise CallbackRefused(404, f"no lifecycle report {outcome!r} (done or failed)")
        why = self.signer.check(outcome, signing_identity(mac, uuid) or "", exp, sig)
        if why is not None:
            raise Denied(why)
        machine = self.find(mac, uuid)
        target = mac or (machine.mac if machine is not None else None)
        if machine is None or not machine.answers or target is None:
            raise CallbackRefused(404, f"no machine answers for {mac or uuid}: nothing to mark {outcome}")
        return self._report(machine, target, PROVISIONED if outcome == "done" else FAILED, f"{outcome}_url",
                            source, note)

    def lifecycle_event(self, mac: str | None, uuid: str | None, event: str, source: str) -> Deferred | None:
        machine = self.find(mac, uuid)
        target = mac or (machine.mac if machine is not None else None)
        if machine is None or target is None or not machine.lifecycle.once or machine.lifecycle.done_on != event:
            return None
        if self.state(machine, target) != PROVISIONING:
            return None  # already done (a second Ignition run), failed, or unknown: nothing to report
        return self._report(machine, target, PROVISIONED, event, source, "")

    def set_state(self, mac: str, state: str, by: str, source: str, note: str = "") -> Deferred:
        """An operator's action (reprovision, mark done or failed): stored, then in the timeline."""
        return self.states.transition(mac, state, by, source, note)

    def _report(self, machine: Machine, mac: str, state: str, by: str, source: str, note: str) -> Deferred:
        if not machine.lifecycle.once:
            raise CallbackRefused(409, f"{machine.name} does not provision once ([lifecycle] once = true): "
                                       "its state is not kept")
        current = self.state(machine, mac)
        if current == "unknown":
            raise StoreUnavailable(f"the state store cannot be read: {self.states.status().reason}")
        retrying = current == FAILED and machine.lifecycle.on_failure == "retry"  # a new install reports
        refused = None if retrying else may_report(current, state)
        if refused is not None:
            raise CallbackRefused(409, refused)
        return self.states.transition(mac, state, by, source, note)

    def _state_changed(self, mac: str, record) -> None:
        """Every stored transition, whichever netbootd took it, goes into the machine's timeline."""
        if record is None:
            self.timeline.record("lifecycle", mac=mac, state="forgotten")
        else:
            # `source`, not `ip`: an operator's address must not become the machine's
            self.timeline.record("lifecycle", mac=mac, state=str(record.state), by=record.by, source=record.source)

    def lifecycle_rows(self) -> list[dict[str, object]]:
        """Every machine that provisions once (by its file) or has a stored state, with that state."""
        view = self.states.view()
        rows: dict[str, dict[str, object]] = {}
        for machine in self.catalog.machines.values():
            if machine.lifecycle.once and machine.mac:
                rows[machine.mac] = {"mac": machine.mac, "name": machine.name, "profile": machine.profile or "",
                                     "once": True, "state": self.state(machine, machine.mac)}
        for mac, record in view.items():
            row = rows.setdefault(mac, {"mac": mac, "name": "", "profile": "", "once": False, "state": record.state})
            row.update(since=record.since, by=record.by, source=record.source)
        return sorted(rows.values(), key=lambda r: str(r["mac"]))
