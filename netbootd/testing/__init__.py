"""Netboot tests in QEMU, as a library: the lab `netbootd try` and the pytest plugin are built on.

    from netbootd.testing import Lab
    with Lab(Path("/tmp/lab"), config=Path("/etc/netbootd")) as lab:
        result = lab.boot("52:54:00:12:34:56", "uefi-http")

Names are imported on first use, so the pytest plugin (netbootd.testing.plugin, loaded in every
pytest session where netbootd is installed) costs nothing until a test asks for a lab.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Lab": "netbootd.testing.lab",
    "LabError": "netbootd.testing.lab",
    "missing_requirements": "netbootd.testing.lab",
    "BootResult": "netbootd.testing.results",
    "PowerOn": "netbootd.testing.results",
    "Disk": "netbootd.testing.firmware",
    "DEFAULT_EXPECT": "netbootd.testing.results",
    "FIRMWARES": "netbootd.testing.firmware",
    "firmware": "netbootd.testing.firmware",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netbootd.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
