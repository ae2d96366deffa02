"""What one machine boots, derived once: the `BootPlan`.

A plan is per (machine, architecture, firmware kind): the boot kind, the loader that carries it (or
none: UEFI HTTP boot runs an EFI binary or UKI itself), the artefacts by role with where each comes
from (a file under files_root, a URL, an OCI image layer), the command line, and — when this
firmware gets nothing — the refusal and why. Every edge and loader reads the plan; nothing else
works out "this machine's kernel".

`build_plan` is pure: the machine, the architecture, the firmware, the image layers known now and
the loaders' facts (which binary each would hand this firmware). `PlanBook` memoises plans per
catalog generation (and per image-layer change), so a DHCP decision stays a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import attrs

from netbootd.config.machines import BootKind, Machine
from netbootd.config.templates import Template, files_named
from netbootd.core import urls
from netbootd.imageref import ImageRef
from netbootd.model import Arch, Firmware

# Where an artefact comes from: a file under files_root, a file a machine file names by its absolute
# path on this host (served at /host), a URL, an OCI image layer.
FILE, HOST, URL, LAYER = "file", "host", "url", "layer"


@attrs.frozen
class Artefact:
    """One boot file and its source. `role`: kernel, initrd, efi (an EFI binary or UKI), squashfs."""

    role: str
    source: str  # FILE (files_root-relative path), HOST (absolute path), URL, LAYER (an OCI image layer)
    location: str = ""  # the path or URL; "" for a layer
    image: ImageRef | None = None
    media_type: str = ""
    arch: str = ""  # the OCI architecture of a layer (a multi-arch image: the machine's)

    def url(self, base: str) -> str:
        """Where a machine fetches it over HTTP from the netbootd at `base`."""
        if self.source == LAYER:
            assert self.image is not None
            return urls.image_layer_url(base, self.image, self.media_type, self.arch)
        return urls.location_url(base, self.location)

    def describe(self) -> str:
        return f"{self.image} {self.media_type.rsplit('.', 1)[-1]} layer" if self.source == LAYER else self.location


def _located(role: str, location: str) -> Artefact:
    return Artefact(role, URL if "://" in location else HOST if location.startswith("/") else FILE, location)


def _layer(role: str, image: ImageRef, media_type: str, arch: Arch) -> Artefact:
    return Artefact(role, LAYER, image=image, media_type=media_type, arch=arch.oci)


@attrs.frozen
class BootPlan:
    machine: Machine
    arch: Arch
    firmware: Firmware
    # "ipxe", "grub", "uki" (a module in netbootd.core.loaders), or "" when no loader runs: UEFI HTTP
    # boot of an EFI binary / UKI, or a refusal.
    loader: str = ""
    bootfile: str = ""  # what the loader hands this firmware first (an iPXE binary, shim, GRUB)
    kernel: Artefact | None = None
    initrds: tuple[Artefact, ...] = ()
    efi: Artefact | None = None  # boot.efi, or the image's UKI layer
    squashfs: Artefact | None = None
    refusal: str | None = None  # why this firmware gets nothing; None: it gets the plan
    # [lifecycle] once: the machine's state ("provisioning", "provisioned", "failed"); "" otherwise
    state: str = ""
    local: bool = False  # the loader sends the machine on to its disk (boot.local, or provisioned)

    @property
    def kind(self) -> BootKind:
        return self.machine.boot.kind

    @property
    def cmdline(self) -> Template | None:
        return self.machine.boot.cmdline

    @property
    def boots_efi(self) -> bool:
        """The loader boots the EFI binary / UKI (no kernel): boot.efi, or an image with only a UKI."""
        return self.kernel is None and self.efi is not None

    def artefacts(self) -> dict[str, Artefact]:
        """What a loader fetches, by the name it asks for: "kernel", "initrd<N>", or "image.efi"."""
        if self.boots_efi:
            assert self.efi is not None
            return {"image.efi": self.efi}
        if self.kernel is None:
            return {}
        return {"kernel": self.kernel, **{f"initrd{i}": a for i, a in enumerate(self.initrds)}}


class LoaderFacts(Protocol):
    """What the plan needs of a loader (netbootd.core.loaders.Loader has more)."""

    name: str
    kinds: frozenset[BootKind]
    fallback: str  # the loader to try when this one has no binary for an arch ("": none)
    signed: bool  # runs under Secure Boot

    def installed(self, arch: Arch) -> bool:
        """Its binaries for `arch` are on this host (a fallback must be)."""
        ...

    def bootfile(self, machine: Machine, arch: Arch, firmware: Firmware) -> tuple[str, str | None]:
        """(the file this firmware is handed first, or "" with why not)."""
        ...


def files_for(machine: Machine, arch: Arch, layers: frozenset[str] | None) -> dict[str, object] | str:
    """A machine's artefacts for `arch` as BootPlan fields, or why it has none for this arch.
    `layers`: the boot layers its OCI image is known to have (None: not resolved yet; assume a
    kernel, an initramfs and a squashfs until known)."""
    boot = machine.boot
    if boot.kind is BootKind.IMAGE and boot.image is not None:
        image = boot.image
        uki = _layer("efi", image, urls.UKI_MEDIA, arch) if layers is not None and "uki" in layers else None
        if uki is not None and "kernel" not in layers:  # type: ignore[operator]
            return {"efi": uki}
        squashfs = layers is None or "squashfs" in layers
        return {
            "kernel": _layer("kernel", image, urls.KERNEL_MEDIA, arch),
            "initrds": (_layer("initrd", image, urls.INITRD_MEDIA, arch),),
            "efi": uki,
            "squashfs": _layer("squashfs", image, urls.SQUASHFS_MEDIA, arch) if squashfs else None,
        }
    if boot.kind not in (BootKind.KERNEL, BootKind.EFI):
        return {}
    found = boot.files(arch.value)
    if found is None:
        have = ", ".join(sorted(boot.by_arch)) or "none"
        return f"{machine.name}: no boot files for {arch.value} (its {{{{ arch }}}} locations exist for: {have})"
    if boot.kind is BootKind.EFI:
        return {"efi": _located("efi", found.efi)} if found.efi else {}
    return {
        "kernel": _located("kernel", found.kernel),
        "initrds": tuple(_located("initrd", loc) for loc in found.initrds),
    }


def download_names(machine: Machine) -> dict[str, dict[str, str]]:
    """What each file a machine may fetch from /files (or /host) is, by its files_root path (or
    absolute host path): its role in the plan ({"role": "kernel"}, "initrd", "efi") for any
    architecture, else the file its command line (or script, or chain) names with `file("...")`
    ({"file": "d-i/preseed.cfg"}). The timeline
    files a download with this, so it reads as what was fetched, not as the n-th download."""
    names: dict[str, dict[str, str]] = {}
    boot = machine.boot
    for template in (boot.cmdline, boot.script, boot.chain):
        if template is not None:
            for rel in files_named(template):
                names[rel] = {"file": rel}
    if boot.kind in (BootKind.KERNEL, BootKind.EFI):
        every = [boot.files(arch.value) for arch in Arch] if boot.per_arch else [boot.files("")]
        for found in every:
            if found is None:
                continue
            located = [("kernel", found.kernel), *(("initrd", loc) for loc in found.initrds), ("efi", found.efi)]
            for role, loc in located:
                if loc and "://" not in loc:
                    names[loc] = {"role": role}  # relative: under files_root; absolute: a host file
    return names


def host_files(machines: Iterable[Machine]) -> frozenset[str]:
    """Every absolute host path the machines' files name as a kernel, initrd or EFI binary: all
    that /host may serve."""
    paths: set[str] = set()
    for machine in machines:
        boot = machine.boot
        if boot.kind not in (BootKind.KERNEL, BootKind.EFI):
            continue
        for found in [boot.files(arch.value) for arch in Arch] if boot.per_arch else [boot.files("")]:
            if found is not None:
                paths.update(loc for loc in (found.kernel, *found.initrds, found.efi) if loc.startswith("/"))
    return frozenset(paths)


def layer_role(media_type: str) -> str:
    """The role of an OCI boot layer by its media type (ironcore or gardenlinux names); "" if none."""
    return _LAYER_ROLES.get(media_type.rsplit(".", 1)[-1], "")


_LAYER_ROLES = {"kernel": "kernel", "initramfs": "initrd", "squashfs": "squashfs", "uki": "efi"}


UNKNOWN = "unknown"  # a `once` machine's state while the state store has never been read


def build_plan(machine: Machine, arch: Arch, firmware: Firmware, layers: frozenset[str] | None,
               loaders: Mapping[str, LoaderFacts], state: str = "", store_problem: str = "") -> BootPlan:
    """The one derivation of what `machine` boots on `arch` when `firmware` asks. `state`: its
    lifecycle state when its file says `[lifecycle] once = true` (UNKNOWN: the store was never
    read, `store_problem` says why)."""
    if machine.boot.kind is BootKind.IGNORE:
        return BootPlan(machine, arch, firmware, refusal=f"{machine.name}: boot.ignore = true")
    if state == UNKNOWN:
        why = store_problem or "the state store has not been read yet"
        return BootPlan(machine, arch, firmware, state=state, refusal=(
            f"{machine.name}: held: lifecycle.once and its state is unknown ({why}): a machine whose state is "
            "unknown is never provisioned"))
    if state == "failed" and machine.lifecycle.on_failure == "hold":
        return BootPlan(machine, arch, firmware, state=state, refusal=(
            f"{machine.name}: its install failed; lifecycle.on_failure = \"hold\": nothing until an operator "
            "reprovisions it (netbootd reprovision MAC)"))
    if state == "provisioned" or machine.boot.kind is BootKind.LOCAL:
        # Answered, not ignored: the loader hands the firmware back to its next boot entry at once
        # (UEFI would otherwise sit out a DHCP timeout per network boot entry before the disk).
        plan = BootPlan(machine, arch, firmware, state=state, local=True)
        if firmware is Firmware.IPXE:
            return attrs.evolve(plan, loader="ipxe")
        if firmware is Firmware.HTTP_BOOT and machine.secure_boot:
            return attrs.evolve(plan, refusal=(
                f"{machine.name}: a local boot over UEFI HTTP boot with Secure Boot: no signed loader runs over "
                "HTTP, so no answer (the firmware tries its next boot entry after its timeout)"))
        return _with_loader(plan, loaders[_local_loader(machine, arch, firmware, loaders)])
    found = files_for(machine, arch, layers)
    if isinstance(found, str):
        return BootPlan(machine, arch, firmware, state=state, refusal=found)
    plan = BootPlan(machine, arch, firmware, state=state, **found)  # type: ignore[arg-type]
    kind = machine.boot.kind
    if plan.boots_efi and arch is Arch.BIOS:
        return attrs.evolve(plan, refusal=f"{machine.name}: an EFI binary / UKI needs UEFI firmware, client is BIOS")
    if firmware is Firmware.IPXE:
        return attrs.evolve(plan, loader="ipxe")  # iPXE runs already: its script carries the plan
    if firmware is Firmware.HTTP_BOOT:
        if plan.efi is not None:
            return plan  # UEFI HTTP boot runs the EFI binary / UKI itself: no loader
        if machine.secure_boot:
            return attrs.evolve(plan, refusal=(
                f"{machine.name}: secure_boot = true and a kernel boot: over UEFI HTTP boot Secure Boot firmware "
                "runs only signed binaries, and Debian's signed GRUB has no HTTP, iPXE is not signed and neither is "
                "the UKI netbootd would assemble; PXE-boot this machine (shim + GRUB over TFTP) or boot a signed UKI "
                "(boot.efi, or an image with a UKI layer)"))
        return _with_loader(plan, loaders[_http_loader(machine, arch, loaders)])
    chosen = loaders[machine.loader]
    if not chosen.bootfile(machine, arch, firmware)[0] and chosen.fallback:
        # A loader with nothing for this arch (Debian 12 ships no arm64 iPXE) gives way to its
        # fallback when that is installed and boots the same definition.
        other = loaders[chosen.fallback]
        if kind in other.kinds and other.installed(arch) and other.bootfile(machine, arch, firmware)[0]:
            return _with_loader(plan, other)
    return _with_loader(plan, chosen)


def _http_loader(machine: Machine, arch: Arch, loaders: Mapping[str, LoaderFacts]) -> str:
    """What carries a kernel boot over UEFI HTTP boot: iPXE, unless the machine's file says
    `loader = "uki"` or no iPXE is configured for its arch (arm64 on Debian 12): then a UKI netbootd
    assembles (netbootd.core.loaders.uki), whose refusal says what to install when it cannot."""
    if "uki" not in loaders:
        return "ipxe"
    if machine.loader == "uki" or not loaders["ipxe"].bootfile(machine, arch, Firmware.HTTP_BOOT)[0]:
        return "uki"
    return "ipxe"


def _local_loader(machine: Machine, arch: Arch, firmware: Firmware, loaders: Mapping[str, LoaderFacts]) -> str:
    """The loader that sends a machine to its disk: its own; over UEFI HTTP boot iPXE (GRUB has no
    HTTP); its own's fallback when its own has nothing for this arch."""
    name = "ipxe" if firmware is Firmware.HTTP_BOOT else machine.loader
    chosen = loaders[name]
    if not chosen.bootfile(machine, arch, firmware)[0] and chosen.fallback:
        other = loaders[chosen.fallback]
        if other.installed(arch) and other.bootfile(machine, arch, firmware)[0]:
            return other.name
    return name


def _with_loader(plan: BootPlan, loader: LoaderFacts) -> BootPlan:
    bootfile, why = loader.bootfile(plan.machine, plan.arch, plan.firmware)
    if not bootfile:
        return attrs.evolve(plan, loader=loader.name, refusal=why)
    return attrs.evolve(plan, loader=loader.name, bootfile=bootfile)


class PlanBook:
    """Plans memoised per catalog generation: `forget()` on a reload or when an image's layers
    become known. Machines are looked up by identity (a catalog's machines live as long as it);
    a lifecycle state is part of the key, so a transition needs no forgetting."""

    def __init__(self, loaders: Mapping[str, LoaderFacts], layers: Callable[[Machine, Arch], frozenset[str] | None],
                 store_problem: Callable[[], str] = lambda: ""):
        self._loaders = loaders
        self._layers = layers
        self._store_problem = store_problem
        self._plans: dict[tuple[int, Arch, Firmware, str], tuple[Machine, BootPlan]] = {}

    def plan(self, machine: Machine, arch: Arch, firmware: Firmware, state: str = "") -> BootPlan:
        key = (id(machine), arch, firmware, state)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is machine:
            return hit[1]
        if state == UNKNOWN:  # says why, which changes: never memoised
            return build_plan(machine, arch, firmware, None, self._loaders, state, self._store_problem())
        plan = build_plan(machine, arch, firmware, self._layers(machine, arch), self._loaders, state)
        self._plans[key] = (machine, plan)  # the machine kept beside its plan: its id is not reused meanwhile
        return plan

    def forget(self) -> None:
        self._plans = {}
