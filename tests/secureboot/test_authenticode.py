"""inspect() on real EFI binaries: Debian's signed shim, GRUB and kernel, unsigned iPXE, a copy signed
here with OVMF's snakeoil key, and that copy damaged in every way a file gets damaged."""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading
from pathlib import Path

import pefile
from asn1crypto import cms

from netbootd.core.authenticode import Status, inspect, inspect_bytes

from .conftest import sbverify


def signers(path: Path) -> list[tuple[str, str]]:
    result = inspect(path)
    assert result.status is Status.SIGNED, result
    assert result.detail == ""
    return [(s.name, s.issuer_name) for s in result.signers]


def test_debian_shim_is_signed_by_microsoft_uefi_ca(shim, shim_unsigned):
    names = signers(shim)
    # Debian's shim carries two signatures: Microsoft's 2011 UEFI CA and its 2023 successor.
    assert ("Microsoft Windows UEFI Driver Publisher", "Microsoft Corporation UEFI CA 2011") in names
    assert all("Microsoft" in issuer for _, issuer in names)
    assert inspect(shim_unsigned).status is Status.UNSIGNED  # the same shim before Microsoft signed it


def test_debian_grub_and_kernel_are_signed_by_debian(grub, kernel):
    [(name, issuer)] = signers(grub)
    assert name.startswith("Debian Secure Boot Signer") and name.endswith("grub2")
    assert issuer == "Debian Secure Boot CA"
    [(name, issuer)] = signers(kernel)  # a bzImage: a PE image thanks to its EFI stub
    assert name.startswith("Debian Secure Boot Signer") and name.endswith("linux")
    assert issuer == "Debian Secure Boot CA"
    result = inspect(kernel)
    assert result.signers[0].subject.startswith("CN=Debian Secure Boot Signer") and result.digest_algorithm == "sha256"


def test_ipxe_is_unsigned(snponly):
    result = inspect(snponly)
    assert result.status is Status.UNSIGNED and not result.signed and result.signers == ()


def test_a_copy_signed_with_a_known_key_names_its_subject(snakeoil_signed):
    assert sbverify(snakeoil_signed)
    result = inspect(snakeoil_signed)
    assert result.signed
    [signer] = result.signers
    assert signer.name == "SnakeOil"  # no CN in that certificate: the organisation names it
    assert signer.subject == "O=SnakeOil,L=Fort Collins,ST=Colorado,C=US"
    assert signer.issuer_name == "SnakeOil"  # self-signed


def damaged(tmp_path: Path, source: Path, name: str, change) -> Path:
    data = bytearray(source.read_bytes())
    change(data)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def first_section(data: bytes) -> tuple[int, int]:
    section = pefile.PE(data=bytes(data), fast_load=True).sections[0]
    return section.PointerToRawData, section.SizeOfRawData


def test_one_byte_changed_after_signing_is_a_digest_mismatch(tmp_path, snakeoil_signed):
    def flip(data):
        start, size = first_section(data)
        data[start + size // 2] ^= 0x01

    changed = damaged(tmp_path, snakeoil_signed, "changed.efi", flip)
    assert not sbverify(changed)  # sbsigntool agrees: the image fails its hash check
    result = inspect(changed)
    assert result.status is Status.INVALID and not result.signed
    assert "does not match its signature's digest" in result.detail
    assert [s.name for s in result.signers] == ["SnakeOil"]  # who had signed it, for the report


def test_a_signature_that_does_not_verify_is_invalid(tmp_path, snakeoil_signed):
    """The digest still matches, but the RSA signature over it is damaged: anyone could have put
    that digest there, so it is not "signed"."""

    def flip_signature(data):
        directory = pefile.PE(data=bytes(data), fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4]
        blob = bytes(data[directory.VirtualAddress + 8 : directory.VirtualAddress + directory.Size])
        signature = cms.ContentInfo.load(blob)["content"]["signer_infos"][0]["signature"].native
        at = bytes(data).index(signature)
        data[at + 10] ^= 0x01

    broken = damaged(tmp_path, snakeoil_signed, "badsig.efi", flip_signature)
    assert not sbverify(broken)
    result = inspect(broken)
    assert result.status is Status.INVALID
    assert result.detail == "the signature does not verify with its signer's certificate"


def test_truncated_signed_files_are_not_signed(tmp_path, snakeoil_signed):
    data = snakeoil_signed.read_bytes()
    directory = pefile.PE(data=data, fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    in_table = damaged(tmp_path, snakeoil_signed, "cut-table.efi", lambda d: d.__delitem__(slice(len(d) - 100, None)))
    result = inspect(in_table)
    assert result.status is Status.INVALID and "runs past the end" in result.detail and "truncated" in result.detail
    in_code = tmp_path / "cut-code.efi"
    in_code.write_bytes(data[: directory.VirtualAddress // 2])
    assert inspect(in_code).status is Status.INVALID


def test_garbage_empty_and_non_files_never_raise(tmp_path):
    garbage = tmp_path / "garbage.efi"
    garbage.write_bytes(random.Random(1).randbytes(65536))
    assert inspect(garbage).status is Status.NOT_PE
    assert inspect(garbage).detail == "no MZ header"
    mz = tmp_path / "mz.efi"
    mz.write_bytes(b"MZ" + random.Random(2).randbytes(4096))
    assert inspect(mz).status is Status.NOT_PE
    empty = tmp_path / "empty.efi"
    empty.write_bytes(b"")
    assert (inspect(empty).status, inspect(empty).detail) == (Status.NOT_PE, "empty file")
    assert (inspect(tmp_path).status, inspect(tmp_path).detail) == (Status.UNREADABLE, "is a directory")
    assert inspect(tmp_path / "nosuch.efi").status is Status.UNREADABLE
    fifo = tmp_path / "fifo.efi"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(inspect(fifo)), daemon=True)
    t.start()
    t.join(30)
    assert done and done[0].status is Status.UNREADABLE and done[0].detail == "not a regular file"


def test_a_pe_image_that_is_not_efi(tmp_path, snponly):
    def windows_subsystem(data):
        pe = pefile.PE(data=bytes(data), fast_load=True)
        struct.pack_into("<H", data, pe.OPTIONAL_HEADER.get_field_absolute_offset("Subsystem"), 2)  # Windows GUI

    result = inspect(damaged(tmp_path, snponly, "windows.exe", windows_subsystem))
    assert result.status is Status.NOT_PE and "not an EFI one" in result.detail


def test_every_truncation_and_damaged_signature_byte_is_reported_not_raised(snakeoil_signed):
    data = snakeoil_signed.read_bytes()
    table = pefile.PE(data=data, fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4].VirtualAddress
    for cut in [*range(0, 4096, 7), *range(table - 64, len(data), 3)]:
        result = inspect_bytes(data[:cut])
        assert not result.signed, cut
    # Every third byte of the certificate table: whatever it becomes, inspect answers (some bytes, such
    # as the CA's signature on the certificate, are not checked here: the firmware's db decides those).
    for at in range(table, len(data), 3):
        changed = bytearray(data)
        changed[at] ^= 0xFF
        assert inspect_bytes(bytes(changed)).status in (Status.SIGNED, Status.INVALID), at


def test_the_cache_follows_the_file(tmp_path, snponly, snakeoil_signed):
    path = tmp_path / "boot.efi"
    shutil.copy(snponly, path)
    first = inspect(path)
    assert first.status is Status.UNSIGNED and inspect(path) is first  # cached: the same answer object
    shutil.copy(snakeoil_signed, path)  # replaced in place (same inode), new content
    assert inspect(path).signed
    # Damaged in place to the same size: the change of mtime alone must not serve the stale "signed".
    data = bytearray(path.read_bytes())
    start, _ = first_section(data)
    data[start + 1] ^= 0x01
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))  # a distinct mtime even on a coarse clock
    assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
    assert inspect(path).status is Status.INVALID
