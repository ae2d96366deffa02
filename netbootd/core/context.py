"""The variables a machine's templates see, from its plan. Their names are
netbootd.config.templates.BUILTINS, which load-time validation renders against; a test holds the
two to the same set."""

from __future__ import annotations

from typing import Any

from netbootd.core import urls
from netbootd.core.plan import BootPlan
from netbootd.core.signing import UrlSigner
from netbootd.model import mac_hyphen


def boot_context(plan: BootPlan, mac: str | None, uuid: str | None, base: str,
                 signer: UrlSigner | None = None, callback_ttl: float | None = None) -> dict[str, Any]:
    machine = plan.machine
    mac = mac or machine.mac
    uuid = uuid or machine.uuid
    ident = signing_identity(mac, uuid)
    signed = signer is not None and machine.signed_urls and ident is not None
    ign_sig = signer.sign("ignition", ident) if signed else None  # type: ignore[union-attr,arg-type]
    booty_sig = signer.sign("booty", mac) if signed and mac else None  # type: ignore[union-attr]
    # the callbacks are always signed: they change what the machine boots next
    done_sig = signer.sign("done", ident, callback_ttl) if signer and ident else None
    failed_sig = signer.sign("failed", ident, callback_ttl) if signer and ident else None
    ctx: dict[str, Any] = {
        "mac": mac or "",
        "mac_hyphen": mac_hyphen(mac) if mac else "",
        "uuid": uuid or "",
        "arch": plan.arch.value,
        "buildarch": plan.arch.ipxe_buildarch,
        "server": base,
        "machine": machine.name,
        "ignition_url": urls.ignition_url(base, mac, uuid, ign_sig),
        "booty_url": urls.booty_url(base, booty_sig),
        "beacon_url": urls.beacon_url(base, mac, uuid),
        "kernel_url": plan.kernel.url(base) if plan.kernel is not None else "",
        "initrd_urls": " ".join(i.url(base) for i in plan.initrds),
        "squashfs_url": plan.squashfs.url(base) if plan.squashfs is not None else "",
        "done_url": urls.callback_url(base, "done", mac, uuid, done_sig),
        "failed_url": urls.callback_url(base, "failed", mac, uuid, failed_sig),
        "vars": dict(machine.vars),
    }
    ctx.update(machine.vars)  # load-time validation keeps vars from shadowing built-ins
    return ctx


def signing_identity(mac: str | None, uuid: str | None) -> str | None:
    """What a signature binds: the MAC when known, else the UUID."""
    return mac or (f"uuid:{uuid}" if uuid else None)
