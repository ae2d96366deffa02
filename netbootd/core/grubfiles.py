"""What the TFTP edge gets for a GRUB-chain name (netbootd.core.grub.parse): shim and GRUB from
their configured paths, the generic and per-machine grub.cfg rendered from the catalog, and each
machine's kernel, initrds or EFI binary from wherever its boot definition says.

Files under files_root are opened at once. URLs and OCI image layers must be fetched first: the
service injects `fetch(artefact) -> Deferred[Path]` (the image proxy's cache, a URL cache), and
the TFTP edge waits for the Deferred before it answers. A machine's grub.cfg starts those fetches,
so its kernel is usually in the cache before GRUB asks for it.

It also notices the one way this chain fails silently: GRUB loaded from netbootd, but its grub.cfg
never asked for. Debian's signed GRUB takes its TFTP server from the site DHCP server's answer
(siaddr), not from a proxy's, so with netbootd on another host GRUB asks the wrong server.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs
from twisted.internet.defer import Deferred

from netbootd.config.machines import BootKind, Machine
from netbootd.core import files, grub, urls
from netbootd.core.context import boot_context
from netbootd.imageref import ImageRef
from netbootd.logs import get_logger
from netbootd.model import Arch

if TYPE_CHECKING:
    from netbootd.core.decide import BootCore

log = get_logger("netbootd.core")

GRUB_CONFIG_GRACE = 30.0  # seconds from GRUB's download to its grub.cfg request before netbootd says why


@attrs.frozen
class Artefact:
    """Where one of a machine's boot files comes from."""

    kind: str  # "file" (under files_root), "url", "layer" (an OCI image layer)
    location: str = ""  # files_root-relative path, or URL
    image: ImageRef | None = None
    media_type: str = ""
    arch: str = ""  # the OCI architecture of a layer (a multi-arch image: the machine's)

    def describe(self) -> str:
        return f"{self.image} {self.media_type.rsplit('.', 1)[-1]} layer" if self.kind == "layer" else self.location


def _location(location: str) -> Artefact:
    return Artefact("url" if "://" in location else "file", location)


def artefacts(core: BootCore, machine: Machine, arch: Arch = Arch.EFI64) -> dict[str, Artefact]:
    """"kernel", "initrd<N>", "image.efi" → source, from the machine's boot definition for `arch`."""
    boot = machine.boot
    if boot.kind in (BootKind.KERNEL, BootKind.EFI):
        found = boot.files(arch.value)
        if found is None:
            return {}
        if boot.kind is BootKind.EFI:
            return {"image.efi": _location(found.efi)}
        out = {"kernel": _location(found.kernel)}
        out.update({f"initrd{i}": _location(loc) for i, loc in enumerate(found.initrds)})
        return out
    if boot.kind is BootKind.IMAGE and boot.image is not None:
        oci = arch.oci
        if core.uki_only(machine, arch):
            return {"image.efi": Artefact("layer", image=boot.image, media_type=urls.UKI_MEDIA, arch=oci)}
        return {
            "kernel": Artefact("layer", image=boot.image, media_type=urls.KERNEL_MEDIA, arch=oci),
            "initrd0": Artefact("layer", image=boot.image, media_type=urls.INITRD_MEDIA, arch=oci),
        }
    return {}


def open_path(path: Path) -> BinaryIO:
    """An operator-configured file (shim, GRUB, a fetched artefact): regular, opened read-only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise files.FileNotFound(str(path)) from None
    except OSError:
        raise files.AccessDenied(str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise files.AccessDenied(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


class GrubFiles:
    def __init__(self, core: BootCore) -> None:
        self.core = core
        # Injected by the service: fetch a URL or image layer into netbootd's cache.
        self.fetch: Callable[[Artefact], Deferred] | None = None
        self.awaiting_config: dict[str, tuple[str | None, float]] = {}  # client IP → (MAC, when GRUB was sent)

    # ------------------------------------------------------------------ serving

    def open(self, request: grub.GrubRequest, client_ip: str, server_ip: str = "") -> BinaryIO | Deferred:
        """`server_ip`: the address the request reached (URLs in a grub.cfg name it)."""
        what = request.what
        if what in ("shim", "grub"):
            pair = self.core.settings.grub.for_arch(request.arch)
            assert pair is not None  # the parser only knows x64 and aa64
            path = pair[0] if what == "shim" else pair[1]
            if not path.is_file():
                raise files.FileNotFound(f"{path} (grub.{request.arch}_{what}: install Debian's "
                                         f"{'shim-signed' if what == 'shim' else 'grub-efi-*-signed'} package)")
            if what == "grub" and client_ip:
                self.awaiting_config[client_ip] = (self.core.mac_for_ip(client_ip), self.core.timeline.clock())
            return open_path(path)
        if what in ("shim-optional", "module-list"):
            raise files.FileNotFound(f"{what} (optional: not found is the normal answer)")
        self.awaiting_config.pop(client_ip, None)
        if what == "generic-cfg":
            return io.BytesIO(grub.generic_cfg().encode())
        machine = self._machine(request.mac)
        if what == "machine-cfg":
            text = self.config(machine, request.mac, self.core.settings.advertise or server_ip or "127.0.0.1")
            self._prefetch(machine)
            return io.BytesIO(text.encode())
        key = {"kernel": "kernel", "initrd": f"initrd{request.index}", "efi": "image.efi"}[what]
        artefact = artefacts(self.core, machine, Arch(request.arch)).get(key)
        if artefact is None:
            raise files.FileNotFound(f"{machine.name} has no {key} for {request.arch}")
        return self._open_artefact(artefact)

    def _machine(self, mac: str) -> Machine:
        why = self.core.held(mac)
        if why:
            raise files.AccessDenied(why)
        machine = self.core.find(mac, None)
        if machine is None:
            raise files.FileNotFound(self.core.no_machine_reason())
        if not machine.answers:
            raise files.FileNotFound(f"{machine.name}: boot.ignore = true")
        return machine

    def config(self, machine: Machine, mac: str, host: str) -> str:
        """The machine's grub.cfg (for TFTP and `netbootd explain`). Its file names carry ${grub_cpu}:
        each machine fetches its own architecture's files. The command line and the number of
        initrds are those of the machine's architecture if its file says, else x86-64's (or the
        one architecture its files exist for)."""
        arch = self._config_arch(machine)
        base = self.core.base_url(host)
        ctx = boot_context(machine, mac, None, arch, base, self.core.signer, self.core.layers_of(machine, arch))
        found = artefacts(self.core, machine, arch)
        initrds = sum(1 for k in found if k.startswith("initrd"))
        return grub.machine_cfg(machine, ctx, self.core.file_url(base), mac, initrds, uki="image.efi" in found)

    @staticmethod
    def _config_arch(machine: Machine) -> Arch:
        if machine.arch:
            return Arch(machine.arch)
        if machine.boot.per_arch and Arch.EFI64.value not in machine.boot.by_arch and machine.boot.by_arch:
            return Arch(sorted(machine.boot.by_arch)[0])
        return Arch.EFI64

    def _open_artefact(self, artefact: Artefact) -> BinaryIO | Deferred:
        if artefact.kind == "file":
            return files.open_under(self.core.settings.files_root, artefact.location)
        if self.fetch is None:
            raise files.FileNotFound(f"{artefact.describe()}: this netbootd cannot fetch remote files")
        d = self.fetch(artefact)
        d.addCallback(open_path)
        return d

    def _prefetch(self, machine: Machine) -> None:
        """Start fetching a machine's remote artefacts as soon as GRUB reads its configuration."""
        if self.fetch is None:
            return
        for artefact in artefacts(self.core, machine, self._config_arch(machine)).values():
            if artefact.kind != "file":
                self.fetch(artefact).addErrback(lambda _f: None)  # the TFTP request reports a failure

    # ------------------------------------------------------------------ a GRUB that never asked

    def overdue(self, now: float) -> list[tuple[str, str | None]]:
        """(client IP, MAC) of machines that got GRUB from netbootd GRUB_CONFIG_GRACE seconds ago
        and never asked for a grub.cfg; each reported once (timeline and log)."""
        late = [(ip, mac) for ip, (mac, when) in self.awaiting_config.items() if now - when >= GRUB_CONFIG_GRACE]
        for ip, mac in late:
            del self.awaiting_config[ip]
            hint = ("GRUB was sent but never asked netbootd for /grub/grub.cfg: Debian's signed GRUB asks the TFTP "
                    "server named in the site DHCP server's answer (next-server, siaddr), not the proxy's. Run "
                    "netbootd on the DHCP server's host, or set next-server on the site DHCP server to this "
                    "netbootd (README: Secure Boot)")
            self.core.timeline.record("grub-config-missing", mac=mac, ip=ip, hint=hint)
            log.warn("GRUB never asked for its configuration", mac=mac or "", client=ip, hint=hint)
        return late
