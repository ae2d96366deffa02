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
from netbootd.images.reference import ImageRef
from netbootd.images.registry import (
    AuthFailed,
    Disallowed,
    Layer,
    NotFound,
    RegistryClient,
    RegistryError,
    ResolvedImage,
    UpstreamTimeout,
)

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


@attrs.frozen
class Resolution:
    machine: str
    ref: ImageRef
    image: ResolvedImage | None = None
    error: str = ""
    kind: str = ""  # failure_kind() of the error

    @property
    def ok(self) -> bool:
        return self.image is not None and boot_layers(self.image).bootable

    def line(self) -> str:
        if self.image is None:
            return f"{self.machine}: {self.ref}: ERROR {self.error}"
        layers = boot_layers(self.image)
        where = f"{self.image.digest[:19]}" + (f" {self.image.platform}" if self.image.platform else "")
        verdict = "" if layers.bootable else " ERROR: neither kernel + initramfs nor a UKI layer"
        return f"{self.machine}: {self.ref} → {where}: {layers.describe()}{verdict}"


def image_machines(machines: Iterable[Machine]) -> list[tuple[str, ImageRef]]:
    """(machine name, image) of every machine that boots an OCI image."""
    return [(m.name, m.boot.image) for m in machines if m.boot.kind is BootKind.IMAGE and m.boot.image is not None]


def resolve_machines(client: RegistryClient, machines: Iterable[tuple[str, ImageRef]]) -> list[Resolution]:
    """Resolve each (machine name, image) once; the same reference is looked up only once."""
    out = []
    for name, ref in machines:
        try:
            out.append(Resolution(name, ref, client.resolve(ref)))
        except RegistryError as exc:
            out.append(Resolution(name, ref, error=f"{exc.message} (HTTP {exc.status} to a client)",
                                  kind=failure_kind(exc)))
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
