"""Real EFI binaries for the Secure Boot tests: Debian's signed shim, GRUB and kernel, iPXE's
unsigned snponly.efi, and copies of it signed here with OVMF's snakeoil key (sbsign)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
SHIM_UNSIGNED = Path("/usr/lib/shim/shimx64.efi")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
KERNEL = REPO / "tests" / "integration" / ".assets" / "vmlinuz"  # Debian's, from tests/integration/assets.sh
SNPONLY = Path("/usr/lib/ipxe/snponly.efi")
SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")  # PEM, encrypted with "snakeoil"
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")


def need(path: Path, how: str) -> Path:
    """The file, or skip saying how to get it (fail under CI: these tests must run there)."""
    if path.is_file():
        return path
    reason = f"{path} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: these tests must not skip there)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shim() -> Path:
    return need(SHIM, "apt-get install shim-signed")


@pytest.fixture(scope="session")
def shim_unsigned() -> Path:
    return need(SHIM_UNSIGNED, "apt-get install shim-signed")


@pytest.fixture(scope="session")
def grub() -> Path:
    return need(GRUB, "apt-get install grub-efi-amd64-signed")


@pytest.fixture(scope="session")
def kernel() -> Path:
    return need(KERNEL, "run tests/integration/assets.sh")


@pytest.fixture(scope="session")
def snponly() -> Path:
    return need(SNPONLY, "apt-get install ipxe")


@pytest.fixture(scope="session")
def snakeoil_signed(tmp_path_factory, snponly) -> Path:
    """snponly.efi signed by sbsign with OVMF's snakeoil key: subject O=SnakeOil, no CN."""
    need(SNAKEOIL_KEY, "apt-get install ovmf")
    if shutil.which("sbsign") is None:
        need(Path("/usr/bin/sbsign"), "apt-get install sbsigntool")
    work = tmp_path_factory.mktemp("snakeoil")
    key = work / "key.pem"
    subprocess.run(["openssl", "rsa", "-passin", "pass:snakeoil", "-in", str(SNAKEOIL_KEY), "-out", str(key)],
                   check=True, capture_output=True)
    signed = work / "snponly-snakeoil.efi"
    subprocess.run(["sbsign", "--key", str(key), "--cert", str(SNAKEOIL_CERT), "--output", str(signed), str(snponly)],
                   check=True, capture_output=True)
    return signed


def sbverify(path: Path) -> bool:
    """sbsigntool's own verdict on a snakeoil signature, to hold ours against."""
    out = subprocess.run(["sbverify", "--cert", str(SNAKEOIL_CERT), str(path)], capture_output=True, text=True)
    return out.returncode == 0
