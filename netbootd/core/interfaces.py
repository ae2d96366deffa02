"""What each protocol edge needs from the boot core: complete interfaces, one per edge.

The service hands every edge the one `BootCore` (netbootd.core.decide), which provides all of them;
tests hand an edge a double of just its interface. An edge calls nothing else on the core, and
what records boot events (the timeline) is handed to each edge that records, never reached through
the core.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol

import attrs
from twisted.internet.defer import Deferred

from netbootd.config.machines import Machine
from netbootd.model import Arch, Client, Offer


@attrs.frozen
class Decision:
    offer: Offer | None
    reason: str  # why not, or what was chosen (for logs and `netbootd explain`)
    machine: Machine | None = None


class NoScript(Exception):
    """This machine gets no script (ignored, unknown, or nothing to give this arch)."""


class Denied(Exception):
    """A signed URL was required and missing, expired, tampered or another machine's."""


class CallbackRefused(Exception):
    """A lifecycle callback or action that changes nothing: `status` is its HTTP status (404 no
    such machine, 409 not a `once` machine or not in a state this report applies to)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DhcpCore(Protocol):
    """The DHCPv4 and DHCPv6 edges."""

    def decide(self, client: Client, server_ip: str) -> Decision:
        """What `client` is offered when its request reached `server_ip`, and why (not)."""
        ...

    def dhcp_seen(self, client: Client, offer: Offer | None, reason: str, client_ip: str = "", port: int = 67) -> None:
        """What the edge answered (or why not), with the address the client has or asks for."""
        ...

    def is_known(self, mac: str) -> bool:
        """The MAC has a machine file (the flood guard answers those first)."""
        ...


class TftpCore(Protocol):
    """The TFTP edge."""

    def open_tftp(self, name: str, client_ip: str, server_ip: str = "") -> BinaryIO | Deferred:
        """An open binary file for `name` (or a Deferred firing with one, when it must be fetched
        first); raises netbootd.core.files.FileError. `server_ip`: the address the request reached."""
        ...

    def tftp_done(self, client_ip: str, name: str, size: int, seconds: float, error: str = "",
                  probe: bool = False) -> str | None:
        """A transfer finished (or was refused); returns the MAC it was filed under, if known."""
        ...

    def mac_for_ip(self, ip: str) -> str | None:
        """The MAC that reliably claimed this address (for log lines)."""
        ...


class HttpCore(Protocol):
    """The HTTP edge (boot routes: scripts, Ignition, BOOTy, files, binaries)."""

    def base_url(self, host: str) -> str: ...

    def find(self, mac: str | None = None, uuid: str | None = None) -> Machine | None: ...

    def machine_arch(self, machine: Machine, arch: Arch | None) -> Arch: ...

    def script(self, mac: str | None, uuid: str | None, arch: Arch, host: str) -> str:
        """The machine's iPXE script; raises NoScript, TemplateError, FileError."""
        ...

    def uki(self, mac: str, arch: Arch, host: str) -> Deferred:
        """The UKI netbootd assembles for the machine's UEFI HTTP boot: Deferred[netbootd.core.loaders.uki.Uki];
        raises NoScript, TemplateError, FileError; errbacks FileError, UkiError, OSError."""
        ...

    def chain_stub(self, host: str) -> str:
        """What a bare /ipxe returns: iPXE asks again with its own identity."""
        ...

    def ignition(self, mac: str | None, uuid: str | None, exp: str = "", sig: str = "") -> bytes | None: ...

    def booty(self, mac: str, token: str | None = None) -> bytes | None: ...

    def httpboot(self, identities: list[str], host: str) -> tuple[int, dict[str, str]]: ...

    def file_path(self, rel: str) -> Any:
        """A file under files_root, resolved safely; raises FileError."""
        ...

    def host_path(self, name: str) -> Any:
        """A file a machine file names by its absolute path on this host (/host/<path>), and only
        such a file; raises FileError."""
        ...

    def binary_path(self, name: str) -> Any:
        """A loader binary served over HTTP (/boot/<name>); raises FileError."""
        ...

    def download(self, mac: str | None, uri: str) -> dict[str, str]:
        """What a download (`uri`: its path and query) is for machine `mac`, as timeline fields:
        {"role": "kernel"|"initrd"|"efi"|"squashfs"}, {"file": "<files_root path its command line
        names>"}, or {} (unknown)."""
        ...

    def binary_names(self) -> list[str]:
        """The binaries /boot serves by name (for a 404's message)."""
        ...

    def lifecycle_callback(self, outcome: str, mac: str | None, uuid: str | None, exp: str, sig: str,
                           source: str, note: str = "") -> Deferred:
        """An installer's done/failed report: fires once the new state is stored; raises Denied,
        CallbackRefused; errbacks StoreUnavailable."""
        ...

    def lifecycle_event(self, mac: str | None, uuid: str | None, event: str, source: str) -> Deferred | None:
        """Ignition fetched ("ignition") or a beacon ("beacon:<stage>"): a Deferred when it marks the
        machine done (answer once it fires), None when it means nothing to the lifecycle."""
        ...
