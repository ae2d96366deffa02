"""The built container image (deploy/container/build.sh): what is in it and that its entrypoint
runs from its own filesystem. The network boot from it is tests/integration/test_container_boot.py.
How the image is run here (podman run, or chroot of its mounted filesystem): see container.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd import __version__

from .container import SITE, VENV, ImageConfig, runner, this_checkouts_image

REPO = Path(__file__).resolve().parents[2]
# Generous: the image measured ~180 MB; 250 catches e.g. recommends or a build toolchain.
MAX_SIZE = 250_000_000


@pytest.fixture(scope="module")
def mounted_image() -> Iterator[tuple[str, Path]]:
    with this_checkouts_image() as image_and_root:
        yield image_and_root


@pytest.fixture(scope="module")
def image(mounted_image) -> str:
    return mounted_image[0]


@pytest.fixture(scope="module")
def root(mounted_image) -> Path:
    return mounted_image[1]


@pytest.fixture(scope="module")
def config(image) -> ImageConfig:
    return ImageConfig.of(image)


@pytest.fixture
def run(image, root):
    with runner(image, root) as r:
        yield r


def test_image_config(config, root):
    """ENTRYPOINT, CMD, volumes, ports and the health check as the Containerfile says (HEALTHCHECK
    survives only in the docker format the build script uses)."""
    assert config.entrypoint == ["/opt/netbootd/bin/netbootd"]
    assert config.cmd == ["serve", "--config", "/etc/netbootd/netbootd.toml", "--log-format", "json"]
    entry = root / config.entrypoint[0].lstrip("/")
    assert entry.is_file() and entry.stat().st_mode & 0o111, f"{entry} is not an executable file"
    shebang = entry.read_text().splitlines()[0]
    assert shebang == "#!/opt/netbootd/bin/python3", shebang
    raw = config.raw["Config"]
    assert set(raw["Volumes"]) == {"/etc/netbootd", "/var/cache/netbootd", "/var/lib/netbootd"}
    assert set(raw["ExposedPorts"]) == {"67/udp", "4011/udp", "69/udp", "80/tcp"}
    health = config.raw.get("Healthcheck") or {}
    assert "healthz" in " ".join(health.get("Test", [])), health
    assert raw["StopSignal"] in ("SIGTERM", "15")


def test_shipped_config_is_in_the_image(root):
    # what git tracks: a demo run from this checkout leaves its state and cache beside the example
    # (.gitignore, .containerignore), and they are not the shipped configuration
    demo = ("state/", "cache/")
    repo_files = {str(p.relative_to(REPO / "etc/netbootd")) for p in (REPO / "etc/netbootd").rglob("*")
                  if p.is_file() and not str(p.relative_to(REPO / "etc/netbootd")).startswith(demo)}
    image_files = {str(p.relative_to(root / "etc/netbootd")) for p in (root / "etc/netbootd").rglob("*") if p.is_file()}
    # ...but the Debian installer's machine: its kernel is the package's, which the image does not carry
    left_out = {"machines/52-54-00-00-00-08.toml"}
    assert left_out <= repo_files and repo_files - left_out == image_files
    # and the iPXE binaries its [ipxe] section names, from Debian's ipxe package
    for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi"):
        assert (root / "usr/lib/ipxe" / name).is_file(), name


def test_entrypoint_version(run):
    """The image's own netbootd runs: its entrypoint, its Python, its site-packages."""
    out = subprocess.run(run.argv(["--version"]), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{run.how}: {out.stderr}"
    assert out.stdout.strip() == f"netbootd {__version__}", out.stdout


def test_entrypoint_checks_the_shipped_config(run):
    """`netbootd check /etc/netbootd` inside the image: the example machines, profiles and templates
    load with the image's libraries (jinja2, the TOML parser) from the image's paths."""
    out = subprocess.run(run.argv(["check", "/etc/netbootd"]), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{run.how}:\n{out.stdout}{out.stderr}"
    # every example machine but the Debian installer's (its package is not in the image: .containerignore)
    assert out.stdout == "OK: 7 machine files, no default\n", out.stdout


def _installed(root: Path) -> set[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    packages, name = set(), ""
    for line in status.splitlines():
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line.startswith("Status: ") and line.endswith(" installed"):
            packages.add(name)
    return packages


def test_image_is_lean(root, config, record_property):
    """No build tools, caches, sources or build-time mounts left in the image."""
    record_property("image size (bytes)", config.size)
    packages = _installed(root)
    assert {"python3", "ipxe", "ca-certificates"} <= packages
    build_only = packages & {"python3-venv", "python3-pip", "python3-pip-whl", "gcc", "cpp", "make", "libpython3.11-dev"}
    assert not build_only, f"build-time packages in the image: {build_only}"
    bin_dir = root / VENV / "bin"
    assert not (bin_dir / "pip").exists() and not list((root / SITE).glob("pip-*")), "pip left in the venv"
    assert not list((root / SITE).glob("setuptools*")), "setuptools left in the venv"
    assert not list((root / SITE).rglob("tests")) and not list((root / SITE).rglob("test")), "test suites left in the venv"
    for leftover in ("src", "root/.cache/pip", "run/netbootd-build"):
        assert not (root / leftover).exists(), f"/{leftover} is in the image"
    assert not list((root / "var/lib/apt/lists").glob("*_Packages*")), "apt package lists left in the image"
    assert not list((root / "var/cache/apt").rglob("*.deb")), ".deb files left in the image"
    assert not list((root / "var/cache/apt").glob("*.bin")), "apt caches left in the image"
    assert config.size < MAX_SIZE, f"the image is {config.size / 1e6:.0f} MB (limit {MAX_SIZE / 1e6:.0f})"
