"""The variables a machine's templates see. Built here so load-time validation and
boot-time rendering use exactly the same names."""

from __future__ import annotations

from typing import Any

from netbootd.config.machines import BootKind, Machine
from netbootd.core import urls
from netbootd.core.signing import UrlSigner
from netbootd.model import Arch, mac_hyphen

SAMPLE_BASE = "http://192.0.2.1"  # TEST-NET-1: only ever used to validate templates


def boot_context(
    machine: Machine,
    mac: str | None,
    uuid: str | None,
    arch: Arch,
    base: str,
    signer: UrlSigner | None = None,
    image_layers: frozenset[str] | None = None,
) -> dict[str, Any]:
    mac = mac or machine.mac
    uuid = uuid or machine.uuid
    ident = signing_identity(mac, uuid)
    signed = signer is not None and machine.signed_urls and ident is not None
    ign_sig = signer.sign("ignition", ident) if signed else None  # type: ignore[union-attr,arg-type]
    booty_sig = signer.sign("booty", mac) if signed and mac else None  # type: ignore[union-attr]
    boot = machine.boot
    if boot.kind is BootKind.IMAGE and boot.image is not None:
        oci = arch.oci  # a multi-arch image: the layers of this machine's architecture
        kernel = urls.image_layer_url(base, boot.image, urls.KERNEL_MEDIA, oci)
        initrds = [urls.image_layer_url(base, boot.image, urls.INITRD_MEDIA, oci)]
        # Until the image is resolved, assume a squashfs; once known, only if the image has one.
        has_squashfs = image_layers is None or "squashfs" in image_layers
        squashfs = urls.image_layer_url(base, boot.image, urls.SQUASHFS_MEDIA, oci) if has_squashfs else ""
    else:
        files = boot.files(arch.value)  # None: this arch has none (decisions refuse it before a script)
        kernel = urls.location_url(base, files.kernel) if files and files.kernel else ""
        initrds = [urls.location_url(base, i) for i in (files.initrds if files else ())]
        squashfs = ""
    ctx: dict[str, Any] = {
        "mac": mac or "",
        "mac_hyphen": mac_hyphen(mac) if mac else "",
        "uuid": uuid or "",
        "arch": arch.value,
        "buildarch": arch.ipxe_buildarch,
        "server": base,
        "machine": machine.name,
        "ignition_url": urls.ignition_url(base, mac, uuid, ign_sig),
        "booty_url": urls.booty_url(base, booty_sig),
        "beacon_url": urls.beacon_url(base, mac, uuid),
        "kernel_url": kernel,
        "initrd_urls": " ".join(initrds),
        "squashfs_url": squashfs,
        "vars": dict(machine.vars),
    }
    ctx.update(machine.vars)  # load-time validation keeps vars from shadowing built-ins
    return ctx


def signing_identity(mac: str | None, uuid: str | None) -> str | None:
    """What a signature binds: the MAC when known, else the UUID."""
    return mac or (f"uuid:{uuid}" if uuid else None)


def sample_context(machine: Machine) -> dict[str, Any]:
    """A context with plausible values, to render templates once at load time."""
    return boot_context(
        machine,
        machine.mac or "00:00:5e:00:53:01",  # RFC 7042 documentation MAC
        machine.uuid or "00000000-0000-0000-0000-000000000000",
        Arch.EFI64,
        SAMPLE_BASE,
        UrlSigner(b"\0" * 32),
    )
