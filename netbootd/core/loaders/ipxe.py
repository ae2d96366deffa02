"""The iPXE loader: firmware chainloads iPXE (TFTP, or HTTP for UEFI HTTP boot), iPXE asks DHCP
again and gets `/ipxe?mac=...`, the machine's script rendered from its plan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from netbootd.config.machines import BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.config.templates import render
from netbootd.core import files
from netbootd.core.loaders.base import Events, Fetch, Rendering, TftpRequest
from netbootd.core.plan import BootPlan
from netbootd.core.secureboot import OfferedBinary
from netbootd.health import problem
from netbootd.model import Arch, Firmware

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


def _kernel_script(r: Rendering) -> str:
    ctx, machine = r.context, r.plan.machine
    initrds = ctx["initrd_urls"].split()
    names = [f"initrd{i}" if len(initrds) > 1 else "initrd" for i in range(len(initrds))]
    cmdline = render(machine.boot.cmdline, ctx, r.file_url).strip() if machine.boot.cmdline else ""
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


def _local(plan: BootPlan, ctx: dict[str, Any]) -> str:
    """On to the disk. `exit 1` hands the firmware back its boot order: UEFI boots its next entry
    only after one that failed (one that returns success ends in the boot manager's menu: EDK2's
    BdsDxe, Dell, Lenovo); a BIOS ignores the status. BIOSes whose iPXE `exit` does not reach the
    disk boot it with `sanboot` (its first hard disk): lifecycle.local_boot = "sanboot"."""
    why = f"its install is done ({plan.state})" if plan.state else "boot.local = true"
    lines = [f"echo netbootd: booting from local disk: {why}\n", _beacon(ctx, "local")]
    if plan.machine.lifecycle.local_boot == "sanboot":
        lines.append("iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\n")
    lines.append("exit 1\n")
    return "".join(lines)


def render_script(r: Rendering) -> str:
    """The machine's iPXE script. Raises TemplateError if a template fails (validated at load)."""
    plan, ctx, machine = r.plan, r.context, r.plan.machine
    kind = plan.kind
    head = f"# netbootd: {machine.name} ({kind.value})\n"
    if plan.local:
        return SHEBANG + head + _local(plan, ctx)
    if plan.kernel is not None:
        return _kernel_script(r)
    if plan.boots_efi:
        assert plan.efi is not None
        return SHEBANG + head + f"chain --autofree {plan.efi.url(ctx['server'])} || goto failed\n" + _failure_tail(ctx)
    if kind is BootKind.CHAIN:
        assert machine.boot.chain is not None  # the loader guarantees a template per kind
        url = render(machine.boot.chain, ctx, r.file_url).strip()
        return SHEBANG + head + f"chain --replace --autofree {url} || goto failed\n" + _failure_tail(ctx)
    if kind is BootKind.SCRIPT:
        assert machine.boot.script is not None
        text = render(machine.boot.script, ctx, r.file_url)
        if not text.lstrip().startswith("#!ipxe"):
            text = SHEBANG + text
        return text if text.endswith("\n") else text + "\n"
    raise ValueError(f"no script for boot kind {kind.value}")


class IpxeLoader:
    name = "ipxe"
    kinds = frozenset(BootKind)
    fallback = "grub"  # no iPXE for an arch (Debian 12 ships none for arm64): GRUB boots the same plan
    title = "iPXE"
    carries = "anything a machine file can say"  # for the error when a machine's boot kind is not among `kinds`
    signed = False

    def __init__(self, settings: Settings, events: Events | None = None, fetch: Fetch | None = None) -> None:
        self.settings = settings  # it records nothing and fetches nothing: its files are on disk

    def _binary(self, machine: Machine, arch: Arch) -> str:
        return machine.ipxe_binary or self.settings.ipxe.for_arch(arch.value)

    def installed(self, arch: Arch) -> bool:
        name = self.settings.ipxe.for_arch(arch.value)
        return bool(name) and (self.settings.tftp.ipxe_dir / name).is_file()

    def bootfile(self, machine: Machine, arch: Arch, firmware: Firmware) -> tuple[str, str | None]:
        binary = self._binary(machine, arch)
        if binary:
            return binary, None
        if firmware is Firmware.HTTP_BOOT:
            return "", (f"{machine.name}: a kernel boot over UEFI HTTP boot needs iPXE, and none is configured for "
                        f"{arch.value}: set ipxe.{arch.value} (an arm64 iPXE: deploy/ipxe-arm64.sh), or PXE-boot it "
                        "(GRUB), or boot a UKI")
        return "", f"no iPXE binary configured for {arch.value} (set ipxe.{arch.value})"

    # ------------------------------------------------------------------ what it serves

    def tftp_request(self, name: str) -> TftpRequest | None:
        return TftpRequest("binary", name=name) if name in self.settings.ipxe.names() else None

    def optional(self, name: str) -> bool:
        return False

    def config_arch(self, machine: Machine) -> Arch:
        return Arch(machine.arch) if machine.arch else Arch.EFI64

    def open_tftp(self, request: TftpRequest, rendering: Rendering | None, client_ip: str,
                  client_mac: str | None, now: float) -> BinaryIO:
        return files.open_under(self.settings.tftp.ipxe_dir, request.name)

    def http_binary(self, name: str) -> Path | None:
        return files.resolve_under(self.settings.tftp.ipxe_dir, name) if name in self.settings.ipxe.names() else None

    # ------------------------------------------------------------------ rendering and explaining

    def render(self, rendering: Rendering) -> str:
        return render_script(rendering)

    def explain(self, plan: BootPlan, rendering: Rendering) -> list[str]:
        return ["--- iPXE script " + "-" * 48, *self.render(rendering).rstrip().split("\n")]

    def secure_boot_binaries(self, machine: Machine) -> Iterable[OfferedBinary]:
        return ()  # iPXE is not signed: Secure Boot machines never get it (the machine parser refuses it)

    def tick(self, now: float) -> None:
        pass  # nothing of iPXE's chain can go quiet unseen: the script request is the next step

    def problems(self, catalog: Catalog) -> list[dict[str, Any]]:
        """Configured iPXE binaries not on disk (every machine of that arch), and machines'
        own ipxe_binary files not under tftp.root."""
        out = []
        ipxe_dir = self.settings.tftp.ipxe_dir
        for arch, name in attrs.asdict(self.settings.ipxe).items():
            if name and not (ipxe_dir / name).is_file():
                out.append(problem(
                    "loader_missing", str(ipxe_dir / name), [f"every {arch} machine"],
                    f"ipxe.{arch} = {name!r} is not in tftp.ipxe_dir {ipxe_dir}: {arch} machines cannot chainload "
                    f"iPXE (install Debian's ipxe package, or fix ipxe.{arch} / tftp.ipxe_dir)"))
        missing: dict[str, list[str]] = defaultdict(list)
        root = self.settings.tftp.root
        for machine in catalog.files.values():
            if machine.ipxe_binary and (root is None or not (root / machine.ipxe_binary).is_file()):
                missing[machine.ipxe_binary].append(machine.name)
        for binary, names in missing.items():
            where = root or "(tftp.root is not set)"
            out.append(problem("loader_missing", binary, names, f"ipxe_binary {binary!r} is not under tftp.root {where}"))
        return out
