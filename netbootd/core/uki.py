"""A unified kernel image (UKI) put together from a kernel, its initrds and a command line on
systemd's EFI stub: what UEFI HTTP boot of a kernel machine runs when no iPXE serves its arch.

Why a UKI and not a GRUB image with its http module: UEFI HTTP boot downloads ONE EFI binary and
runs it. A UKI is that binary with the whole boot inside (kernel, initrd, command line): no second
DHCP, no loader configuration to fetch, nothing more to go wrong on the network, and the same file
for x86-64 and arm64. The stub is a small, stable file of Debian's systemd-boot-efi (both
architectures, Multi-Arch: same); a GRUB image would need grub-mkimage and grub-efi-<arch>-bin
modules of the target architecture on the boot host, and an embedded configuration naming this
server. Neither runs under Secure Boot unsigned (see netbootd.core.loaders.uki).

The sections are added with pefile, as later releases of systemd's own ukify do: Debian 12's
systemd 252 has no ukify, and binutils' objcopy knows only the host's PE architecture (an arm64
UKI on an amd64 host would need binutils-aarch64-linux-gnu). What is written here is only the
layout: each section after the stub's last one, its data streamed from the files.

The command line is the last section and is not in the file on disk (`Body`): the kernel and
initrds are written once per (stub, kernel, initrds) and shared by every machine and request that
boots them; each request's command line (signed URLs carry their expiry: one per request) is a
section header and a few hundred bytes added as the UKI is sent.

The stub takes ONE initrd section, so several initrds are concatenated, each padded to 4 bytes
(as GRUB and iPXE place them): the kernel unpacks concatenated cpio archives, compressed or not,
one after another. An initrd that is not a cpio archive (a raw disk image) cannot be one of several.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import attrs
import pefile

from netbootd.model import Arch

SECTION_ALIGN = 0x10000  # 64 KiB between sections (what the project's tested UKIs use); virtual only
INITRD_ALIGN = 4  # each initrd of several starts at a 4-byte boundary (GRUB's and iPXE's placement)
MACHINE = {Arch.EFI64: 0x8664, Arch.ARM64: 0xAA64}  # IMAGE_FILE_MACHINE_AMD64, _ARM64
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
_READ_ONLY_DATA = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
_SECURITY = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]


class UkiError(Exception):
    """The parts cannot make a UKI; the message names the file and what is wrong with it."""


@attrs.frozen
class Part:
    """One section: its name and where its bytes come from (files, concatenated; or bytes)."""

    name: bytes
    files: tuple[Path, ...] = ()
    data: bytes = b""
    pad_each: int = 1  # each file padded to this many bytes (initrds: 4)
    gunzip: bool = False  # the one file is gzip-compressed: its contents go in (a kernel's Image.gz)

    def size(self) -> int:
        if not self.files:
            return len(self.data)
        if self.gunzip:
            with self.files[0].open("rb") as f:
                f.seek(-4, os.SEEK_END)
                return int.from_bytes(f.read(4), "little")  # gzip's ISIZE: a kernel is < 4 GiB
        sizes = [p.stat().st_size for p in self.files]
        return sum(_round_up(s, self.pad_each) for s in sizes[:-1]) + sizes[-1]

    def write(self, out: BinaryIO) -> None:
        if not self.files:
            out.write(self.data)
            return
        for i, path in enumerate(self.files):
            with gzip.open(path, "rb") if self.gunzip else path.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
                size = f.tell()  # a GzipFile's: the uncompressed bytes
            if i < len(self.files) - 1:
                out.write(b"\0" * (_round_up(size, self.pad_each) - size))



def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def osrel(name: str) -> bytes:
    """The .osrel section: how boot menus (systemd-boot) name this UKI."""
    shown = "".join(c for c in name if c.isprintable() and c not in '"\\$`')  # os-release quoting
    return f'ID=netbootd\nNAME=netbootd\nPRETTY_NAME="{shown} (netbootd)"\n'.encode()


def kernel_is_gzip(kernel: Path) -> bool:
    """Whether the kernel is a gzip-compressed EFI-stub kernel (an arm64 Image.gz, as some
    distributions ship their vmlinuz; Debian's arm64 vmlinuz is not: it is signed). Raises UkiError
    when it is no EFI-stub kernel at all: the stub hands it to the firmware as an EFI image."""
    with kernel.open("rb") as f:
        magic = f.read(2)
    compressed = magic == b"\x1f\x8b"
    if compressed:
        try:
            with gzip.open(kernel, "rb") as z:
                magic = z.read(2)
        except (OSError, EOFError) as exc:
            raise UkiError(f"{kernel}: a broken gzip file ({exc})") from None
    if magic != b"MZ":
        raise UkiError(f"{kernel}: not an EFI-stub kernel (no PE header{' inside its gzip' if compressed else ''}): "
                       "a UKI needs a kernel built with CONFIG_EFI_STUB (every Debian kernel is)")
    return compressed


def write_body(stub: Path, arch: Arch, kernel: Path, initrds: Sequence[Path], out: BinaryIO, name: str = "") -> None:
    """Write the UKI of `kernel` and `initrds` (concatenated) on `stub` to `out`, without its command
    line: a `Body` that every command line shares (`Body.with_cmdline` adds it as the last section).
    Raises UkiError (a stub of the wrong architecture, one with no room for four more section
    headers, a kernel that is not a PE) and OSError."""
    try:
        pe = pefile.PE(str(stub), fast_load=True)
    except pefile.PEFormatError as exc:
        raise UkiError(f"{stub}: not a PE file ({exc}): expected systemd-boot-efi's {stub.name}") from None
    machine = MACHINE[arch]
    if pe.FILE_HEADER.Machine != machine:
        raise UkiError(f"{stub}: a stub for machine type {pe.FILE_HEADER.Machine:#x}, not {arch.value} "
                       f"({machine:#x})")
    if any(s.Name.rstrip(b"\0") == b".linux" for s in pe.sections):
        raise UkiError(f"{stub}: already a UKI (it has a .linux section), not systemd's bare stub")
    parts = [Part(b".osrel", data=osrel(name or kernel.name)),
             *([Part(b".initrd", tuple(initrds), pad_each=INITRD_ALIGN)] if initrds else []),
             Part(b".linux", (kernel,), gunzip=kernel_is_gzip(kernel))]
    opt = pe.OPTIONAL_HEADER
    table_end = pe.sections[-1].get_file_offset() + _SECTION_HEADER.size
    first_data = min((s.PointerToRawData for s in pe.sections if s.SizeOfRawData), default=opt.SizeOfHeaders)
    if table_end + (len(parts) + 1) * _SECTION_HEADER.size > min(opt.SizeOfHeaders, first_data):  # +1: .cmdline
        raise UkiError(f"{stub}: no room in its headers for {len(parts) + 1} more section headers")
    raw_end = _round_up(max(s.PointerToRawData + s.SizeOfRawData for s in pe.sections), opt.FileAlignment)
    headers, layout, spans = [], [], _spans(pe)
    for part in parts:
        va, size = _next_va(spans, opt.SectionAlignment), part.size()
        raw = _round_up(size, opt.FileAlignment)
        headers.append(_SECTION_HEADER.pack(part.name, size, va, raw, raw_end, 0, 0, 0, 0, _READ_ONLY_DATA))
        spans.append(va + raw)
        layout.append((raw_end, raw))
        raw_end += raw
        opt.SizeOfInitializedData += raw
    pe.FILE_HEADER.NumberOfSections += len(parts)
    pe.FILE_HEADER.PointerToSymbolTable = pe.FILE_HEADER.NumberOfSymbols = 0  # the stub's debug symbols: dropped
    opt.SizeOfImage = _next_va(spans, opt.SectionAlignment)
    opt.CheckSum = 0  # UEFI firmware does not check it (nor does Authenticode hash it)
    if len(opt.DATA_DIRECTORY) > _SECURITY:  # a signed stub's signature does not cover the UKI
        opt.DATA_DIRECTORY[_SECURITY].VirtualAddress = opt.DATA_DIRECTORY[_SECURITY].Size = 0
    head = bytearray(pe.write())
    del head[layout[0][0]:]  # the stub's sections only: no trailing symbols or signature
    head[len(head):] = b"\0" * (layout[0][0] - len(head))
    # Over the headers' padding (zeros; NOPs in Debian's arm64 stub, as its linker filled it)
    head[table_end:table_end + len(headers) * _SECTION_HEADER.size] = b"".join(headers)
    out.write(head)
    for part, (offset, raw) in zip(parts, layout, strict=True):
        part.write(out)
        if out.tell() != offset + part.size() or part.size() > raw:  # a file replaced while it was copied
            raise UkiError(f"{', '.join(map(str, part.files))}: changed while the UKI was assembled; ask again")
        out.write(b"\0" * (offset + raw - out.tell()))


def _spans(pe: pefile.PE) -> list[int]:
    """Where each section's memory ends."""
    return [s.VirtualAddress + max(s.Misc_VirtualSize, s.SizeOfRawData) for s in pe.sections]


def _next_va(spans: list[int], section_alignment: int) -> int:
    """Where the next section may start: after every section, at SECTION_ALIGN (or the PE's own, if larger)."""
    return _round_up(max(spans), max(section_alignment, SECTION_ALIGN))


@attrs.frozen
class Body:
    """A UKI without its command line, on disk (`write_body`): the file is a valid PE; a machine's
    UKI is `head` + the file from `data_start` on + `tail` (`with_cmdline`), so a per-request
    command line (signed URLs) costs a few KiB, not a copy of the kernel."""

    path: Path
    header: bytes  # the file's first data_start bytes: headers and section table
    data_start: int  # where the first section's data begins
    size: int

    @classmethod
    def read(cls, path: Path) -> Body:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            probe = pefile.PE(data=f.read(65536), fast_load=True)
            start = min(s.PointerToRawData for s in probe.sections if s.SizeOfRawData)
            f.seek(0)
            return cls(path, f.read(start), start, size)

    def with_cmdline(self, cmdline: str) -> tuple[bytes, bytes]:
        """(the headers with a .cmdline section after the body's last one, the section's bytes):
        sent before and after the file's data. Parses only the headers (a few KiB): fit for the
        reactor."""
        pe = pefile.PE(data=self.header, fast_load=True)
        opt = pe.OPTIONAL_HEADER
        data = cmdline.encode()
        raw = _round_up(len(data) + 1, opt.FileAlignment)  # +1: a NUL after it in memory
        va = _next_va(_spans(pe), opt.SectionAlignment)
        table_end = pe.sections[-1].get_file_offset() + _SECTION_HEADER.size
        pe.FILE_HEADER.NumberOfSections += 1
        opt.SizeOfImage = _next_va([va + raw], opt.SectionAlignment)
        opt.SizeOfInitializedData += raw
        head = bytearray(pe.write())
        head[table_end:table_end + _SECTION_HEADER.size] = _SECTION_HEADER.pack(
            b".cmdline", len(data), va, raw, self.size, 0, 0, 0, 0, _READ_ONLY_DATA)
        return bytes(head), data + b"\0" * (raw - len(data))

    def whole(self, cmdline: str) -> bytes:
        """The machine's UKI as one bytes object (for tests and small tools; the daemon streams it)."""
        head, tail = self.with_cmdline(cmdline)
        return head + self.path.read_bytes()[self.data_start:] + tail
