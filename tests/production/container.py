"""The container image that deploy/container/build.sh builds, for the tests that run it.

`podman run` is refused on some machines this project is tested on (cgroup v1, setrlimit denied
inside the sandbox). There the image is run from its own filesystem: `podman image mount`, then
its ENTRYPOINT and CMD under chroot with the image's environment, as podman would start them.
Where `podman run` works (one cheap `--version` run tells), it is used instead, with the documented
flags. `runner()` picks one; both give the argv of a command that runs the image with a host
directory mounted over a path inside it.

Without the image, or with an image built from other sources than this checkout (it would test
other code), the tests skip and name the build script, except under CI=true: .ci/run builds it,
so a missing or stale image there is a failure, never a silent skip.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = "deploy/container/build.sh"
IMAGE = os.environ.get("NETBOOTD_IMAGE", "localhost/netbootd:ci")
VENV = "opt/netbootd"
SITE = f"{VENV}/lib/python3.11/site-packages"

# Run inside a private mount namespace (unshare -m) that dies with the command: the mounts it
# makes over the image's (read-only) filesystem vanish with it, even when a test fails or the
# process is killed, and never show up outside it. $1: the image root; then pairs "path in the
# image" "host path" to bind over it, "--", the command. /proc, /dev and a /tmp: Python and
# Twisted need them (/dev/null, /dev/urandom, /proc/self/fd, tempfiles), as under podman run.
_CHROOT = r"""
set -e
root=$1; shift
while [ "$1" != -- ]; do mount --bind "$2" "$root$1"; shift 2; done; shift
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
exec chroot "$root" "$@"
"""


def missing_image() -> str | None:
    """Why the image cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (podman image mount, chroot)"
    if shutil.which("podman") is None:
        return f"podman is not installed (apt-get install podman), so the image {IMAGE} cannot be used"
    if subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, timeout=60).returncode != 0:
        return f"the image {IMAGE} is not built: run {BUILD_SCRIPT}"
    return None


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: .ci/run builds the image before the tests; it must be there)")
    pytest.skip(why)


def image_or_skip() -> str:
    """The image's name; skips when it is missing, fails instead under CI=true."""
    why = missing_image()
    if why:
        _skip_or_fail(why)
    return IMAGE


def stale_sources(root: Path) -> list[str]:
    """The netbootd/*.py files that differ between this checkout and the image mounted at root."""

    def digests(base: Path) -> dict[str, str]:
        return {
            str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*.py"))
            if "__pycache__" not in p.parts
        }

    ours, theirs = digests(REPO / "netbootd"), digests(root / SITE / "netbootd")
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))


@contextmanager
def this_checkouts_image() -> Iterator[tuple[str, Path]]:
    """(name, mounted root) of the image, which must hold this checkout's netbootd (else skip,
    or fail under CI=true)."""
    image = image_or_skip()
    with mounted(image) as root:
        stale = stale_sources(root)
        if stale:
            files = ", ".join(stale[:5])
            _skip_or_fail(f"the image {image} holds other sources than this checkout ({files}): rerun {BUILD_SCRIPT}")
        yield image, root


@attrs.frozen
class ImageConfig:
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    size: int
    raw: dict

    @classmethod
    def of(cls, image: str) -> ImageConfig:
        out = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(out.stdout)[0]
        config = info["Config"]
        return cls(config.get("Entrypoint") or [], config.get("Cmd") or [], config.get("Env") or [], info["Size"], info)


@contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's filesystem, mounted read-only (podman counts mounts: unmounting ours leaves
    any other user's in place)."""
    out = subprocess.run(["podman", "image", "mount", image], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"podman image mount {image} failed: {out.stderr.strip()}")
    root = Path(out.stdout.strip())
    try:
        yield root
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, timeout=120)


@attrs.frozen
class Chroot:
    """Runs the image from its mounted filesystem under chroot."""

    root: Path
    config: ImageConfig
    how = "chroot of the image's filesystem (podman run is refused here)"

    def argv(self, args: list[str] | None = None, binds: dict[str, Path] | None = None) -> list[str]:
        """ENTRYPOINT + args (default: the image's CMD), with only the image's environment (no
        PYTHONPATH of this checkout), `binds` (path in the image -> host path) mounted over it."""
        for inside in [*(binds or {}), "/proc", "/dev", "/tmp"]:
            if not (self.root / inside.lstrip("/")).is_dir():
                raise AssertionError(f"{inside} is not a directory in the image: nothing to mount it over")
        pairs = [str(x) for inside, host in (binds or {}).items() for x in (inside, host)]
        command = [*self.config.entrypoint, *(self.config.cmd if args is None else args)]
        env = ["env", "-i", "HOME=/root", *self.config.env]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CHROOT, "sh", str(self.root),
                *pairs, "--", *env, *command]  # fmt: skip

    def cleanup(self) -> None:
        """Nothing: the mounts died with the command's mount namespace."""


@attrs.define
class PodmanRun:
    """Runs the image with podman run, with the flags docs/production/container.md gives (host network,
    NET_BIND_SERVICE only)."""

    image: str
    names: list[str] = attrs.Factory(list)
    how = "podman run --network host"

    def argv(self, args: list[str] | None = None, binds: dict[str, Path] | None = None) -> list[str]:
        name = f"netbootd-test-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        volumes = [x for inside, host in (binds or {}).items() for x in ("-v", f"{host}:{inside}")]
        # --no-healthcheck: its timer needs systemd and probes port 80, which a test may not use
        return ["podman", "run", "--rm", "--name", name, "--network", "host", "--cap-drop", "ALL",
                "--cap-add", "NET_BIND_SERVICE", "--no-healthcheck", *volumes, self.image, *(args or [])]  # fmt: skip

    def cleanup(self) -> None:
        """Remove the containers a killed `podman run` left behind (by the names it was given)."""
        for name in self.names:
            subprocess.run(["podman", "rm", "-f", "--ignore", name], capture_output=True, timeout=120)


@functools.cache
def podman_run_works(image: str) -> bool:
    """One `podman run --rm IMAGE --version`: a second where the runtime works, refused at once
    where it does not (this sandbox: crun cannot setrlimit)."""
    try:
        out = subprocess.run(
            ["podman", "run", "--rm", "--network", "host", "--no-healthcheck", image, "--version"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and out.stdout.startswith("netbootd ")


@contextmanager
def runner(image: str, root: Path) -> Iterator[Chroot | PodmanRun]:
    """podman run where it works, else chroot of the mounted image `root`."""
    run: Chroot | PodmanRun = PodmanRun(image) if podman_run_works(image) else Chroot(root, ImageConfig.of(image))
    try:
        yield run
    finally:
        run.cleanup()
