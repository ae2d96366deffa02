"""Boot files a machine file names by their absolute path on this host: what is missing, said
with the Debian package that ships it.

A distribution's own packages put netboot kernels and initrds outside files_root (Debian's
debian-installer-12-netboot-amd64: /usr/lib/debian-installer/images/12/amd64/...). Naming them
where the package keeps them means an upgrade of the package is what the machines boot next. No
Debian tool maps a file that is not installed to its package without downloading the archive's
Contents index (apt-file), so the layouts netbootd's documentation uses are known here.
"""

from __future__ import annotations

import re

_PACKAGES = (
    # debian-installer-<release>-netboot-<arch>: /usr/lib/debian-installer/images/<release>/<arch>/...
    (re.compile(r"^/usr/lib/debian-installer/images/(\d+)/([a-z0-9]+)/"), r"debian-installer-\1-netboot-\2"),
    (re.compile(r"^/usr/lib/ipxe/"), "ipxe"),
    (re.compile(r"^/usr/lib/shim/"), "shim-signed"),
)


def package_for(path: str) -> str:
    """The Debian package that installs `path`, when its layout is a known one; "" otherwise."""
    for pattern, package in _PACKAGES:
        match = pattern.match(path)
        if match:
            return match.expand(package)
    return ""


def missing(path: str) -> str:
    """Why a host path a machine file names cannot be served, and what to do."""
    package = package_for(path)
    if package:
        return f"{path} does not exist on this host: install {package} (apt-get install {package})"
    return f"{path} does not exist on this host (a path starting with / is a file on this host)"
