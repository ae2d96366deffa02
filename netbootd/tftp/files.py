"""Which file a TFTP name means: iPXE binaries from `tftp.ipxe_dir`, everything else from `tftp.root`.

Stand-in for (and later delegate of) `BootCore.open_tftp`. Names equal to a configured iPXE
binary (`Settings.ipxe.names()`, e.g. "snponly.efi" or "arm64/snponly.efi") are served from
`tftp.ipxe_dir`; any other name (per-MAC binaries such as "52-54-00-12-34-56/ipxe.efi", extra
files) from `tftp.root`, if one is configured. Both go through `open_under`, which refuses
'..', backslashes, NUL bytes, symlinks leaving the root, devices, FIFOs and directories.
A leading "/" means the served root, not the host's.
"""

from __future__ import annotations

from typing import BinaryIO

from netbootd.config.settings import Settings
from netbootd.core.files import FileNotFound, clean_name, open_under


class TftpFiles:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ipxe_names = frozenset(settings.ipxe.names())

    def open_tftp(self, name: str, client_ip: str, server_ip: str = "") -> BinaryIO:
        """Open `name` for the client at `client_ip`; raises FileNotFound / AccessDenied."""
        rel = clean_name(name)  # AccessDenied / FileNotFound for hostile or empty names
        tftp = self.settings.tftp
        if rel in self._ipxe_names:
            return open_under(tftp.ipxe_dir, rel)
        if tftp.root is None:
            raise FileNotFound(rel)
        return open_under(tftp.root, rel)

    def tftp_done(self, client_ip: str, name: str, size: int, seconds: float, error: str = "",
                  probe: bool = False) -> str | None:
        return None  # a plain file server keeps no boot timeline

    def mac_for_ip(self, ip: str) -> str | None:
        return None
