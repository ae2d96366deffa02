"""The assembled-UKI loader: UEFI HTTP boot of a kernel machine without iPXE. netbootd puts the
machine's kernel, initrds and rendered command line on systemd's EFI stub (netbootd.core.uki says
why a UKI and not a GRUB image) and offers that one file by URL: /uki/<mac>/<arch>.efi.

Used over UEFI HTTP boot when no iPXE is configured for the arch (arm64 on Debian 12: the default),
or when the machine's file says `loader = "uki"` (x86-64 too). Over PXE such a machine boots as
iPXE's machines do (its fallback): a UKI of tens of MiB over TFTP would be slow.

Cache: the UKI without its command line (netbootd.core.uki.Body) is built in a thread (never on
the reactor) under cache_dir/uki, named by the SHA-256 of what went into it: the stub's, kernel's
and initrds' contents (each file hashed once per (device, inode, size, mtime)) and the arch. A
changed stub, kernel or initrd is a new name; the old file ages out. Every machine booting the
same kernel and initrds shares one file. The command line is rendered per request, as for an
iPXE script (`{{ ignition_url }}` and the other signed URLs carry their expiry), and added as
the UKI's last section while it is sent: a few hundred bytes, no copy of the kernel.

Secure Boot: the assembled UKI is not signed (netbootd holds no Secure Boot key), so firmware with
Secure Boot on refuses it; a `secure_boot = true` machine is never offered one (netbootd.core.plan).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
from twisted.internet import defer, threads
from twisted.python.failure import Failure

from netbootd.config.machines import BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.config.templates import render
from netbootd.core import files
from netbootd.core.loaders.base import Events, Fetch, Rendering, TftpRequest
from netbootd.core.plan import FILE, HOST, Artefact, BootPlan
from netbootd.core.secureboot import OfferedBinary
from netbootd.core.uki import Body, write_body
from netbootd.health import problem
from netbootd.logs import get_logger
from netbootd.model import Arch, Firmware

log = get_logger("netbootd.core")

FORMAT = b"netbootd-uki-1"  # in every cache key: a change of the layout is a new name
KEEP = 16  # cached UKIs kept beyond those used in the last KEEP_SECONDS
KEEP_SECONDS = 600.0  # a UKI this recently offered is never removed (its machine may be downloading it)
STUB_PACKAGE = {Arch.EFI64: "systemd-boot-efi:amd64", Arch.ARM64: "systemd-boot-efi:arm64"}


def stub_missing(settings: Settings, arch: Arch) -> str:
    """What to do when `arch`'s stub is not on this host: the setting and the package."""
    stub = settings.uki.for_arch(arch.value)
    other_arch = f"dpkg --add-architecture {arch.oci} && apt-get update && apt-get install {STUB_PACKAGE[arch]}"
    return (f"systemd's EFI stub for {arch.value} is not at uki.{arch.value}_stub = {stub}: install it "
            f"(on a Debian host of that arch: apt-get install systemd-boot-efi; on another: {other_arch}), "
            f"or set uki.{arch.value}_stub")


@attrs.frozen
class Uki:
    """One machine's UKI as sent: `head`, then `body`'s file from its data_start, then `tail`."""

    body: Body
    head: bytes
    tail: bytes
    built: bool  # the body was assembled for this request (False: from the cache)

    @property
    def size(self) -> int:
        return len(self.head) + self.body.size - self.body.data_start + len(self.tail)


class UkiCache:
    """UKIs under `root`, built in threads. `build` runs in a thread; `_digest` memoises file hashes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._digests: dict[tuple[int, int, int, int], bytes] = {}
        self._bodies: dict[Path, tuple[tuple[int, int, int], Body]] = {}  # headers read once per file

    def _digest(self, path: Path) -> bytes:
        st = path.stat()
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._digests.get(ident)
        if hit is None:
            with path.open("rb") as f:
                hit = hashlib.file_digest(f, "sha256").digest()
            if len(self._digests) > 4096:
                self._digests.clear()  # a handful of files in practice; never grow without bound
            self._digests[ident] = hit
        return hit

    def key(self, stub: Path, arch: Arch, kernel: Path, initrds: Sequence[Path]) -> str:
        h = hashlib.sha256(FORMAT + b"\0" + arch.value.encode() + b"\0")
        for path in (stub, kernel, *initrds):
            h.update(self._digest(path))
        h.update(len(initrds).to_bytes(4, "little"))
        return h.hexdigest()

    def build(self, stub: Path, arch: Arch, kernel: Path, initrds: Sequence[Path], name: str) -> tuple[Body, bool]:
        """The UKI without its command line, and whether it was built now (False: cached). Runs in a
        thread. `name`: what its .osrel calls it (the first machine that asked; not in the key)."""
        key = self.key(stub, arch, kernel, initrds)
        path = self.root / f"{key}.efi"
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:  # a second request for the same UKI waits for the first's file
            try:
                if path.is_file():
                    os.utime(path)  # recently used: kept by `_evict`
                    return self._body(path), False
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
                try:
                    with tmp.open("wb") as out:
                        write_body(stub, arch, kernel, initrds, out, name)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        self._evict(keep=path)
        return self._body(path), True

    def _body(self, path: Path) -> Body:
        st = path.stat()
        hit = self._bodies.get(path)
        if hit is None or hit[0] != (st.st_ino, st.st_size, st.st_mtime_ns):
            body = Body.read(path)
            with self._lock:
                if len(self._bodies) > 256:
                    self._bodies.clear()
                self._bodies[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), body)
            return body
        return hit[1]

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used UKIs beyond KEEP, never one used in the last KEEP_SECONDS."""
        try:
            found = [(p.stat().st_mtime, p) for p in self.root.glob("*.efi")]
        except OSError:
            return
        found.sort(reverse=True)
        old = time.time() - KEEP_SECONDS
        for mtime, path in found[KEEP:]:
            if path != keep and mtime < old:
                path.unlink(missing_ok=True)


class UkiLoader:
    name = "uki"
    kinds = frozenset({BootKind.KERNEL, BootKind.IMAGE})  # a kernel with initrds: files, URLs or image layers
    fallback = "ipxe"  # over PXE (and BIOS) the machine boots through iPXE
    title = "assembled UKI"
    carries = "a kernel with initrds (files, URLs or an image's layers)"  # when a boot kind is not among `kinds`
    signed = False

    def __init__(self, settings: Settings, events: Events | None = None, fetch: Fetch | None = None,
                 reactor: Any = None) -> None:
        self.settings = settings
        self.fetch = fetch  # None: only kernels and initrds under files_root
        self.cache = UkiCache(settings.cache_dir / "uki")
        self._reactor = reactor

    def stub(self, arch: Arch) -> Path | None:
        return self.settings.uki.for_arch(arch.value)

    def installed(self, arch: Arch) -> bool:
        stub = self.stub(arch)
        return stub is not None and stub.is_file()

    def bootfile(self, machine: Machine, arch: Arch, firmware: Firmware) -> tuple[str, str | None]:
        """UEFI HTTP boot only: the UKI's name in its URL (the core puts the MAC in front)."""
        if firmware is not Firmware.HTTP_BOOT:
            return "", f"{machine.name}: an assembled UKI is for UEFI HTTP boot, client is {firmware.value}"
        if self.stub(arch) is None:
            return "", (f"{machine.name}: a kernel boot over UEFI HTTP boot needs iPXE, and none is configured for "
                        f"{arch.value} (set ipxe.{arch.value}); systemd's EFI stub exists for efi64 and arm64 only")
        if not self.installed(arch):
            return "", (f"{machine.name}: a kernel boot over UEFI HTTP boot needs iPXE or an assembled UKI; "
                        f"{stub_missing(self.settings, arch)}; or set ipxe.{arch.value} to an iPXE for {arch.value}"
                        + (" (deploy/ipxe-arm64.sh)" if arch is Arch.ARM64 else ""))
        return f"{arch.value}.efi", None

    # ------------------------------------------------------------------ what it serves

    def tftp_request(self, name: str) -> TftpRequest | None:
        return None  # served over HTTP only (/uki/<mac>/<arch>.efi)

    def optional(self, name: str) -> bool:
        return False

    def config_arch(self, machine: Machine) -> Arch:
        return Arch(machine.arch) if machine.arch else Arch.EFI64

    def open_tftp(self, request: TftpRequest, rendering: Rendering | None, client_ip: str,
                  client_mac: str | None, now: float) -> BinaryIO:
        raise files.FileNotFound(request.name)

    def http_binary(self, name: str) -> Path | None:
        return None

    def cmdline(self, rendering: Rendering) -> str:
        """The rendered command line, as it goes into the UKI (raises TemplateError). No initrd=:
        the stub hands the kernel its .initrd section itself."""
        machine = rendering.plan.machine
        return render(machine.boot.cmdline, rendering.context, rendering.file_url).strip() if machine.boot.cmdline else ""

    def uki(self, rendering: Rendering) -> defer.Deferred:
        """Deferred[Uki]: the machine's UKI, its shared part assembled in a thread (or from the
        cache). Raises TemplateError, FileError; errbacks FileError, UkiError, OSError."""
        plan = rendering.plan
        stub = self.stub(plan.arch)
        if plan.kernel is None or stub is None:
            raise files.FileNotFound(f"{plan.machine.name}: no kernel to assemble a UKI of for {plan.arch.value}")
        if not stub.is_file():
            raise files.FileNotFound(stub_missing(self.settings, plan.arch))
        cmdline = self.cmdline(rendering)
        parts = defer.gatherResults([self._local(a) for a in (plan.kernel, *plan.initrds)], consumeErrors=True)
        parts.addErrback(_first_error)

        def build(paths: list[Path]):
            reactor = self._reactor or _global_reactor()
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), self._build_logged, stub, plan,
                                             paths[0], paths[1:], cmdline)

        return parts.addCallback(build)

    def _build_logged(self, stub: Path, plan: BootPlan, kernel: Path, initrds: list[Path], cmdline: str) -> Uki:
        start = time.perf_counter()
        body, built = self.cache.build(stub, plan.arch, kernel, initrds, plan.machine.name)
        head, tail = body.with_cmdline(cmdline)
        uki = Uki(body, head, tail, built)
        log.info("uki assembled" if built else "uki cached", machine=plan.machine.name, arch=plan.arch.value,
                 size=uki.size, seconds=round(time.perf_counter() - start, 3), file=body.path.name)
        return uki

    def _local(self, artefact: Artefact) -> defer.Deferred:
        """A kernel or initrd as a local file: under files_root or on this host, else fetched into the cache."""
        if artefact.source == FILE:
            return defer.maybeDeferred(files.resolve_under, self.settings.files_root, artefact.location)
        if artefact.source == HOST:  # a path the machine file names (a package's installer kernel)
            return defer.maybeDeferred(files.host_file, artefact.location, {artefact.location})
        if self.fetch is None:
            return defer.fail(files.FileNotFound(f"{artefact.describe()}: this netbootd cannot fetch remote files"))
        return self.fetch(artefact)

    # ------------------------------------------------------------------ rendering and explaining

    def render(self, rendering: Rendering) -> str:
        return self.cmdline(rendering)

    def explain(self, plan: BootPlan, rendering: Rendering) -> list[str]:
        stub = self.stub(plan.arch)
        lines = ["--- assembled UKI " + "-" * 46,
                 f"stub      {stub}",
                 f"kernel    {plan.kernel.describe() if plan.kernel else '-'}"]
        lines += [f"initrd    {a.describe()}" for a in plan.initrds]
        if len(plan.initrds) > 1:
            lines.append("          (concatenated into the UKI's one .initrd section: cpio archives only)")
        lines.append(f"cmdline   {self.cmdline(rendering)}")
        lines.append("          kernel and initrds assembled once (cached under cache_dir/uki, shared by every machine "
                     "that boots them); the command line rendered per request. Not signed: Secure Boot refuses it")
        return lines

    def secure_boot_binaries(self, machine: Machine) -> Iterable[OfferedBinary]:
        return ()  # never offered to a Secure Boot machine (netbootd.core.plan refuses first)

    def tick(self, now: float) -> None:
        pass

    def problems(self, catalog: Catalog) -> list[dict[str, Any]]:
        """The stub missing for `loader = "uki"` machines (of their file's arch, else x86-64). A
        machine that would get a UKI only because its arch has no iPXE is not listed: it may well
        PXE-boot (GRUB) only; its HTTP boot's refusal says what to install (DHCP log, explain)."""
        needy: dict[Arch, list[str]] = {}
        for machine in catalog.files.values():
            arch = Arch(machine.arch) if machine.arch else Arch.EFI64
            if machine.loader == self.name and machine.answers and self.stub(arch) is not None:
                needy.setdefault(arch, []).append(machine.name)
        return [problem("loader_missing", str(self.stub(arch)), names,
                        f"UEFI HTTP boot of these machines needs an assembled UKI: {stub_missing(self.settings, arch)}")
                for arch, names in needy.items() if not self.installed(arch)]


def _first_error(failure: Failure) -> Failure:
    """The part's own error, not gatherResults' wrapper (FirstError)."""
    return failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure


def _global_reactor():
    from twisted.internet import reactor

    return reactor
