"""The GRUB loader: TFTP names of the shim → GRUB → grub.cfg chain, and grub.cfg rendered from a
machine's boot definition (the same kernel, initrds and command line its iPXE script would use).

What the firmware and the signed binaries ask for (../shared/captures, *secureboot*):
- UEFI PXE boots the file the 4011 ACK names: `boot/x64/shimx64.efi` (`boot/aa64/shimaa64.efi`).
- shim asks for `revocations_sku.efi`, `revocations_sbat.efi`, `shim_certificate_0.efi` (optional:
  "not found" at once) and `grubx64.efi` from the directory of the BOOTP file it was loaded from,
  on the same server. Full-DHCP setups name them at the TFTP root; both forms are served.
- Debian's signed network GRUB has the prefix `(tftp,<server>)/grub`: it reads
  `/grub/<platform>/{command,fs,crypto,terminal}.lst` (missing is fine), then `/grub/grub.cfg`. It
  knows `$net_default_mac`, so the generic grub.cfg loads `/grub/machines/<mac>.cfg`, rendered per
  machine. It has no HTTP: kernel, initrds and EFI binaries come over TFTP too, at
  `/grub/m/<mac with dashes>/kernel|initrd<N>|image.efi`, whatever their source (files, URLs, image
  layers: netbootd fetches those into its cache first).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from netbootd.config.machines import BootKind, Machine
from netbootd.config.templates import render
from netbootd.model import mac_hyphen, normalize_mac

ARCH_DIRS = {"efi64": "x64", "arm64": "aa64"}  # shim's and GRUB's own names for the architectures
PLATFORMS = {"efi64": "x86_64-efi", "arm64": "arm64-efi"}
# Files shim looks for beside itself; none is needed (not found at once is the normal answer).
SHIM_OPTIONAL = re.compile(r"^(revocations_(sku|sbat)|shim_certificate_\d+|mm(x64|aa64)|fb(x64|aa64))\.efi$")
GENERIC_CFG = "grub/grub.cfg"


def shim_name(arch: str) -> str:
    d = ARCH_DIRS[arch]
    return f"boot/{d}/shim{d}.efi"


def grub_name(arch: str) -> str:
    d = ARCH_DIRS[arch]
    return f"boot/{d}/grub{d}.efi"


def machine_cfg_name(mac: str) -> str:
    return f"grub/machines/{mac}.cfg"


# GRUB's name for its CPU ($grub_cpu) → netbootd's architecture name. A machine's grub.cfg names its
# files with ${grub_cpu} in the path, so one configuration serves x86-64 and arm64 machines alike and
# each fetches the kernel (or image layer) of its own architecture.
GRUB_CPUS = {"x86_64": "efi64", "arm64": "arm64", "i386": "efi32", "arm": "arm32"}


def artefact_name(mac: str, what: str, cpu: str = "${grub_cpu}") -> str:
    """`what`: "kernel", "initrd<N>" or "image.efi"."""
    return f"grub/m/{mac_hyphen(mac)}/{cpu}/{what}"


@attrs.frozen
class GrubRequest:
    """A TFTP name in the GRUB chain, parsed: what is asked for and for which arch/machine."""

    what: str  # shim, grub, shim-optional, module-list, generic-cfg, machine-cfg, kernel, initrd, efi
    arch: str = ""  # netbootd's name: efi64, arm64 (for artefacts: from the ${grub_cpu} in the path)
    mac: str = ""
    index: int = 0


_BINARY = re.compile(r"^(?:boot/(x64|aa64)/)?(shim|grub)(x64|aa64)\.efi$")
_ARTEFACT = re.compile(r"^grub/m/([0-9a-f-]{17})/(x86_64|arm64|i386|arm)/(kernel|initrd(\d{1,3})|image\.efi)$")
_MACHINE_CFG = re.compile(r"^grub/machines/([0-9a-f:]{17})\.cfg$")
_ARCH_OF_DIR = {d: a for a, d in ARCH_DIRS.items()}


def parse(name: str) -> GrubRequest | None:
    """The GRUB-chain request a (cleaned) TFTP name is, or None for anything else."""
    lower = name.lower()
    if m := _BINARY.match(lower):
        directory, which, suffix = m.groups()
        if directory is None or directory == suffix:
            return GrubRequest(which, _ARCH_OF_DIR[suffix])
        return None
    base = lower.rsplit("/", 1)[-1]
    if (lower.startswith("boot/") or "/" not in lower) and SHIM_OPTIONAL.match(base):
        return GrubRequest("shim-optional")
    if lower == GENERIC_CFG:
        return GrubRequest("generic-cfg")
    if m := _MACHINE_CFG.match(lower):
        return _with_mac("machine-cfg", m.group(1))
    if m := _ARTEFACT.match(lower):
        arch, what = GRUB_CPUS[m.group(2)], m.group(3)
        if what == "kernel":
            return _with_mac("kernel", m.group(1), arch=arch)
        if what == "image.efi":
            return _with_mac("efi", m.group(1), arch=arch)
        return _with_mac("initrd", m.group(1), int(m.group(4)), arch=arch)
    if re.match(r"^grub/[a-z0-9_-]+/[a-z0-9_.-]+\.(lst|mod)$", lower):
        return GrubRequest("module-list")  # the signed image has its modules built in
    return None


def optional(name: str) -> bool:
    """A file the chain asks for that need not exist (shim's revocation lists, GRUB's module lists)."""
    request = parse(name.lstrip("/"))
    return request is not None and request.what in ("shim-optional", "module-list")


def _with_mac(what: str, text: str, index: int = 0, arch: str = "") -> GrubRequest | None:
    try:
        return GrubRequest(what, arch=arch, mac=normalize_mac(text), index=index)
    except ValueError:
        return None


# ------------------------------------------------------------------------ grub.cfg


def generic_cfg() -> str:
    """`/grub/grub.cfg`: every machine loads its own configuration, found by its MAC."""
    return (
        "# netbootd: each machine's own configuration, by its MAC (GRUB's $net_default_mac)\n"
        "set timeout=0\n"
        "configfile /grub/machines/${net_default_mac}.cfg\n"
        'echo "netbootd: no configuration for ${net_default_mac}; booting the next device in 10 s"\n'
        "sleep 10\n"
        "exit\n"
    )


def _quote(word: str) -> str:
    """One GRUB word, literally: single quotes stop GRUB expanding $ and splitting on ; | & etc."""
    return "'" + word.replace("'", "'\\''") + "'"


def machine_cfg(machine: Machine, ctx: dict[str, Any], file_url: Callable[[str], str], mac: str,
                initrd_count: int, uki: bool = False) -> str:
    """A machine's grub.cfg. `initrd_count`: how many initrds its boot has (files, URLs or image
    layers, each served at /grub/m/<mac>/initrd<N>); `uki`: boot its EFI binary / UKI."""
    kind = machine.boot.kind
    head = f"# netbootd: {machine.name} ({kind.value}) for {mac}\nset timeout=0\n"
    tail = ('echo "netbootd: the boot of ${net_default_mac} failed (see above); booting the next device in 10 s"\n'
            "sleep 10\nexit\n")
    if kind is BootKind.LOCAL:
        return head + 'echo "netbootd: booting from local disk"\nexit\n'
    if kind is BootKind.EFI or uki:
        return head + f"chainloader /{artefact_name(mac, 'image.efi')}\nboot\n" + tail
    if kind not in (BootKind.KERNEL, BootKind.IMAGE):
        raise ValueError(f"boot.{kind.value} has no GRUB form (a configuration error caught at load time)")
    cmdline = render(machine.boot.cmdline, ctx, file_url).strip() if machine.boot.cmdline else ""
    words = " ".join(_quote(w) for w in cmdline.split())
    lines = [
        head,
        f'echo "netbootd: loading {machine.name}"\n',
        f"linux /{artefact_name(mac, 'kernel')} {words}".rstrip() + "\n",
    ]
    if initrd_count:
        lines.append("initrd " + " ".join(f"/{artefact_name(mac, f'initrd{i}')}" for i in range(initrd_count)) + "\n")
    lines += ["boot\n", tail]
    return "".join(lines)
