"""Resolve client-chosen file names to regular files under configured roots, safely.

Shared by TFTP and HTTP `/files`: whatever a client sends, the result is a regular file
inside one of the roots, or an error. Symlinks are allowed only when they stay inside the root.
HTTP `/host` serves exactly the host paths machine files name (`host_file`), nothing else.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Collection
from pathlib import Path


class FileError(Exception):
    """Base: the client asked for something it cannot have."""


class FileNotFound(FileError):
    pass


class AccessDenied(FileError):
    pass


def clean_name(name: str) -> str:
    """Validate a client-supplied relative name and return it without leading slashes.

    TFTP clients often send "/undionly.kpxe"; a leading slash means "the root", not the host's /.
    Refused: NUL bytes, backslashes (Windows-style traversal), '..' components, empty names.
    """
    if "\x00" in name or "\\" in name:
        raise AccessDenied("illegal character in file name")
    stripped = name.lstrip("/")
    parts = [p for p in stripped.split("/") if p not in ("", ".")]
    if not parts:
        raise FileNotFound("empty file name")
    if any(p == ".." for p in parts):
        raise AccessDenied("'..' in file name")
    return "/".join(parts)


ROOT_RECHECK_SECONDS = 1.0  # a root that is a symlink may be switched (an atomic deploy): noticed this soon
_real_roots: dict[str, tuple[float, str]] = {}


def _real_root(root: Path | str) -> str:
    """os.path.realpath(root), asked of the kernel at most once a second per root: realpath
    lstat()s every component, and roots sit deep (a storm's profile: 240 µs a request)."""
    key = os.fspath(root)
    now = time.monotonic()
    hit = _real_roots.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    real = os.path.realpath(key)
    if len(_real_roots) > 64:
        _real_roots.clear()  # roots are a handful; never grow without bound
    _real_roots[key] = (now + ROOT_RECHECK_SECONDS, real)
    return real


def _walk(real_root: str, rel: str) -> tuple[str, os.stat_result | None]:
    """The real path of `rel` under `real_root` and its lstat, one lstat per component of `rel`
    (realpath's own walk, without the root's components). A symlink anywhere: realpath decides
    (its target may leave the root), and the stat is left to the caller."""
    path = real_root
    st = None
    for part in rel.split("/"):
        path = f"{path}/{part}" if path != "/" else f"/{part}"
        st = os.lstat(path)  # FileNotFoundError, NotADirectoryError: the caller's
        if stat.S_ISLNK(st.st_mode):
            return os.path.realpath(os.path.join(real_root, rel)), None
    return path, st


def resolve_under(root: Path, name: str) -> Path:
    """Return the real path of regular file `name` under `root`.

    The check is on the fully resolved path, so a symlink pointing outside the root is refused
    even when the name itself looks harmless.
    """
    rel = clean_name(name)
    real_root = _real_root(root)
    try:
        real, st = _walk(real_root, rel)
        # Strings, not pathlib: both are normalized absolute paths, so "inside" is a prefix test.
        if real != real_root and not real.startswith(real_root if real_root.endswith("/") else real_root + "/"):
            raise AccessDenied("path leaves the served root")
        if st is None:
            st = os.stat(real)
    except FileNotFoundError:
        raise FileNotFound(rel) from None
    except (PermissionError, NotADirectoryError):
        raise AccessDenied(rel) from None
    except OSError:
        raise FileNotFound(rel) from None
    if not stat.S_ISREG(st.st_mode):
        # directories, devices, FIFOs, sockets
        raise AccessDenied("not a regular file")
    return Path(real)


def open_under(root: Path, name: str):
    """Open the regular file `name` under `root` for binary reading.

    Opened with O_NOFOLLOW|O_NONBLOCK after resolution so a file swapped for a FIFO or device
    between the check and the open cannot block the reactor; re-checked with fstat.
    """
    path = resolve_under(root, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFound(name) from None
    except OSError:
        raise AccessDenied(name) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AccessDenied("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def host_file(name: str, named: Collection[str]) -> Path:
    """The regular file a client asks for as `name` under /host: a file a machine file names by
    its absolute path on this host (a distribution's installer kernel, say). Only the paths the
    operator wrote (`named`) are served; the client picks among them and never names a path of its
    own, so nothing it sends reads outside the roots and those files."""
    path = "/" + clean_name(name)
    if path not in named:
        raise FileNotFound(path)
    try:
        st = os.stat(path)
    except OSError:
        raise FileNotFound(path) from None
    if not stat.S_ISREG(st.st_mode):
        raise AccessDenied("not a regular file")
    return Path(path)


def open_host(path: str):
    """Open a file the plan names by its absolute host path (operator-written, never a client's
    name), for binary reading: regular files only, and never blocking on a FIFO swapped in."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFound(path) from None
    except OSError:
        raise AccessDenied(path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AccessDenied("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
