"""The GRUB loader: shim → GRUB → grub.cfg over TFTP, the grub.cfg rendered from the machine's plan
(the same kernel, initrds and command line its iPXE script would use), and every artefact served
over TFTP too, whatever its source.

What the firmware and the signed binaries ask for (../shared/captures, *secureboot*):
- UEFI PXE boots the file the 4011 ACK names: `boot/x64/shimx64.efi` (`boot/aa64/shimaa64.efi`).
- shim asks for `revocations_sku.efi`, `revocations_sbat.efi`, `shim_certificate_0.efi` (optional:
  "not found" at once) and `grubx64.efi` from the directory of the BOOTP file it was loaded from,
  on the same server. Full-DHCP setups name them at the TFTP root; both forms are served.
- Debian's signed network GRUB has the prefix `(tftp,<server>)/grub`: it reads
  `/grub/<platform>/{command,fs,crypto,terminal}.lst` (missing is fine), then `/grub/grub.cfg`. It
  knows `$net_default_mac`, so the generic grub.cfg loads `/grub/machines/<mac>.cfg`, rendered per
  machine. It has no HTTP: kernel, initrds and EFI binaries come over TFTP too, at
  `/grub/m/<mac with dashes>/<cpu>/kernel|initrd<N>|image.efi`. Files under files_root are opened
  at once; URLs and OCI image layers are fetched into netbootd's cache first (`fetch`, given at
  construction), and a machine's grub.cfg starts those fetches so its kernel is usually cached
  before GRUB asks.
- A local boot (a provisioned machine, `local = true`) cannot go back to the firmware: GRUB's
  grub.cfg chainloads the disk's removable-media loader (LOCAL_CFG: why, and what Secure Boot does).

It also notices the one way this chain fails silently: GRUB loaded from netbootd, but its grub.cfg
never asked for. Debian's signed GRUB takes its TFTP server from the site DHCP server's answer
(siaddr), not from a proxy's, so with netbootd on another host GRUB asks the wrong server.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred

from netbootd.config.machines import BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.config.templates import render
from netbootd.core import files
from netbootd.core.loaders.base import Events, Fetch, Rendering, TftpRequest
from netbootd.core.plan import FILE, HOST, Artefact, BootPlan
from netbootd.core.secureboot import OfferedBinary, shown_path
from netbootd.health import problem
from netbootd.logs import get_logger
from netbootd.model import Arch, Firmware, mac_hyphen, normalize_mac

ARCH_DIRS = {"efi64": "x64", "arm64": "aa64"}  # shim's and GRUB's own names for the architectures
PLATFORMS = {"efi64": "x86_64-efi", "arm64": "arm64-efi"}
# Files shim looks for beside itself; none is needed (not found at once is the normal answer).
SHIM_OPTIONAL = re.compile(r"^(revocations_(sku|sbat)|shim_certificate_\d+|mm(x64|aa64)|fb(x64|aa64))\.efi$")
GENERIC_CFG = "grub/grub.cfg"
GRUB_CONFIG_GRACE = 30.0  # seconds from GRUB's download to its grub.cfg request before netbootd says why

log = get_logger("netbootd.core")


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


# A TftpRequest's `what`: shim, grub, shim-optional, module-list, generic-cfg, machine-cfg, kernel,
# initrd, efi; its `arch` is netbootd's name (efi64, arm64; for artefacts from the ${grub_cpu} in the path).
GrubRequest = TftpRequest

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


# On to the disk. Debian 12's GRUB (2.06) exits to the firmware with EFI_SUCCESS (its `exit` takes no
# status), and UEFI firmware answers a boot entry that returned success with its boot manager's menu
# (EDK2's BdsDxe; Dell, Lenovo), not the next entry. So GRUB boots the disk's removable-media loader
# itself (its signed shim under Secure Boot: shim verifies what GRUB chainloads), and exits only when
# no disk has one. Its `chainloader` gives the loaded image the device of $root, not the device its
# path names (Debian's 2.06 lacks the fix other distributions carry): with $root still the network,
# the disk's loader finds no file system on its own device ("Unable to open root directory:
# Unsupported" from systemd-boot, then GRUB's "unknown error"). So `search` (built into the signed
# image, as are part_gpt, part_msdos and fat) makes the disk holding the loader $root first.
LOCAL_CFG = (
    'echo "netbootd: booting from local disk"\n'
    'if [ "$grub_cpu" = "arm64" ]; then set nbd_efi=/EFI/BOOT/BOOTAA64.EFI; else set nbd_efi=/EFI/BOOT/BOOTX64.EFI; fi\n'
    "if search --no-floppy --file --set=root $nbd_efi; then\n"
    '  echo "netbootd: chainloading ($root)$nbd_efi"\n'
    # under Secure Boot shim verifies the loader: an unsigned one is "bad shim signature", not booted
    "  if chainloader $nbd_efi; then boot; fi\n"
    "fi\n"
    'echo "netbootd: no $nbd_efi booted from any disk; back to the firmware"\n'
    "exit\n"
)


def machine_cfg(r: Rendering) -> str:
    """A machine's grub.cfg. Its file names carry ${grub_cpu}: each machine fetches its own
    architecture's files; the command line and the number of initrds are the plan's."""
    plan, mac, machine = r.plan, r.mac, r.plan.machine
    kind = plan.kind
    head = f"# netbootd: {machine.name} ({kind.value}) for {mac}\nset timeout=0\n"
    tail = ('echo "netbootd: the boot of ${net_default_mac} failed (see above); booting the next device in 10 s"\n'
            "sleep 10\nexit\n")
    if plan.local:
        return head + LOCAL_CFG
    if plan.boots_efi:
        return head + f"chainloader /{artefact_name(mac, 'image.efi')}\nboot\n" + tail
    if kind not in (BootKind.KERNEL, BootKind.IMAGE):
        raise ValueError(f"boot.{kind.value} has no GRUB form (a configuration error caught at load time)")
    cmdline = render(machine.boot.cmdline, r.context, r.file_url).strip() if machine.boot.cmdline else ""
    words = " ".join(_quote(w) for w in cmdline.split())
    lines = [
        head,
        f'echo "netbootd: loading {machine.name}"\n',
        f"linux /{artefact_name(mac, 'kernel')} {words}".rstrip() + "\n",
    ]
    if plan.initrds:
        lines.append("initrd " + " ".join(f"/{artefact_name(mac, f'initrd{i}')}" for i in range(len(plan.initrds)))
                     + "\n")
    lines += ["boot\n", tail]
    return "".join(lines)


def open_path(path: Path) -> BinaryIO:
    """An operator-configured file (shim, GRUB, a fetched artefact): regular, opened read-only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise files.FileNotFound(str(path)) from None
    except OSError:
        raise files.AccessDenied(str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise files.AccessDenied(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


_ARTEFACT_KEYS = {"kernel": "kernel", "efi": "image.efi"}


class GrubLoader:
    name = "grub"
    # What GRUB can boot: a kernel with initrds (files, URLs or image layers, all fetched over TFTP), an
    # EFI binary or UKI (chainloader), or the next boot device. Scripts and chain URLs are iPXE's.
    kinds = frozenset({BootKind.KERNEL, BootKind.IMAGE, BootKind.EFI, BootKind.LOCAL, BootKind.IGNORE})
    fallback = ""
    title = "GRUB"
    carries = "a kernel, an image, an EFI binary / UKI, local or ignore"  # when a boot kind is not among `kinds`
    signed = True

    def __init__(self, settings: Settings, events: Events, fetch: Fetch | None = None) -> None:
        self.settings = settings
        self.events = events
        self.fetch = fetch  # None: this netbootd serves only files under files_root to GRUB
        self.awaiting_config: dict[str, tuple[str | None, float]] = {}  # client IP → (MAC, when GRUB was sent)

    def installed(self, arch: Arch) -> bool:
        pair = self.settings.grub.for_arch(arch.value)
        return pair is not None and pair[1].is_file()

    def bootfile(self, machine: Machine, arch: Arch, firmware: Firmware) -> tuple[str, str | None]:
        """UEFI PXE: shim (Secure Boot) or GRUB itself, from netbootd's TFTP."""
        if self.settings.grub.for_arch(arch.value) is None:
            return "", f"{machine.name}: loader grub needs UEFI x86-64 or arm64 firmware, client is {arch.value}"
        return (shim_name(arch.value) if machine.secure_boot else grub_name(arch.value)), None

    # ------------------------------------------------------------------ what it serves

    def tftp_request(self, name: str) -> TftpRequest | None:
        return parse(name)

    def optional(self, name: str) -> bool:
        return optional(name)

    def config_arch(self, machine: Machine) -> Arch:
        """A grub.cfg serves every architecture (${grub_cpu}); its command line and initrd count are
        those of the machine's architecture if its file says, else x86-64's (or the one
        architecture its files exist for)."""
        if machine.arch:
            return Arch(machine.arch)
        if machine.boot.per_arch and Arch.EFI64.value not in machine.boot.by_arch and machine.boot.by_arch:
            return Arch(sorted(machine.boot.by_arch)[0])
        return Arch.EFI64

    def open_tftp(self, request: TftpRequest, rendering: Rendering | None, client_ip: str,
                  client_mac: str | None, now: float) -> BinaryIO | Deferred:
        what = request.what
        if what in ("shim", "grub"):
            pair = self.settings.grub.for_arch(request.arch)
            assert pair is not None  # the parser only knows x64 and aa64
            path = pair[0] if what == "shim" else pair[1]
            if not path.is_file():
                raise files.FileNotFound(f"{path} (grub.{request.arch}_{what}: install Debian's "
                                         f"{'shim-signed' if what == 'shim' else 'grub-efi-*-signed'} package)")
            if what == "grub" and client_ip:
                self.awaiting_config[client_ip] = (client_mac, now)
            return open_path(path)
        if what in ("shim-optional", "module-list"):
            raise files.FileNotFound(f"{what} (optional: not found is the normal answer)")
        self.awaiting_config.pop(client_ip, None)
        if what == "generic-cfg":
            return io.BytesIO(generic_cfg().encode())
        assert rendering is not None  # per-machine names: the core found the machine's plan
        plan = rendering.plan
        if what == "machine-cfg":
            text = machine_cfg(rendering)
            self._prefetch(plan)
            return io.BytesIO(text.encode())
        key = _ARTEFACT_KEYS.get(what, f"initrd{request.index}")
        artefact = plan.artefacts().get(key)
        if artefact is None:
            raise files.FileNotFound(f"{plan.machine.name} has no {key} for {request.arch}")
        return self._open_artefact(artefact)

    def http_binary(self, name: str) -> Path | None:
        return None  # Debian's signed GRUB has no HTTP: nothing of this chain is served there

    def _open_artefact(self, artefact: Artefact) -> BinaryIO | Deferred:
        if artefact.source == FILE:
            return files.open_under(self.settings.files_root, artefact.location)
        if artefact.source == HOST:
            return files.open_host(artefact.location)  # a path the machine file names, not the client
        if self.fetch is None:
            raise files.FileNotFound(f"{artefact.describe()}: this netbootd cannot fetch remote files")
        d = self.fetch(artefact)
        d.addCallback(open_path)
        return d

    def _prefetch(self, plan: BootPlan) -> None:
        """Start fetching a machine's remote artefacts as soon as GRUB reads its configuration."""
        if self.fetch is None:
            return
        for artefact in plan.artefacts().values():
            if artefact.source not in (FILE, HOST):
                self.fetch(artefact).addErrback(lambda _f: None)  # the TFTP request reports a failure

    # ------------------------------------------------------------------ rendering and explaining

    def render(self, rendering: Rendering) -> str:
        return machine_cfg(rendering)

    def explain(self, plan: BootPlan, rendering: Rendering) -> list[str]:
        """The shim → GRUB → grub.cfg chain over TFTP, and the machine's grub.cfg."""
        machine, mac, arch = plan.machine, rendering.mac, plan.arch.value
        steps = [shim_name(arch), grub_name(arch)] if machine.secure_boot else [grub_name(arch)]
        return [
            "GRUB      " + " → ".join([*steps, GENERIC_CFG, machine_cfg_name(mac)]) + " (all over TFTP)",
            "          Debian's signed GRUB asks the TFTP server in the site DHCP server's answer (next-server), "
            "not the proxy's: run netbootd on the DHCP server's host, or point next-server at it (docs/firmware/secure-boot.md)",
            f"--- /{machine_cfg_name(mac)} " + "-" * 30,
            *self.render(rendering).rstrip().split("\n"),
        ]

    def secure_boot_binaries(self, machine: Machine) -> Iterable[OfferedBinary]:
        """shim and GRUB, for the architectures this host can offer them to: x86-64 always, arm64
        when its binaries are installed (an x86 boot host without arm64 machines need not have them)."""
        for arch in ("efi64", "arm64"):
            pair = self.settings.grub.for_arch(arch)
            assert pair is not None
            if arch == "arm64" and not any(p.exists() for p in pair):
                continue
            for role, path in zip(("shim", "grub"), pair, strict=True):
                if role == "shim" and not machine.secure_boot:
                    continue  # loader = "grub" without Secure Boot boots GRUB directly
                yield OfferedBinary(f"{role} ({arch})", shown_path(self.settings, path), path)

    def problems(self, catalog: Catalog) -> list[dict[str, Any]]:
        grub_machines = sorted(m.name for m in catalog.files.values() if m.loader == self.name and m.answers)
        out = []
        if grub_machines:
            for role, path in (("shim", self.settings.grub.efi64_shim), ("grub", self.settings.grub.efi64_grub)):
                if not path.is_file():
                    package = "shim-signed" if role == "shim" else "grub-efi-amd64-signed"
                    out.append(problem("loader_missing", str(path), grub_machines,
                                       f"grub.efi64_{role} {path} is missing: these machines' UEFI PXE boot fails "
                                       f"(apt-get install {package}, or fix grub.efi64_{role})"))
        return out

    # ------------------------------------------------------------------ a GRUB that never asked

    def tick(self, now: float) -> None:
        self.overdue(now)

    def overdue(self, now: float) -> list[tuple[str, str | None]]:
        """(client IP, MAC) of machines that got GRUB from netbootd GRUB_CONFIG_GRACE seconds ago
        and never asked for a grub.cfg; each reported once (timeline and log)."""
        late = [(ip, mac) for ip, (mac, when) in self.awaiting_config.items() if now - when >= GRUB_CONFIG_GRACE]
        for ip, mac in late:
            del self.awaiting_config[ip]
            hint = ("GRUB was sent but never asked netbootd for /grub/grub.cfg: Debian's signed GRUB asks the TFTP "
                    "server named in the site DHCP server's answer (next-server, siaddr), not the proxy's. Run "
                    "netbootd on the DHCP server's host, or set next-server on the site DHCP server to this "
                    "netbootd (docs/firmware/secure-boot.md)")
            self.events.record("grub-config-missing", mac=mac, ip=ip, hint=hint)
            log.warn("GRUB never asked for its configuration", mac=mac or "", client=ip, hint=hint)
        return late
