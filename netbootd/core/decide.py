"""The boot-decision core: every edge asks it what a machine gets; none decides on its own.

All answers come from an in-memory `Catalog` swapped atomically on reload, so a decision
is a dictionary lookup and never blocks the reactor, however many machines boot at once.
"""

from __future__ import annotations

import json
import secrets
from typing import BinaryIO

import attrs
from twisted.internet.defer import Deferred

from netbootd.config.machines import GRUB_KINDS, BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.core import files, grub, ipxe, urls
from netbootd.core.context import boot_context, signing_identity
from netbootd.core.grubfiles import GrubFiles
from netbootd.core.ident import mac_in_path
from netbootd.core.signing import UrlSigner
from netbootd.core.timeline import Timeline
from netbootd.model import Arch, Client, Firmware, Offer, OfferKind


@attrs.frozen
class Decision:
    offer: Offer | None
    reason: str  # why not, or what was chosen (for logs and `netbootd explain`)
    machine: Machine | None = None


class NoScript(Exception):
    """This machine gets no script (ignored, unknown, or nothing to give this arch)."""


class Denied(Exception):
    """A signed URL was required and missing, expired, tampered or another machine's."""


class BootCore:
    def __init__(self, settings: Settings, catalog: Catalog | None = None, signer: UrlSigner | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog()
        # An ephemeral key unless the service hands one kept in the state directory.
        self.signer = signer or UrlSigner(secrets.token_bytes(32), settings.http.signed_url_ttl)
        self.timeline = Timeline()  # what each machine's boot has done so far (edges report to it)
        # Boot layers each OCI image is known to have ({"kernel", "initramfs", "squashfs", "uki"}),
        # filled in the background by the service; decisions read it, never the network.
        self.image_layers: dict[tuple[str, str], frozenset[str]] = {}  # (image, OCI arch) → boot layers
        self.grub_files = GrubFiles(self)

    def replace_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog  # one reference swap: readers see the old or the new, never a mix

    # ------------------------------------------------------------------ lookups

    def find(self, mac: str | None = None, uuid: str | None = None) -> Machine | None:
        return self.catalog.find(mac, uuid)

    def base_url(self, host: str) -> str:
        return urls.base_url(self.settings.http.public_url, host, self.settings.http.port)

    def file_url(self, base: str):
        root = self.settings.files_root

        def url(rel: str) -> str:
            rel = str(rel).lstrip("/")
            files.resolve_under(root, rel)  # raises if it is gone or outside the root
            return urls.file_url(base, rel)

        return url

    def machine_arch(self, machine: Machine, arch: Arch | None) -> Arch:
        """The architecture to serve: what the client said, else what its machine file says, else
        x86-64 UEFI (boot-operator's clients say nothing)."""
        if arch is not None:
            return arch
        return Arch(machine.arch) if machine.arch else Arch.EFI64

    def layers_of(self, machine: Machine, arch: Arch = Arch.EFI64) -> frozenset[str] | None:
        """The boot layers of an image machine's image for `arch` (a multi-arch index resolves per
        architecture), None while not yet resolved."""
        if machine.boot.kind is not BootKind.IMAGE or machine.boot.image is None:
            return None
        return self.image_layers.get((str(machine.boot.image), arch.oci))

    def image_resolved(self, ref: str, oci_arch: str, kinds: frozenset[str]) -> None:
        """The service learned (in the background, off the reactor) which boot layers an image has."""
        self.image_layers[(ref, oci_arch)] = kinds

    def uki_only(self, machine: Machine, arch: Arch = Arch.EFI64) -> bool:
        """An image with a UKI and no kernel: every client gets the UKI (HTTP boot, or chained by iPXE)."""
        layers = self.layers_of(machine, arch)
        return layers is not None and "uki" in layers and "kernel" not in layers

    def efi_url(self, machine: Machine, base: str, arch: Arch = Arch.EFI64) -> str:
        if machine.boot.kind is BootKind.EFI:
            found = machine.boot.files(arch.value)
            return urls.location_url(base, found.efi) if found and found.efi else ""
        layers = self.layers_of(machine, arch)
        if machine.boot.image is not None and layers is not None and "uki" in layers:
            return urls.image_layer_url(base, machine.boot.image, urls.UKI_MEDIA, arch.oci)
        return ""

    def no_files_for(self, machine: Machine, arch: Arch) -> str | None:
        """Why a per-architecture kernel / EFI boot has nothing for this arch, or None."""
        if machine.boot.kind in (BootKind.KERNEL, BootKind.EFI) and machine.boot.files(arch.value) is None:
            have = ", ".join(sorted(machine.boot.by_arch)) or "none"
            return (f"{machine.name}: no boot files for {arch.value} (its {{{{ arch }}}} locations exist for: {have})")
        return None

    # ------------------------------------------------------------------ DHCP

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

    def decide(self, client: Client, server_ip: str) -> Decision:
        machine = self.find(client.mac, client.uuid)
        if machine is None:
            return Decision(None, self.held(client.mac) or self.no_machine_reason())
        kind = machine.boot.kind
        if kind is BootKind.IGNORE:
            return Decision(None, f"{machine.name}: boot.ignore = true", machine)
        base = self.base_url(server_ip)
        if client.firmware is Firmware.IPXE:
            url = urls.script_url(base, client.mac, client.uuid, client.arch.value)
            return self._offer(OfferKind.IPXE_SCRIPT, url, machine)
        if kind is BootKind.LOCAL:
            # Not answering lets the firmware move on to the next boot device at once;
            # chainloading iPXE only to `exit` would cost a TFTP transfer.
            return Decision(None, f"{machine.name}: boot.local = true (firmware boots the next device)", machine)
        arch = client.arch
        missing = self.no_files_for(machine, arch)
        if missing:
            return Decision(None, missing, machine)
        if (kind is BootKind.EFI or self.uki_only(machine, arch)) and arch is Arch.BIOS:
            return Decision(None, f"{machine.name}: an EFI binary / UKI needs UEFI firmware, client is BIOS", machine)
        binary = machine.ipxe_binary or self.settings.ipxe.for_arch(arch.value)
        if client.firmware is Firmware.HTTP_BOOT:
            # UEFI HTTP boot takes the EFI binary or the image's UKI layer directly.
            direct = self.efi_url(machine, base, arch)
            if direct:
                return self._offer(OfferKind.HTTP_EFI, direct, machine)
            if machine.secure_boot:
                return Decision(None, f"{machine.name}: secure_boot = true and a kernel boot: over UEFI HTTP boot "
                                      "Secure Boot firmware runs only signed binaries, and Debian's signed GRUB has no "
                                      "HTTP; PXE-boot this machine (shim + GRUB over TFTP) or boot a signed UKI "
                                      "(boot.efi, or an image with a UKI layer)", machine)
            if not binary:
                return Decision(None, f"{machine.name}: a kernel boot over UEFI HTTP boot needs iPXE, and none is "
                                      f"configured for {arch.value}: set ipxe.{arch.value} (an arm64 iPXE: "
                                      "deploy/ipxe-arm64.sh), or PXE-boot it (GRUB), or boot a UKI", machine)
            return self._offer(OfferKind.HTTP_EFI, urls.binary_url(base, binary), machine)
        if machine.loader == "grub":
            return self._grub_offer(client, machine)
        if not binary and self._grub_installed(arch) and kind.value in GRUB_KINDS:
            # No iPXE for this arch (Debian 12 ships none for arm64): GRUB boots the same definition.
            return self._grub_offer(client, machine)
        if not binary:
            return Decision(None, f"no iPXE binary configured for {client.arch.value} (set ipxe.{client.arch.value})")
        return self._offer(OfferKind.TFTP, binary, machine)

    def _grub_installed(self, arch: Arch) -> bool:
        pair = self.settings.grub.for_arch(arch.value)
        return pair is not None and pair[1].is_file()

    def _grub_offer(self, client: Client, machine: Machine) -> Decision:
        """UEFI PXE of a GRUB machine: shim (Secure Boot) or GRUB itself, from netbootd's TFTP."""
        arch = client.arch._value_
        if self.settings.grub.for_arch(arch) is None:
            return Decision(None, f"{machine.name}: loader grub needs UEFI x86-64 or arm64 firmware, client is {arch}",
                            machine)
        name = grub.shim_name(arch) if machine.secure_boot else grub.grub_name(arch)
        return self._offer(OfferKind.TFTP, name, machine)

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
        if error == "file not found" and grub.optional(name):
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
        """The configured iPXE binaries come from the iPXE directory; the GRUB chain (shim, GRUB,
        grub.cfg, kernels and initrds) from netbootd.core.grubfiles; everything else (per-machine
        binaries included) from the TFTP root. Raises files.FileError. A Deferred when the bytes
        must be fetched first (a URL or image layer for GRUB). A held machine (known by the
        address DHCP saw) gets no file at all."""
        why = self.held(self.mac_for_ip(client_ip)) if client_ip and self.catalog.held else None
        if why:
            raise files.AccessDenied(why)
        clean = files.clean_name(name)
        request = grub.parse(clean)
        if request is not None:
            return self.grub_files.open(request, client_ip, server_ip)
        if clean in self.settings.ipxe.names():
            return files.open_under(self.settings.tftp.ipxe_dir, clean)
        if self.settings.tftp.root is None:
            raise files.FileNotFound(clean)
        return files.open_under(self.settings.tftp.root, clean)

    def binary_path(self, name: str):
        """An iPXE binary for HTTP (only the configured names)."""
        clean = files.clean_name(name)
        if clean in self.settings.ipxe.names():
            return files.resolve_under(self.settings.tftp.ipxe_dir, clean)
        if self.settings.tftp.root is not None:
            return files.resolve_under(self.settings.tftp.root, clean)
        raise files.FileNotFound(clean)

    # ------------------------------------------------------------------ HTTP

    def script(self, mac: str | None, uuid: str | None, arch: Arch, host: str) -> str:
        machine = self.find(mac, uuid)
        if machine is None:
            raise NoScript(self.held(mac) or self.no_machine_reason())
        if not machine.answers:
            raise NoScript(f"{machine.name}: boot.ignore = true")
        missing = self.no_files_for(machine, arch)
        if missing:
            raise NoScript(missing)
        uki_only = self.uki_only(machine, arch)
        if (machine.boot.kind is BootKind.EFI or uki_only) and arch is Arch.BIOS:
            raise NoScript(f"{machine.name}: an EFI binary / UKI needs UEFI firmware, client is BIOS")
        base = self.base_url(host)
        ctx = boot_context(machine, mac, uuid, arch, base, self.signer, self.layers_of(machine, arch))
        return ipxe.render_script(machine, ctx, self.file_url(base), self.efi_url(machine, base, arch), uki_only)

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

    def httpboot(self, identities: list[str], host: str) -> tuple[int, dict[str, str]]:
        """boot-operator's /httpboot contract (reference.md §3), machine found by MAC among
        the X-Forwarded-For entries (IPs carry no identity here: netbootd keeps no leases)."""
        from netbootd.model import normalize_mac

        base = self.base_url(host)
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
            url = self.efi_url(machine, base, self.machine_arch(machine, None)) if machine and machine.answers else ""
            if url:
                if machine.uuid:  # type: ignore[union-attr]
                    body["SystemUUID"] = machine.uuid  # type: ignore[union-attr]
                body["UKIURL"] = url
                return 200, body
        default = self.catalog.default
        url = self.efi_url(default, base) if default is not None and default.answers else ""
        if url:
            body["UKIURL"] = url
            return 200, body
        return 500, {"error": "no machine matches " + (body["ClientIPs"] or "(no X-Forwarded-For)")
                     + " and default.toml has no boot.efi or image"}
