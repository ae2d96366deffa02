"""iPXE scripts: pure functions from a machine's boot definition to script text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netbootd.config.machines import BootKind, Machine
from netbootd.config.templates import render

SHEBANG = "#!ipxe\n"


def chain_stub(base: str) -> str:
    """What `/ipxe` returns: iPXE fills in its own identity and asks again.

    A type suffix makes iPXE format a setting's raw bytes that way: `${mac:uristring}` would be the
    six MAC bytes as text (cut at a zero byte), so the MAC and UUID keep URL-safe formats of their
    own (`hexhyp`, the UUID's 8-4-4-4-12); only the free-text settings are URI-escaped."""
    return (
        SHEBANG
        + "# netbootd: ask for this machine's own script\n"
        + f"chain --replace --autofree {base}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}"
        + "&buildarch=${buildarch:uristring}&platform=${platform:uristring}\n"
    )


def _beacon(ctx: dict[str, Any], stage: str) -> str:
    # Fetched as an image, then freed at once: a leftover image would be handed to the
    # kernel as an extra initrd by iPXE's bzImage loader.
    url = f"{ctx['beacon_url']}&stage={stage}"
    return f"imgfetch --name beacon {url} && imgfree beacon || echo netbootd: beacon {stage} not delivered\n"


def _failure_tail(ctx: dict[str, Any]) -> str:
    return (
        ":failed\n"
        + "echo netbootd: boot of ${mac} failed (see the lines above); retrying in 10 s\n"
        + _beacon(ctx, "failed")
        + "sleep 10\n"
        + "reboot\n"
    )


def _kernel_script(machine: Machine, ctx: dict[str, Any], file_url: Callable[[str], str]) -> str:
    initrds = ctx["initrd_urls"].split()
    names = [f"initrd{i}" if len(initrds) > 1 else "initrd" for i in range(len(initrds))]
    cmdline = render(machine.boot.cmdline, ctx, file_url).strip() if machine.boot.cmdline else ""
    # EFI kernels find their initrds only through initrd=<name> on the command line.
    args = " ".join([*(f"initrd={n}" for n in names), cmdline]).strip()
    lines = [
        SHEBANG,
        f"# netbootd: {machine.name} ({machine.boot.kind.value})\n",
        f"kernel --name kernel {ctx['kernel_url']} {args}".rstrip() + " || goto failed\n",
    ]
    lines += [f"initrd --name {n} {u} || goto failed\n" for n, u in zip(names, initrds, strict=True)]
    lines += [_beacon(ctx, "loaded"), "boot || goto failed\n", _failure_tail(ctx)]
    return "".join(lines)


def render_script(
    machine: Machine, ctx: dict[str, Any], file_url: Callable[[str], str], efi_url: str, uki_only: bool = False
) -> str:
    """The script for `machine`. Raises TemplateError if a template fails (validated at load).
    `uki_only`: an image machine whose image has a UKI and no kernel is chained like an EFI binary."""
    kind = machine.boot.kind
    head = f"# netbootd: {machine.name} ({kind.value})\n"
    if kind is BootKind.KERNEL or (kind is BootKind.IMAGE and not uki_only):
        return _kernel_script(machine, ctx, file_url)
    if kind is BootKind.EFI or uki_only:
        return SHEBANG + head + f"chain --autofree {efi_url} || goto failed\n" + _failure_tail(ctx)
    if kind is BootKind.CHAIN:
        assert machine.boot.chain is not None  # the loader guarantees a template per kind
        url = render(machine.boot.chain, ctx, file_url).strip()
        return SHEBANG + head + f"chain --replace --autofree {url} || goto failed\n" + _failure_tail(ctx)
    if kind is BootKind.SCRIPT:
        assert machine.boot.script is not None
        text = render(machine.boot.script, ctx, file_url)
        if not text.lstrip().startswith("#!ipxe"):
            text = SHEBANG + text
        return text if text.endswith("\n") else text + "\n"
    if kind is BootKind.LOCAL:
        return SHEBANG + head + "echo netbootd: booting from local disk\n" + _beacon(ctx, "local") + "exit\n"
    raise ValueError(f"no script for boot kind {kind.value}")
