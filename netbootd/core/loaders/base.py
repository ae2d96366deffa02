"""What every loader module provides: one small surface, so a new loader is one module.

A loader carries a `BootPlan` (netbootd.core.plan) to the machine: it says which file a firmware is
handed first (DHCP), which TFTP names it serves, how it renders the plan (an iPXE script, a
grub.cfg), how it explains itself (`netbootd explain`, the dashboard), which binaries Secure Boot
checks in its chain, and what is missing on this host (/healthz). It never reaches back into the
core: what it needs for one request arrives as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, Protocol

import attrs
from twisted.internet.defer import Deferred

from netbootd.config.machines import BootKind, Catalog, Machine
from netbootd.config.settings import Settings
from netbootd.core.plan import Artefact, BootPlan
from netbootd.core.secureboot import OfferedBinary
from netbootd.model import Arch, Firmware


class Events(Protocol):
    """What records a machine's boot events (netbootd.core.timeline.Timeline)."""

    def record(self, stage: str, **fields: Any) -> str | None: ...


Fetch = Callable[[Artefact], Deferred]  # a URL or image layer into netbootd's cache → Deferred[Path]


@attrs.frozen
class TftpRequest:
    """A TFTP name a loader serves, parsed. `mac` names the machine for per-machine names (the core
    then finds its plan); `arch`: the architecture the name asks for ("" when the name does not say)."""

    what: str
    arch: str = ""
    mac: str = ""
    index: int = 0
    name: str = ""


@attrs.frozen
class Rendering:
    """What a loader needs to render one machine's plan: its template context and file() function."""

    plan: BootPlan
    mac: str
    context: dict[str, Any]
    file_url: Callable[[str], str]


class Loader(Protocol):
    name: str  # the value of `loader = "..."` in a machine file
    kinds: frozenset[BootKind]  # the boot kinds it can carry (others are configuration errors)
    fallback: str  # the loader to try for an arch this one has no binary for ("": none)
    title: str  # how messages name it ("GRUB")
    carries: str  # what it boots, in words (for a machine whose boot kind it cannot carry)
    signed: bool  # it runs under Secure Boot (a `secure_boot = true` machine needs such a loader)

    def __init__(self, settings: Settings, events: Events, fetch: Fetch | None = None) -> None: ...

    def installed(self, arch: Arch) -> bool: ...

    def bootfile(self, machine: Machine, arch: Arch, firmware: Firmware) -> tuple[str, str | None]:
        """(the file this firmware is handed first, or "" with why not): DHCP's boot file."""
        ...

    def tftp_request(self, name: str) -> TftpRequest | None:
        """The request `name` (cleaned, no leading slash) is, if this loader serves it."""
        ...

    def optional(self, name: str) -> bool:
        """`name` is a file the chain asks for that need not exist ("not found" is the normal answer)."""
        ...

    def config_arch(self, machine: Machine) -> Arch:
        """The architecture whose plan renders a per-machine file whose name does not say one."""
        ...

    def open_tftp(self, request: TftpRequest, rendering: Rendering | None, client_ip: str,
                  client_mac: str | None, now: float) -> BinaryIO | Deferred:
        """The bytes for `request` (a Deferred when they must be fetched first); raises
        netbootd.core.files.FileError. `rendering`: the machine's, for per-machine names."""
        ...

    def http_binary(self, name: str) -> Any:
        """The path of a binary served over HTTP at /boot/<name>, None if not this loader's."""
        ...

    def render(self, rendering: Rendering) -> str:
        """The plan as this loader's configuration (script, grub.cfg); raises TemplateError."""
        ...

    def explain(self, plan: BootPlan, rendering: Rendering) -> list[str]:
        """What `netbootd explain` prints after the DHCP line for a machine whose firmware's plan
        is `plan`; `rendering`: what this loader renders for it."""
        ...

    def secure_boot_binaries(self, machine: Machine) -> Iterable[OfferedBinary]:
        """The binaries of this loader's own chain a Secure Boot machine's firmware verifies."""
        ...

    def tick(self, now: float) -> None:
        """Called every few seconds: notice a chain that stopped unseen (GRUB never asking for its
        configuration), and say so in the timeline and the log."""
        ...

    def problems(self, catalog: Catalog) -> list[dict[str, Any]]:
        """What this host lacks for the catalog's machines (health's `loader_missing`)."""
        ...
