"""Reading a file that holds a secret (the URL-signing key, the dashboard's credentials): opened
once and checked through its descriptor, so what is checked is what is read; refused when anyone
but its owner (and its group, read only: a Kubernetes fsGroup) could read or replace it. Each
message names the file and what to do."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FORBIDDEN_MODE_BITS = stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP


def read_private_file(path: Path, limit: int, name: str, error: type[Exception], *, missing: str,
                      not_regular: str, exposed: str) -> bytes:
    """Up to `limit` + 1 bytes of `path` (symlinks followed, as in a Kubernetes Secret volume), or
    `error` with a message: `name` names the file ("signing key file"), `missing` says what to do
    when it does not exist, `not_regular` (may be "") what to do when it is no regular file, and
    `exposed` what an exposed file lets others do and how to fix it."""
    try:
        # O_NONBLOCK: a FIFO would block the open; it is refused below as not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:  # a NUL byte in the configured path
        raise error(f"{name} {path!r} is not a valid path") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise error(f"{name} {path} does not exist: {missing}") from None
        raise error(f"cannot read {name} {path}: {exc.strerror or exc} (netbootd runs as uid {os.geteuid()}; "
                    f"the file must be readable by it, and by no other users)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name} {path} is not a regular file" + (f": {not_regular}" if not_regular else ""))
        bad = st.st_mode & FORBIDDEN_MODE_BITS
        if bad:
            who = []
            if bad & stat.S_IROTH:
                who.append("readable by other users")
            if bad & (stat.S_IWOTH | stat.S_IWGRP):
                who.append("writable by " + ("other users" if bad & stat.S_IWOTH else "its group"))
            raise error(f"{name} {path} is {' and '.join(who)} (mode {stat.S_IMODE(st.st_mode):04o}): {exposed}")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise error(f"cannot read {name} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return data
