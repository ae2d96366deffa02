"""The loaders: modules that carry a machine's BootPlan to its firmware (netbootd.core.loaders.base
says what each provides). Adding a loader is one module and one line in `LOADERS` below;
docs/architecture.md walks through it."""

from __future__ import annotations

from collections.abc import Mapping

from netbootd.config.settings import Settings
from netbootd.core.loaders.base import Events, Fetch, Loader, Rendering, TftpRequest
from netbootd.core.loaders.grub import GrubLoader
from netbootd.core.loaders.ipxe import IpxeLoader
from netbootd.core.loaders.uki import UkiLoader

# The value of `loader = "..."` in a machine file → its class, made with (settings, events, fetch).
LOADERS: Mapping[str, type[Loader]] = {cls.name: cls for cls in (IpxeLoader, GrubLoader, UkiLoader)}

__all__ = ["LOADERS", "Loader", "Rendering", "TftpRequest", "make_loaders"]


def make_loaders(settings: Settings, events: Events, fetch: Fetch | None = None) -> dict[str, Loader]:
    """One instance of every loader, in registry order (iPXE first: the default)."""
    return {name: cls(settings, events, fetch) for name, cls in LOADERS.items()}
