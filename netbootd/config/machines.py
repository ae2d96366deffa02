"""The machine model: what one machine (or the default, or a profile) boots.

Frozen and fully validated; built from the machines directory by `netbootd.config.machinefile`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import attrs

from netbootd.config.templates import Template
from netbootd.imageref import ImageRef


class BootKind(enum.Enum):
    KERNEL = "kernel"  # kernel + initrds + command line
    IMAGE = "image"  # OCI image whose kernel/initrd/squashfs (or UKI) layers are used
    EFI = "efi"  # an EFI binary or UKI (UEFI HTTP boot, or chained by iPXE)
    SCRIPT = "script"  # a raw iPXE script
    CHAIN = "chain"  # iPXE chains to a URL
    LOCAL = "local"  # boot from local disk (iPXE `exit`)
    IGNORE = "ignore"  # no answer at all


# The key in [boot] that selects each kind; exactly one is allowed.
KIND_KEYS = {
    "kernel": BootKind.KERNEL,
    "image": BootKind.IMAGE,
    "efi": BootKind.EFI,
    "script": BootKind.SCRIPT,
    "chain": BootKind.CHAIN,
    "local": BootKind.LOCAL,
    "ignore": BootKind.IGNORE,
}
OTHER_BOOT_KEYS = {"initrds", "cmdline"}


def _freeze(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class BootFiles:
    """A kernel boot's or EFI boot's locations for one architecture (URLs or files_root paths)."""

    kernel: str = ""
    initrds: tuple[str, ...] = ()
    efi: str = ""


@attrs.frozen
class Boot:
    kind: BootKind
    kernel: str = ""  # URL, or a path under the files root; may use {{ arch }} / {{ buildarch }}
    initrds: tuple[str, ...] = ()
    cmdline: Template | None = None
    image: ImageRef | None = None
    efi: str = ""  # URL or path under the files root
    script: Template | None = None
    chain: Template | None = None
    # Locations written with {{ arch }} or {{ buildarch }} (one profile for a mixed fleet), rendered
    # at load time for every architecture whose files all exist: arch name → its files.
    by_arch: Mapping[str, BootFiles] = attrs.field(factory=dict, converter=_freeze)

    @property
    def per_arch(self) -> bool:
        return any("{{" in loc for loc in (self.kernel, self.efi, *self.initrds))

    def files(self, arch: str) -> BootFiles | None:
        """The locations for a client of architecture `arch`; None: none for that architecture."""
        if not self.per_arch:
            return BootFiles(self.kernel, self.initrds, self.efi)
        return self.by_arch.get(arch)


ON_FAILURE = ("hold", "retry")
LOCAL_BOOTS = ("exit", "sanboot")


@attrs.frozen
class Lifecycle:
    """`[lifecycle]`: a machine that provisions once. It gets its [boot] while `provisioning`, its
    local boot once `provisioned` (an installer called {{ done_url }}), until an operator
    reprovisions it. State lives in the state store (netbootd.state), shared by every netbootd."""

    once: bool = False
    # A failed install ({{ failed_url }}): "hold" gets no answer until reprovisioned (a wiping
    # installer never loops); "retry" boots [boot] again.
    on_failure: str = "hold"
    # How iPXE leaves for the disk: "exit" (back to the firmware, which boots its next entry) or
    # "sanboot" (boot the first hard disk: BIOSes whose iPXE `exit` does not reach the disk).
    local_boot: str = "exit"
    # What counts as done besides {{ done_url }}: "" (only the callback), "ignition" (the signed
    # Ignition config was fetched: CoreOS and Flatcar run Ignition once), "beacon:<stage>".
    done_on: str = ""


@attrs.frozen
class Machine:
    """One effective machine configuration (profile already merged in)."""

    name: str  # "52-54-00-12-34-56" or "default"
    source: Path
    boot: Boot
    mac: str | None = None  # colon form; None for the default
    uuid: str | None = None
    profile: str | None = None
    vars: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze)
    ignition: bytes | None = None  # validated JSON, served verbatim
    booty: Mapping[str, object] | None = attrs.field(
        default=None, converter=lambda m: None if m is None else _freeze(m)
    )
    ipxe_binary: str = ""  # per-machine TFTP binary (under the TFTP root); "" = the arch default
    signed_urls: bool = True  # Ignition/BOOTy URLs carry an expiry and an HMAC bound to the machine
    # How PXE firmware gets to the boot: "ipxe" (chainload iPXE, then its script) or "grub" (shim →
    # GRUB over TFTP, then a per-machine grub.cfg). secure_boot = true: the signed chain (implies grub).
    loader: str = "ipxe"
    secure_boot: bool = False
    arch: str | None = None  # the machine's architecture when its file says (`arch = "arm64"`)
    lifecycle: Lifecycle = Lifecycle()

    @property
    def answers(self) -> bool:
        return self.boot.kind is not BootKind.IGNORE


@attrs.frozen
class Held:
    """A machine whose own file (or its profile) is broken and has no last good version: it gets
    nothing at all until the file is fixed — never the default, which may install over its disks."""

    name: str  # machine file stem: "52-54-00-12-34-56" (or "default")
    mac: str | None
    error: object  # the ConfigError at the root of it (the profile's own error for a broken profile)

    @property
    def reason(self) -> str:
        return f"held: {self.error}"


@attrs.frozen
class Catalog:
    """Everything the core knows about machines, swapped atomically on reload."""

    machines: Mapping[str, Machine] = attrs.field(factory=dict, converter=_freeze)  # by MAC
    by_uuid: Mapping[str, Machine] = attrs.field(factory=dict, converter=_freeze)
    default: Machine | None = None
    errors: tuple = ()  # tuple[ConfigError, ...] of the last load
    files: Mapping[str, Machine] = attrs.field(factory=dict, converter=_freeze)  # by file name stem
    held: Mapping[str, Held] = attrs.field(factory=dict, converter=_freeze)  # by MAC (and "default")
    # Machine files that failed to load and are served from their last good version (stem → root error).
    stale: Mapping[str, object] = attrs.field(factory=dict, converter=_freeze)

    def find(self, mac: str | None = None, uuid: str | None = None) -> Machine | None:
        """The machine's own config (by MAC, then UUID), else the default, else None.
        A held machine is None: it must not fall back to the default."""
        if mac and mac in self.machines:
            return self.machines[mac]
        if mac and mac in self.held:
            return None
        if uuid and uuid in self.by_uuid:
            return self.by_uuid[uuid]
        return self.default

    def held_for(self, mac: str | None) -> Held | None:
        return self.held.get(mac) if mac else None

    def count_line(self) -> str:
        """How every command and log line states the machine count."""
        return machine_count(len(self.files) - (self.default is not None), self.default is not None)


def machine_count(files: int, default: bool) -> str:
    """'12 machine files + default', the one way netbootd states it (CLI, logs, status, health)."""
    noun = "machine file" if files == 1 else "machine files"
    return f"{files} {noun} + default" if default else f"{files} {noun}, no default"
