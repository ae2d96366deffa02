"""What image-backed machines will boot: `netbootd check --resolve` and the core's view.

`resolve_machines()` resolves every `boot.image` against its registry (synchronously: the CLI)
and says, per machine, which layers it gets (kernel + initramfs [+ squashfs], or a UKI), or
what failed. `boot_layers()` is the pure part, shared with the daemon, which calls it on a
resolution it already has (`RegistryClient.peek`, never I/O on the reactor).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from netbootd.config.machines import BootKind, Machine
from netbootd.imageref import ImageRef
from netbootd.images.oci import AuthFailed, Disallowed, Layer, NotFound, RegistryError, ResolvedImage, UpstreamTimeout
from netbootd.images.registry import RegistryClient

KERNEL = "application/vnd.ironcore.image.kernel"
INITRAMFS = "application/vnd.ironcore.image.initramfs"
SQUASHFS = "application/vnd.ironcore.image.squashfs"
UKI = "application/vnd.ironcore.image.uki"


@attrs.frozen
class BootLayers:
    kernel: Layer | None
    initramfs: Layer | None
    squashfs: Layer | None
    uki: Layer | None

    @property
    def bootable(self) -> bool:
        return bool(self.uki or (self.kernel and self.initramfs))

    def kinds(self) -> frozenset[str]:
        """Which boot layers exist: what the core needs to know to choose an offer."""
        return frozenset(n for n in ("kernel", "initramfs", "squashfs", "uki") if getattr(self, n) is not None)

    def describe(self) -> str:
        parts = []
        for name in ("kernel", "initramfs", "squashfs", "uki"):
            layer = getattr(self, name)
            if layer is not None:
                parts.append(f"{name} {layer.digest[:19]} ({_size(layer.size)})")
        return ", ".join(parts) or "no boot layers"


def boot_layers(image: ResolvedImage) -> BootLayers:
    """The layers a machine boots from (ironcore types, or their gardenlinux equivalents)."""
    return BootLayers(image.layer(KERNEL), image.layer(INITRAMFS), image.layer(SQUASHFS), image.layer(UKI))


def failure_kind(exc: RegistryError) -> str:
    """What an operator checks first for this failure (health problems group by it)."""
    if isinstance(exc, Disallowed):
        return "not allowed"
    if isinstance(exc, NotFound):
        return "no such image or tag"
    if isinstance(exc, AuthFailed) or exc.status in (401, 403):
        return "credentials"
    if isinstance(exc, UpstreamTimeout):
        return "unreachable"
    return "unreachable" if exc.status >= 500 else "refused"


# What the operator changes, by failure_kind() (a refused registry's message already names registry.allowed)
_WHAT_TO_CHANGE = {
    "no such image or tag": "; check the name and tag in boot.image",
    "credentials": "; check this registry's credentials in registry.auth_file",
    "unreachable": "; check that this host reaches the registry (DNS, firewall, proxy), or list a plain-HTTP "
                   "registry in registry.insecure",
}


@attrs.frozen
class Resolution:
    machine: str
    ref: ImageRef
    image: ResolvedImage | None = None
    error: str = ""
    kind: str = ""  # failure_kind() of the error
    arch: str = ""  # the OCI architecture it was resolved for
    required: bool = True  # False: an architecture tried in case a machine of it asks (no machine file says so)

    @property
    def ok(self) -> bool:
        return self.image is not None and boot_layers(self.image).bootable

    def line(self) -> str:
        arch = f" [{self.arch}]" if self.arch else ""
        if self.image is None:
            return f"{self.machine}: {self.ref}{arch}: ERROR {self.error}"
        layers = boot_layers(self.image)
        where = f"{self.image.digest[:19]}" + (f" {self.image.platform}" if self.image.platform else "")
        verdict = "" if layers.bootable else " ERROR: neither kernel + initramfs nor a UKI layer"
        return f"{self.machine}: {self.ref}{arch} → {where}: {layers.describe()}{verdict}"


# The architectures netbootd boots (OCI names): an image is resolved for each, so machines of either
# architecture find their own layers, unless the machine file names its `arch`.
BOOT_ARCHITECTURES = ("amd64", "arm64")


def image_machines(machines: Iterable[Machine]) -> list[tuple[str, ImageRef, str | None]]:
    """(machine name, image, OCI architecture or None) of every machine that boots an OCI image.
    None: the machine's file does not say; its firmware will (any architecture netbootd boots)."""
    from netbootd.model import Arch

    return [(m.name, m.boot.image, Arch(m.arch).oci if m.arch else None)
            for m in machines if m.boot.kind is BootKind.IMAGE and m.boot.image is not None]


def resolve_machines(client: RegistryClient, machines: Iterable[tuple[str, ImageRef, str | None]],
                     default_arch: str = "amd64") -> list[Resolution]:
    """Resolve each machine's image for its architecture (for a machine that names none: the
    default architecture, required, and the other ones netbootd boots, optional: an image need not
    have them). The registry client caches, so an image shared by many machines is fetched once."""
    out = []
    for name, ref, arch in machines:
        wanted = [(arch, True)] if arch else [(default_arch, True)] + [
            (a, False) for a in BOOT_ARCHITECTURES if a != default_arch]
        for oci, required in wanted:
            try:
                out.append(Resolution(name, ref, client.resolve(ref, architecture=oci), arch=oci, required=required))
            except RegistryError as exc:
                kind = failure_kind(exc)
                out.append(Resolution(name, ref, error=exc.message + _WHAT_TO_CHANGE.get(kind, ""), kind=kind,
                                      arch=oci, required=required))
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
