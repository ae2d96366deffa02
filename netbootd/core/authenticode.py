"""Is an EFI binary Authenticode-signed, by whom, and does the signature still match the file?

What Secure Boot firmware (and shim, for what it loads) checks before running a binary, minus
the trust decision: the signer's certificate is NOT checked against the firmware's db or shim's
keys, so "signed" means "carries an intact signature by this subject", never "will be trusted".

Libraries: pefile reads the PE headers and section table, asn1crypto the PKCS#7 SignedData,
cryptography checks the signer's signature. signify (which does all of it) cannot be imported on
Debian 12: its dependency oscrypto 1.3.0, the last release, fails to parse OpenSSL's version from
3.0.10 on. What is written here is only what Authenticode adds on top: which bytes are hashed
(the ranges EDK2's DxeImageVerificationLib hashes), and the SpcIndirectDataContent that carries
that hash.

`inspect` never raises: anything it cannot read or parse is a `Signature` saying so. Results are
cached by (device, inode, size, mtime): check, explain and later the daemon ask about the same files.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
import struct
import threading
from collections import OrderedDict
from pathlib import Path

import attrs
import pefile
from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

MAX_IMAGE_BYTES = 1 << 30  # firmware loads the whole image into memory; nothing bootable is this big
SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
# EFI application, boot service driver, runtime driver, ROM: what UEFI firmware loads.
EFI_SUBSYSTEMS = frozenset({10, 11, 12, 13})
SECURITY_DIRECTORY = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]
# SHA-1 only to read old signatures: whether a firmware still accepts one is its db's decision.
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),  # noqa: S303
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class Status(enum.Enum):
    SIGNED = "signed"  # at least one signature whose digest matches the file and whose signer signed it
    UNSIGNED = "unsigned"  # a PE image without a certificate table
    INVALID = "invalid"  # a certificate table, but no signature that holds (file changed, truncated, garbage)
    NOT_PE = "not-pe"  # no PE header: not something UEFI firmware can run
    UNREADABLE = "unreadable"  # missing, a directory, no permission, ...


@attrs.frozen
class Signer:
    subject: str  # the signing certificate's subject, one line: "CN=..., O=..., C=US"
    issuer: str
    name: str  # what people call it: the subject's CN (else O, else the whole subject)
    issuer_name: str

    def describe(self) -> str:
        return f'"{self.name}" (issued by "{self.issuer_name}")'


@attrs.frozen
class Signature:
    """What one file is, as far as Secure Boot is concerned."""

    status: Status
    detail: str = ""  # why it is not SIGNED; empty otherwise
    signers: tuple[Signer, ...] = ()  # SIGNED: the signers whose signature holds; INVALID: those that did not
    digest_algorithm: str = ""

    @property
    def signed(self) -> bool:
        return self.status is Status.SIGNED


# ---------------------------------------------------------------- ASN.1 that asn1crypto lacks


class _SpcAttributeTypeAndOptionalValue(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("value", core.Any, {"optional": True})]


class _DigestInfo(core.Sequence):
    _fields = [("digest_algorithm", algos.DigestAlgorithm), ("digest", core.OctetString)]


class _SpcIndirectDataContent(core.Sequence):
    """Authenticode's signed content: the image's hash (MS Authenticode PE spec)."""

    _fields = [("data", _SpcAttributeTypeAndOptionalValue), ("message_digest", _DigestInfo)]


# ---------------------------------------------------------------- inspect


class _Refused(Exception):
    """The file is not (validly) what it should be; carries the resulting Signature."""

    def __init__(self, status: Status, detail: str, signers: tuple[Signer, ...] = ()) -> None:
        super().__init__(detail)
        self.signature = Signature(status, detail, signers)


_cache: OrderedDict[tuple[int, int, int, int], Signature] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_ENTRIES = 256


def inspect(path: Path | str) -> Signature:
    """The Authenticode status of the file at `path`. Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO must not hang us
    except OSError as exc:
        return Signature(Status.UNREADABLE, str(exc.strerror or exc))
    st = os.fstat(fd)  # of what was opened, not of what the path names a moment later
    key = _identity(st)
    if key is None:
        os.close(fd)
        return Signature(Status.UNREADABLE, "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
    with os.fdopen(fd, "rb") as f:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        size = key[2]
        if size > MAX_IMAGE_BYTES:
            return Signature(Status.NOT_PE, f"{size} bytes, larger than any EFI image (not read)")
        try:
            data = f.read()  # whole, not mmap: a file truncated while mapped kills the process (SIGBUS)
            unchanged = _identity(os.fstat(fd)) == key
        except OSError as exc:
            return Signature(Status.UNREADABLE, str(exc.strerror or exc))
    if len(data) != size or not unchanged:
        return Signature(Status.UNREADABLE, "the file changed while it was read; try again")
    result = inspect_bytes(data)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return result


def _identity(st: os.stat_result) -> tuple[int, int, int, int] | None:
    """What makes a cached result still true of a file; None for anything but a regular file."""
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def inspect_bytes(data: bytes) -> Signature:
    """The Authenticode status of an image held in memory. Never raises."""
    try:
        return _inspect(data)
    except _Refused as exc:
        return exc.signature
    except Exception as exc:  # parsers of hostile formats raise anything; a report must not
        return Signature(Status.INVALID, f"cannot parse its signature: {type(exc).__name__}: {exc}")


def _inspect(data: bytes) -> Signature:
    pe = _parse_pe(data)
    table = _certificate_table(pe, data)
    if table is None:
        return Signature(Status.UNSIGNED)
    digests: dict[str, bytes] = {}  # the image's hash per algorithm, computed once
    good: list[Signer] = []
    algorithm = ""
    problems: list[str] = []
    bad: list[Signer] = []
    # Several signatures (shim: Microsoft's 2011 and 2023 CAs): the firmware runs the image if one
    # of them is trusted, so one that holds is enough here too.
    for blob in table:
        try:
            signer, algorithm = _check_one(blob, data, pe, digests)
        except _Refused as exc:
            problems.append(exc.signature.detail)
            bad.extend(exc.signature.signers)
        except Exception as exc:  # asn1crypto parses lazily: a broken blob raises late
            problems.append(f"malformed PKCS#7 signature ({type(exc).__name__}: {exc})")
        else:
            good.append(signer)
    if good:
        return Signature(Status.SIGNED, "", tuple(good), algorithm)
    return Signature(Status.INVALID, "; ".join(dict.fromkeys(problems)), tuple(bad))


def _parse_pe(data: bytes) -> pefile.PE:
    if len(data) < 2 or data[:2] != b"MZ":
        raise _Refused(Status.NOT_PE, "no MZ header" if data else "empty file")
    try:
        # fast_load: headers and section table only; imports, resources etc. are not needed.
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise _Refused(Status.NOT_PE, str(exc.value)) from None
    subsystem = pe.OPTIONAL_HEADER.Subsystem
    if subsystem not in EFI_SUBSYSTEMS:
        name = pefile.SUBSYSTEM_TYPE.get(subsystem, str(subsystem))
        raise _Refused(Status.NOT_PE, f"a PE image, but not an EFI one (subsystem {name})")
    return pe


def _certificate_table(pe: pefile.PE, data: bytes) -> list[bytes] | None:
    """The PKCS#7 blobs of the attribute certificate table; None when there is none."""
    directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(directories) <= SECURITY_DIRECTORY:
        return None
    entry = directories[SECURITY_DIRECTORY]
    start, size = entry.VirtualAddress, entry.Size  # a file offset, not an RVA, for this one directory
    if start == 0 and size == 0:
        return None
    if start + size > len(data) or size < 8:
        raise _Refused(Status.INVALID, f"the certificate table (bytes {start}..{start + size}) runs past the end "
                                       f"of the {len(data)}-byte file: truncated?")
    blobs = []
    offset, end = start, start + size
    while offset + 8 <= end:
        length, _revision, cert_type = struct.unpack_from("<IHH", data, offset)
        if length < 8 or offset + length > end:
            raise _Refused(Status.INVALID, f"malformed certificate table entry at byte {offset}")
        if cert_type == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            blobs.append(data[offset + 8 : offset + length])
        offset += (length + 7) & ~7  # entries are 8-byte aligned
    if not blobs:
        raise _Refused(Status.INVALID, "a certificate table without an Authenticode (PKCS#7) signature")
    return blobs


def authenticode_digest(pe: pefile.PE, data: bytes, algorithm: str) -> bytes:
    """The image hash the firmware computes (EDK2 HashPeImage): the headers without the checksum
    and the certificate table entry, the sections in file order, then whatever lies between the
    last section and the certificate table. Bytes outside these ranges are not covered by the
    signature, as in the firmware."""
    h = hashlib.new(algorithm)
    view = memoryview(data)
    opt = pe.OPTIONAL_HEADER
    checksum = opt.get_field_absolute_offset("CheckSum")
    headers_end = opt.SizeOfHeaders
    if headers_end > len(data) or headers_end <= checksum:
        raise _Refused(Status.INVALID, f"SizeOfHeaders ({headers_end}) does not fit the file")
    directories = opt.DATA_DIRECTORY
    cert_size = 0
    if len(directories) > SECURITY_DIRECTORY:
        secdir = directories[SECURITY_DIRECTORY].get_file_offset()
        cert_size = directories[SECURITY_DIRECTORY].Size
        h.update(view[:checksum])
        h.update(view[checksum + 4 : secdir])
        h.update(view[secdir + 8 : headers_end])
    else:
        h.update(view[:checksum])
        h.update(view[checksum + 4 : headers_end])
    hashed = headers_end
    for section in sorted(pe.sections, key=lambda s: s.PointerToRawData):
        if section.SizeOfRawData == 0:
            continue
        start, end = section.PointerToRawData, section.PointerToRawData + section.SizeOfRawData
        if end > len(data):
            name = section.Name.rstrip(b"\0").decode(errors="replace")
            raise _Refused(Status.INVALID, f"section {name!r} runs past the end of the file: truncated?")
        h.update(view[start:end])
        hashed += section.SizeOfRawData
    if len(data) > hashed + cert_size:
        h.update(view[hashed : len(data) - cert_size])
    return h.digest()


def _check_one(blob: bytes, data: bytes, pe: pefile.PE, digests: dict[str, bytes]) -> tuple[Signer, str]:
    """The signer of one PKCS#7 signature, if its digest matches the image and its signer signed it."""
    info = cms.ContentInfo.load(blob)
    if info["content_type"].native != "signed_data":
        raise _Refused(Status.INVALID, "a certificate table entry that is not PKCS#7 SignedData")
    signed = info["content"]
    encap = signed["encap_content_info"]
    if encap["content_type"].dotted != SPC_INDIRECT_DATA:
        raise _Refused(Status.INVALID, "a PKCS#7 signature that is not Authenticode (no SpcIndirectDataContent)")
    # asn1crypto keeps the value bytes of the [0] EXPLICIT content: the SpcIndirectDataContent
    # without its tag and length, which is also exactly what Authenticode's messageDigest covers.
    value = encap["content"].contents
    content = _SpcIndirectDataContent(contents=value)
    algorithm = content["message_digest"]["digest_algorithm"]["algorithm"].native
    claimed = content["message_digest"]["digest"].native
    signer_infos = list(signed["signer_infos"])
    certificates = [] if isinstance(signed["certificates"], core.Void) else [
        c.chosen for c in signed["certificates"] if c.name == "certificate"]
    if len(signer_infos) != 1:
        raise _Refused(Status.INVALID, f"{len(signer_infos)} signers in one signature; Authenticode has exactly one")
    signer_info = signer_infos[0]
    cert = _signer_certificate(signer_info, certificates)
    signer = _signer(cert)
    if algorithm not in _HASHES:
        raise _Refused(Status.INVALID, f"unsupported digest algorithm {algorithm}", (signer,))
    if algorithm not in digests:
        digests[algorithm] = authenticode_digest(pe, data, algorithm)
    if digests[algorithm] != claimed:
        raise _Refused(Status.INVALID, "the file does not match its signature's digest: it was changed after signing",
                       (signer,))
    _verify_signer(signer_info, cert, value, signer)
    return signer, algorithm


def _signer_certificate(signer_info: cms.SignerInfo, certificates: list) -> x509.Certificate:
    sid = signer_info["sid"]
    for cert in certificates:
        if sid.name == "issuer_and_serial_number":
            if cert.issuer == sid.chosen["issuer"] and cert.serial_number == sid.chosen["serial_number"].native:
                return x509.load_der_x509_certificate(cert.dump())
        elif cert.key_identifier == sid.chosen.native:
            return x509.load_der_x509_certificate(cert.dump())
    raise _Refused(Status.INVALID, "the signer's certificate is not in the signature")


def _verify_signer(signer_info: cms.SignerInfo, cert: x509.Certificate, value: bytes, signer: Signer) -> None:
    """The signed attributes vouch for the SpcIndirectDataContent, and the signer's key signed them."""
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        raise _Refused(Status.INVALID, f"unsupported signer digest algorithm {digest_name}", (signer,))
    attrs_ = signer_info["signed_attrs"]
    if isinstance(attrs_, core.Void) or len(attrs_) == 0:  # not .native: it would parse attributes we never read
        raise _Refused(Status.INVALID, "a signature without signed attributes", (signer,))
    message_digest = next((a["values"][0].native for a in attrs_ if a["type"].native == "message_digest"), None)
    if message_digest != hashlib.new(digest_name, value).digest():
        raise _Refused(Status.INVALID, "the signature's signed attributes do not match its content", (signer,))
    signed_bytes = b"\x31" + attrs_.dump()[1:]  # signed over as a SET OF, not the [0] IMPLICIT it is stored as
    signature = signer_info["signature"].native
    key = cert.public_key()
    hash_ = _HASHES[digest_name]
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _Refused(Status.INVALID, f"unsupported signer key type {type(key).__name__}", (signer,))
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed_bytes, padding.PKCS1v15(), hash_)
        else:
            key.verify(signature, signed_bytes, ec.ECDSA(hash_))
    except (InvalidSignature, ValueError, TypeError):
        raise _Refused(Status.INVALID, "the signature does not verify with its signer's certificate", (signer,)) from None


def _signer(cert: x509.Certificate) -> Signer:
    return Signer(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), _common_name(cert.subject),
                  _common_name(cert.issuer))


def _common_name(name: x509.Name) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = name.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return name.rfc4514_string()
