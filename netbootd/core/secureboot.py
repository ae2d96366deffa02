"""Which binaries a Secure Boot machine is offered, and whether each carries a signature that holds.

`netbootd check` and `netbootd explain` report this before any machine boots: an unsigned (or
broken) binary offered to a Secure Boot machine is a configuration error, since its firmware
(or shim) will refuse it. The signature's subject is shown but not checked against the keys
that will decide (the firmware's db, shim's vendor certificate): netbootd cannot know them.

Each provider names, for one machine, the binaries one stage of its boot is offered, in boot
order (a loader's chain, then what it boots); `secure_boot_binaries` is all of them. Initrds are not listed: Secure
Boot does not check them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs

from netbootd.config.machines import BootKind, Machine
from netbootd.config.settings import Settings
from netbootd.core.authenticode import Signature, Status, inspect
from netbootd.core.plan import Artefact, files_for
from netbootd.model import Arch

NOT_CHECKED = "not checked against the firmware's db"
REFUSED = "Secure Boot firmware will refuse it"


@attrs.frozen
class OfferedBinary:
    """One binary a machine's firmware (or shim) would be asked to verify and run."""

    role: str  # "shim", "grub", "kernel", "uki"
    shown: str  # how the operator knows it: a path (relative to the configuration when under it) or a URL
    path: Path | None  # the local file; None: remote (URL, OCI image layer), fetched at boot


Provider = Callable[[Settings, Machine], Iterable[OfferedBinary]]


def is_secure_boot(machine: Machine) -> bool:
    """Whether the machine boots with Secure Boot on (its machine file's `secure_boot = true`)."""
    return machine.secure_boot


def shown_path(settings: Settings, path: Path) -> str:
    """`path` relative to the configuration's directory when it is under it ("files/vmlinuz"), else absolute."""
    path = Path(os.path.normpath(path.absolute()))  # not resolve(): a ConfigMap's symlinks stay as written
    source = settings.source
    if source is not None:
        base = Path(os.path.normpath(source.absolute() if source.is_dir() else source.absolute().parent))
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def local_or_remote(settings: Settings, role: str, location: str) -> OfferedBinary:
    """A boot location as the machine file gives it: a URL, a path under files_root, or an
    absolute path on this host."""
    if "://" in location:
        return OfferedBinary(role, location, None)
    if location.startswith("/"):
        return OfferedBinary(role, location, Path(location))
    path = settings.files_root / location.lstrip("/")
    return OfferedBinary(role, shown_path(settings, path), path)


def boot_binaries(settings: Settings, machine: Machine) -> Iterator[OfferedBinary]:
    """What the machine's plan has its loader run: the kernel, or the EFI binary / UKI (one per
    architecture when its locations say {{ arch }})."""
    boot = machine.boot
    if boot.kind is BootKind.IMAGE and boot.image is not None:
        yield OfferedBinary("kernel/uki", str(boot.image), None)  # the image's layers, pulled at boot
        return
    for arch in sorted(boot.by_arch) if boot.per_arch else [""]:
        found = files_for(machine, Arch(arch or "efi64"), None)
        artefact = None if isinstance(found, str) else found.get("kernel") or found.get("efi")
        if isinstance(artefact, Artefact) and artefact.location:
            role = "kernel" if artefact.role == "kernel" else "uki"
            yield local_or_remote(settings, role + (f" ({arch})" if arch else ""), artefact.location)


# What every machine's boot offers. Callers put its loader's own chain in front
# (netbootd.core.explain.secure_boot_findings: each loader names its binaries).
PROVIDERS: tuple[Provider, ...] = (boot_binaries,)


def secure_boot_binaries(
    settings: Settings, machine: Machine, providers: Iterable[Provider] = PROVIDERS
) -> list[OfferedBinary]:
    return [binary for provider in providers for binary in provider(settings, machine)]


@attrs.frozen
class Finding:
    """One offered binary and what its signature says."""

    machine: str  # machine file stem: "52-54-00-12-34-56", "default"
    binary: OfferedBinary
    signature: Signature | None  # None: not inspected (remote)

    @property
    def refused(self) -> bool:
        """The firmware would refuse it (or netbootd cannot tell it would not): a configuration error."""
        return self.signature is not None and not self.signature.signed

    def verdict(self) -> str:
        sig = self.signature
        if sig is None:
            return "not inspected (remote: fetched at boot)"
        if sig.status is Status.SIGNED:
            by = "; and by ".join(f'"{s.name}", issuer "{s.issuer_name}"' for s in sig.signers)
            return f"signed by {by} ({NOT_CHECKED})"
        if sig.status is Status.UNSIGNED:
            return f"NOT SIGNED: {REFUSED}"
        if sig.status is Status.INVALID:
            by = "".join(f' (signer "{s.name}")' for s in sig.signers[:1])
            return f"SIGNATURE INVALID: {sig.detail}{by}: {REFUSED}"
        if sig.status is Status.NOT_PE:
            return f"NOT AN EFI IMAGE ({sig.detail}): {REFUSED}"
        return f"CANNOT CHECK ITS SIGNATURE: cannot read it ({sig.detail})"

    def line(self, with_machine: bool = True) -> str:
        """`52-54-00-12-34-56: secure boot: kernel files/vmlinuz: signed by ...`; without the
        machine (for `explain`, which is about one machine): `kernel files/vmlinuz: signed by ...`."""
        what = f"{self.binary.role} {self.binary.shown}: {self.verdict()}"
        return f"{self.machine}: secure boot: {what}" if with_machine else what


def findings_for(machine_name: str, binaries: Iterable[OfferedBinary]) -> list[Finding]:
    return [Finding(machine_name, b, None if b.path is None else inspect(b.path)) for b in binaries]


def findings(settings: Settings, machines: Iterable[Machine], providers: Iterable[Provider] = PROVIDERS) -> list[Finding]:
    """Every binary every Secure Boot machine is offered, by machine name."""
    providers = tuple(providers)
    out: list[Finding] = []
    for machine in sorted(machines, key=lambda m: m.name):
        if is_secure_boot(machine):
            out += findings_for(machine.name, secure_boot_binaries(settings, machine, providers))
    return out
