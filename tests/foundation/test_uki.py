"""The UKI netbootd assembles for UEFI HTTP boot of a kernel machine without iPXE
(netbootd.core.uki, netbootd.core.loaders.uki): its sections, the cache, the plan that picks it,
the messages when the stub is missing, and /uki/<mac>/<arch>.efi over real HTTP.

The stubs are Debian's systemd-boot-efi files (the host's; the arm64 one from the integration
assets when assets.sh has built them). The "kernels" are a PE signature and random bytes: the
assembly copies them, and only their bytes are checked here (the QEMU tests boot real ones)."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pefile
import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import IpxeBinaries, RegistrySettings, Settings, UkiStubs
from netbootd.core.decide import BootCore
from netbootd.core.explain import explain_lines
from netbootd.core.loaders.uki import UkiCache
from netbootd.core.uki import Body, UkiError, write_body
from netbootd.model import Arch, Client, Firmware

X86_STUB = UkiStubs().efi64_stub
ARM64_STUB = Path(__file__).parents[1] / "integration" / ".assets" / "arm64" / "linuxaa64.efi.stub"
MAC, X86_MAC, SB_MAC, IMAGE_MAC = "52:54:00:00:0a:01", "52:54:00:00:0a:02", "52:54:00:00:0a:03", "52:54:00:00:0a:05"
REF = "ghcr.io/lab/os:v1"


def need_stub(path: Path) -> Path:
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (CI installs systemd-boot-efi and builds the arm64 assets)")
        pytest.skip(f"{path} is missing: apt-get install systemd-boot-efi (arm64: tests/integration/assets.sh)")
    return path


def assemble(stub: Path, arch: Arch, kernel: Path, initrds: list[Path], cmdline: str, tmp: Path,
             name: str = "") -> bytes:
    """The whole UKI as sent: the body on disk, the command line added."""
    path = tmp / "body.efi"
    with path.open("wb") as out:
        write_body(stub, arch, kernel, initrds, out, name)
    body = Body.read(path)
    assert pefile.PE(str(path)).sections[-1].Name.rstrip(b"\0") == b".linux", "the body alone is a valid PE"
    return body.whole(cmdline)


def sections(data: bytes) -> dict[str, bytes]:
    """Each section's bytes as the firmware maps them: VirtualSize bytes from its raw data."""
    pe = pefile.PE(data=data)
    return {s.Name.rstrip(b"\0").decode(): data[s.PointerToRawData:s.PointerToRawData + s.Misc_VirtualSize]
            for s in pe.sections}


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, Path, Path]:
    kernel, first, second = tmp_path / "vmlinuz", tmp_path / "a.cpio.gz", tmp_path / "b.cpio"
    kernel.write_bytes(b"MZ" + os.urandom(300_001))
    first.write_bytes(os.urandom(10_007))  # not a multiple of 4: the next initrd starts after padding
    second.write_bytes(os.urandom(5_000))
    return kernel, first, second


@pytest.mark.parametrize("arch", [Arch.EFI64, Arch.ARM64])
def test_sections_cmdline_and_concatenated_initrds(parts, arch, tmp_path):
    stub = need_stub(X86_STUB if arch is Arch.EFI64 else ARM64_STUB)
    kernel, first, second = parts
    cmdline = "console=ttyS0 nbd_ign=http://10.0.0.1/ignition?mac=52-54-00-00-0a-01&exp=1&sig=ab"
    data = assemble(stub, arch, kernel, [first, second], cmdline, tmp_path, "m1")
    pe = pefile.PE(data=data)
    assert pe.FILE_HEADER.Machine == {Arch.EFI64: 0x8664, Arch.ARM64: 0xAA64}[arch]
    found = sections(data)
    stub_sections = {s.Name.rstrip(b"\0").decode() for s in pefile.PE(str(stub), fast_load=True).sections}
    assert set(found) == stub_sections | {".osrel", ".cmdline", ".initrd", ".linux"}
    assert found[".cmdline"] == cmdline.encode(), "the command line, exactly: no NUL, no newline, no initrd="
    assert found[".linux"] == kernel.read_bytes()
    padded = first.read_bytes() + b"\0" * (-first.stat().st_size % 4)
    assert found[".initrd"] == padded + second.read_bytes(), "initrds concatenated, each starting 4-byte aligned"
    assert b"PRETTY_NAME=\"m1 (netbootd)\"" in found[".osrel"]
    # The image maps: sections in order, none overlapping, SizeOfImage covering them, aligned as the PE says
    opt = pe.OPTIONAL_HEADER
    spans = sorted((s.VirtualAddress, s.VirtualAddress + s.Misc_VirtualSize) for s in pe.sections)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert opt.SizeOfImage >= spans[-1][1] and opt.SizeOfImage % opt.SectionAlignment == 0
    assert all(s.PointerToRawData % opt.FileAlignment == 0 for s in pe.sections)
    assert pe.FILE_HEADER.PointerToSymbolTable == 0


def test_one_initrd_is_not_padded(parts, tmp_path):
    kernel, first, _ = parts
    assert sections(assemble(need_stub(X86_STUB), Arch.EFI64, kernel, [first], "", tmp_path))[".initrd"] == \
        first.read_bytes()


def test_a_gzip_compressed_kernel_goes_in_uncompressed(parts, tmp_path):
    """An arm64 Image.gz (some distributions' vmlinuz): systemd's stub does not decompress, so the
    .linux section holds the Image itself."""
    kernel, first, _ = parts
    packed = tmp_path / "Image.gz"
    packed.write_bytes(gzip.compress(kernel.read_bytes()))
    found = sections(assemble(need_stub(X86_STUB), Arch.EFI64, packed, [first], "", tmp_path))
    assert found[".linux"] == kernel.read_bytes()


def test_refusals_name_the_file(parts, tmp_path):
    kernel, first, _ = parts
    stub = need_stub(X86_STUB)
    with pytest.raises(UkiError, match=r"linuxx64\.efi\.stub: a stub for machine type 0x8664, not arm64"):
        write_body(stub, Arch.ARM64, kernel, [first], io.BytesIO())
    bzimage_less = tmp_path / "Image.gz"
    bzimage_less.write_bytes(b"\x1f\x8b" + os.urandom(100))
    with pytest.raises(UkiError, match=r"Image\.gz: a broken gzip file"):
        write_body(stub, Arch.EFI64, bzimage_less, [first], io.BytesIO())
    bzimage_less.write_bytes(gzip.compress(b"\x7fELF" + os.urandom(100)))
    with pytest.raises(UkiError, match=r"Image\.gz: not an EFI-stub kernel \(no PE header inside its gzip\)"):
        write_body(stub, Arch.EFI64, bzimage_less, [first], io.BytesIO())
    uki = tmp_path / "uki.efi"
    uki.write_bytes(assemble(stub, Arch.EFI64, kernel, [first], "", tmp_path))
    with pytest.raises(UkiError, match="already a UKI"):
        write_body(uki, Arch.EFI64, kernel, [first], io.BytesIO())
    with pytest.raises(UkiError, match="not a PE file"):
        write_body(first, Arch.EFI64, kernel, [first], io.BytesIO())


def test_cache_hits_and_misses(parts, tmp_path):
    """Same stub, kernel and initrds: the cached body, whatever the command line (added per
    request). A changed kernel or initrd list: a new body. A file touched but not changed: still
    the cached one (keyed by content, not by mtime)."""
    stub = need_stub(X86_STUB)
    kernel, first, second = parts
    cache = UkiCache(tmp_path / "cache")
    body, built = cache.build(stub, Arch.EFI64, kernel, [first], "m1")
    assert built and body.path.is_file() and body.path.parent == tmp_path / "cache"
    again, built = cache.build(stub, Arch.EFI64, kernel, [first], "m2")
    assert (again.path, built) == (body.path, False)
    one, other = sections(body.whole("a=1")), sections(body.whole("a=22"))
    assert (one[".cmdline"], other[".cmdline"]) == (b"a=1", b"a=22") and one[".linux"] == other[".linux"]
    two, built = cache.build(stub, Arch.EFI64, kernel, [first, second], "m")
    assert built and two.path != body.path
    os.utime(kernel, (1, 1))  # touched: same bytes
    assert cache.build(stub, Arch.EFI64, kernel, [first], "m")[0].path == body.path
    kernel.write_bytes(b"MZ" + os.urandom(1000))  # a new kernel
    fresh, built = cache.build(stub, Arch.EFI64, kernel, [first], "m")
    assert built and fresh.path not in (body.path, two.path)
    assert sections(fresh.whole(""))[".linux"] == kernel.read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(p.path.name for p in (body, two, fresh))


# ---------------------------------------------------------------------------------- the plan


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    machines, files = tmp_path / "machines", tmp_path / "files"
    machines.mkdir()
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"MZ" + os.urandom(50_000))
    (files / "initrd.img").write_bytes(os.urandom(20_000))
    boot = ('[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img"]\n'
            'cmdline = "console=ttyAMA0 ign={{ ignition_url }}"\n')
    (machines / f"{MAC.replace(':', '-')}.toml").write_text(boot)
    (machines / f"{X86_MAC.replace(':', '-')}.toml").write_text('loader = "uki"\n' + boot)
    (machines / f"{SB_MAC.replace(':', '-')}.toml").write_text("secure_boot = true\n" + boot)
    (machines / f"{IMAGE_MAC.replace(':', '-')}.toml").write_text(f'[boot]\nimage = "{REF}"\n')
    return tmp_path


def core_for(conf: Path, **settings) -> BootCore:
    s = Settings(machines_dir=conf / "machines", files_root=conf / "files", cache_dir=conf / "cache",
                 registry=RegistrySettings(allowed=("ghcr.io",)), **settings)
    result = load_machines(s)
    assert result.errors == []
    return BootCore(s, build_catalog(result))


def offered(core: BootCore, mac: str, arch: Arch, firmware: Firmware = Firmware.HTTP_BOOT) -> str:
    decision = core.decide(Client(mac, arch, firmware, None), "10.0.0.1")
    return decision.offer.bootfile if decision.offer else f"no answer: {decision.reason}"


def test_http_boot_picks_the_assembled_uki(conf):
    stubs = UkiStubs(efi64_stub=need_stub(X86_STUB), arm64_stub=conf / "files" / "vmlinuz")  # present is enough here
    core = core_for(conf, uki=stubs)
    # arm64: no iPXE on the defaults → the UKI; x86: iPXE stays the default, loader = "uki" chooses the UKI
    assert offered(core, MAC, Arch.ARM64) == "http://10.0.0.1/uki/52-54-00-00-0a-01/arm64.efi"
    assert offered(core, MAC, Arch.EFI64) == "http://10.0.0.1/boot/snponly.efi"
    assert offered(core, X86_MAC, Arch.EFI64) == "http://10.0.0.1/uki/52-54-00-00-0a-02/efi64.efi"
    # over PXE a loader = "uki" machine boots through iPXE (its fallback)
    assert offered(core, X86_MAC, Arch.EFI64, Firmware.EFI_PXE) == "snponly.efi"
    # an arm64 iPXE configured: iPXE, as before
    with_ipxe = core_for(conf, uki=stubs, ipxe=IpxeBinaries(arm64="ipxe-arm64.efi"))
    assert offered(with_ipxe, MAC, Arch.ARM64) == "http://10.0.0.1/boot/ipxe-arm64.efi"
    # Secure Boot: the assembled UKI is not signed, so never offered
    refused = offered(core, SB_MAC, Arch.ARM64)
    assert refused.startswith("no answer: ") and "neither is the UKI netbootd would assemble" in refused
    # an image's kernel + initramfs layers: assembled as well; an image with a UKI layer: that UKI itself
    assert offered(core, IMAGE_MAC, Arch.ARM64) == "http://10.0.0.1/uki/52-54-00-00-0a-05/arm64.efi"
    core.image_resolved(REF, "arm64", frozenset({"uki"}))
    assert offered(core, IMAGE_MAC, Arch.ARM64).startswith("http://10.0.0.1/image?") and "uki" in \
        offered(core, IMAGE_MAC, Arch.ARM64)


def test_a_missing_stub_says_which_setting_and_package(conf):
    missing = conf / "no-such-stub.efi"
    core = core_for(conf, uki=UkiStubs(efi64_stub=missing, arm64_stub=missing))
    why = offered(core, MAC, Arch.ARM64)
    assert why.startswith("no answer: ")
    for needed in (f"uki.arm64_stub = {missing}", "apt-get install systemd-boot-efi:arm64",
                   "dpkg --add-architecture arm64", "ipxe.arm64", "deploy/ipxe-arm64.sh"):
        assert needed in why, why
    lines = "\n".join(explain_lines(core, MAC, "arm64-http", "10.0.0.1"))
    assert "DHCP      no answer:" in lines and "uki.arm64_stub" in lines
    problems = core.loaders["uki"].problems(core.catalog)
    assert [p["machines"] for p in problems] == [[X86_MAC.replace(":", "-")]]  # loader = "uki", x86 by default
    assert "uki.efi64_stub" in problems[0]["message"]
    # `netbootd check` says it too, as a warning: the files are right, this host lacks a package
    (conf / "netbootd.toml").write_text(f'machines_dir = "machines"\nfiles_root = "files"\n[uki]\n'
                                        f'efi64_stub = "{missing}"\narm64_stub = "{missing}"\n')
    checked = subprocess.run([sys.executable, "-m", "netbootd", "check", "--config", str(conf / "netbootd.toml")],
                             capture_output=True, text=True, timeout=60)
    # (exit 1: the secure_boot machine's test "kernel" is unsigned; the missing stub is no error)
    assert "0 error(s)" in checked.stderr and "uki" not in checked.stdout, checked
    assert f"uki.efi64_stub = {missing}" in checked.stderr and "apt-get install systemd-boot-efi" in checked.stderr
    assert "(machines: 52-54-00-00-0a-02)" in checked.stderr, checked.stderr


def test_explain_shows_the_uki(conf):
    core = core_for(conf, uki=UkiStubs(arm64_stub=conf / "files" / "vmlinuz"))
    lines = explain_lines(core, MAC, "arm64-http", "10.0.0.1")
    text = "\n".join(lines)
    assert "DHCP      67 OFFER: http-efi http://10.0.0.1/uki/52-54-00-00-0a-01/arm64.efi" in text
    assert "--- assembled UKI" in text and "iPXE script" not in text
    assert any(line.startswith("cmdline   console=ttyAMA0 ign=http://10.0.0.1/ignition?mac=") for line in lines), text


# ---------------------------------------------------------------------------------- over HTTP


def test_uki_route_serves_the_assembled_uki(daemon_factory):
    """`netbootd serve` on loopback: GET /uki/<mac>/efi64.efi builds the UKI of the machine's files
    and its command line rendered for this request; another machine with the same files shares
    the cached body, with its own command line; HEAD says the length GET sends; unknown machines
    and names are 404s that say why."""
    need_stub(X86_STUB)
    d = daemon_factory()
    kernel = b"MZ" + os.urandom(200_000)
    initrd = os.urandom(30_000)
    (d.files / "vmlinuz").write_bytes(kernel)
    (d.files / "initrd.img").write_bytes(initrd)
    (d.machines / "52-54-00-00-0a-02.toml").write_text(textwrap.dedent("""\
        loader = "uki"
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.img"]
        cmdline = "console=ttyS0 host={{ machine }} ign={{ ignition_url }}"
        """))
    (d.machines / "52-54-00-00-0a-04.toml").write_text(textwrap.dedent("""\
        loader = "uki"
        signed_urls = false
        [boot]
        kernel = "vmlinuz"
        initrds = ["initrd.img"]
        cmdline = "console=ttyS0 ign={{ ignition_url }}"
        """))
    d.start()  # uki.efi64_stub: its default, Debian's path
    got = httpx.get(f"{d.url}/uki/52-54-00-00-0a-02/efi64.efi", timeout=30)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/efi"
    found = sections(got.content)
    assert found[".linux"] == kernel and found[".initrd"] == initrd
    cmdline = found[".cmdline"].decode()
    assert cmdline.startswith(f"console=ttyS0 host=52-54-00-00-0a-02 ign={d.url}/ignition?mac=52-54-00-00-0a-02&exp=")
    assert httpx.get(cmdline.split("ign=")[1], timeout=10).status_code == 404  # signed and valid; no Ignition here
    fixed = [httpx.get(f"{d.url}/uki/52-54-00-00-0a-04/efi64.efi", timeout=30) for _ in range(2)]
    assert [r.status_code for r in fixed] == [200, 200] and fixed[0].content == fixed[1].content
    assert sections(fixed[0].content)[".cmdline"] == f"console=ttyS0 ign={d.url}/ignition?mac=52-54-00-00-0a-04".encode()
    head = httpx.head(f"{d.url}/uki/52-54-00-00-0a-04/efi64.efi", timeout=30)
    assert (head.status_code, int(head.headers["content-length"])) == (200, len(fixed[0].content))
    log = d.log()
    assert log.count("uki assembled") == 1 and log.count("uki cached") == 3, log
    assert len(list((d.root / "cache" / "uki").glob("*.efi"))) == 1, "one body for both machines' kernel + initrd"
    for path, status, says in (("/uki/52-54-00-00-0a-09/efi64.efi", 404, "no UKI for this machine"),
                               ("/uki/52-54-00-00-0a-02/bios.efi", 404, "/uki/<mac>/efi64.efi"),
                               ("/uki/not-a-mac/efi64.efi", 400, "neither a MAC")):
        r = httpx.get(d.url + path, timeout=10)
        assert (r.status_code, says in r.text) == (status, True), (path, r.status_code, r.text)
