"""Daemon settings (netbootd.toml): frozen, every field with a sane default.

`Settings()` with no arguments is a working configuration: all interfaces, standard ports,
iPXE binaries from Debian's ipxe package, machines and files under /etc/netbootd.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import attrs

DEFAULT_IPXE_DIR = Path("/usr/lib/ipxe")


@attrs.frozen
class IpxeBinaries:
    """TFTP/HTTP name of the iPXE binary chainloaded per architecture ("" = do not answer)."""

    bios: str = "undionly.kpxe"
    efi32: str = ""  # Debian ships no 32-bit EFI iPXE
    efi64: str = "snponly.efi"  # uses the firmware's NIC driver (SNP): works on every UEFI NIC
    arm32: str = ""
    arm64: str = ""  # Debian's ipxe package is x86 only; configure e.g. "arm64/snponly.efi"

    def for_arch(self, arch: str) -> str:
        return str(getattr(self, arch))

    def names(self) -> set[str]:
        return {n for n in attrs.astuple(self) if n}


@attrs.frozen
class GrubBinaries:
    """The signed shim and network GRUB that `loader = "grub"` / `secure_boot = true` machines
    chainload, per UEFI architecture. Defaults: Debian's packages shim-signed and
    grub-efi-amd64-signed / grub-efi-arm64-signed. Keep shim and GRUB from the same Debian release:
    shim refuses a GRUB whose SBAT generation it has revoked."""

    efi64_shim: Path = Path("/usr/lib/shim/shimx64.efi.signed")
    efi64_grub: Path = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
    arm64_shim: Path = Path("/usr/lib/shim/shimaa64.efi.signed")
    arm64_grub: Path = Path("/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed")

    def for_arch(self, arch: str) -> tuple[Path, Path] | None:
        """(shim, grub) for an arch name, None where netbootd has no GRUB path (BIOS, 32-bit)."""
        if arch not in ("efi64", "arm64"):
            return None
        return getattr(self, f"{arch}_shim"), getattr(self, f"{arch}_grub")


@attrs.frozen
class UkiStubs:
    """systemd's EFI stub per UEFI architecture, on which netbootd assembles a UKI for UEFI HTTP boot
    of a kernel machine when no iPXE serves its arch (netbootd.core.uki). Defaults: where Debian's
    systemd-boot-efi package puts them (it installs the host's; the other arch's is
    systemd-boot-efi:<arch>, Multi-Arch: same, after `dpkg --add-architecture <arch>`)."""

    efi64_stub: Path = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    arm64_stub: Path = Path("/usr/lib/systemd/boot/efi/linuxaa64.efi.stub")

    def for_arch(self, arch: str) -> Path | None:
        """The stub for an arch name, None where systemd has none netbootd uses (BIOS, 32-bit)."""
        return getattr(self, f"{arch}_stub", None)


@attrs.frozen
class DhcpSettings:
    enabled: bool = True
    port: int = 67
    proxy_port: int = 4011  # PXE boot-server discovery (EFI PXE sends its REQUEST here)
    interfaces: tuple[str, ...] = ()  # empty: every interface
    # Requests from MACs without a machine file of their own, a second (0: no limit), and the burst
    # above it: a flood of spoofed MACs is dropped before it is decoded; configured machines always pass
    unknown_rate: float = 5000.0
    unknown_burst: int = 2000
    ipv6: bool = True  # proxy DHCPv6 too: UDP port6 (multicast ff02::1:2) and proxy_port over IPv6
    port6: int = 547


@attrs.frozen
class TftpSettings:
    enabled: bool = True
    port: int = 69
    listen: str = ""  # empty: all addresses
    root: Path | None = None  # extra files served over TFTP (besides the iPXE binaries)
    ipxe_dir: Path = DEFAULT_IPXE_DIR
    max_transfers: int = 4096  # beyond: the request is dropped, the client's retransmission retries it
    timeout: float = 1.0  # seconds before a block is retransmitted (RFC 2349 may change it)
    retries: int = 5
    max_blksize: int = 1468  # cap: fits a 1500-byte MTU without IP fragmentation
    # Per client IP: new transfers a second, and the burst allowed above it (0: no limit).
    # Beyond it a request gets an ERROR "rate limit exceeded, retry later".
    rate_limit: float = 20.0
    rate_burst: int = 40


@attrs.frozen
class HttpSettings:
    enabled: bool = True
    port: int = 80
    listen: str = ""  # empty: all addresses
    # The base URL machines should use ("http://boot.example:8080"). Empty: built from the
    # address the machine reached us on (DHCP: the receiving interface; HTTP: the Host header).
    public_url: str = ""
    signed_url_ttl: float = 3600.0  # lifetime of the signed Ignition/BOOTy URLs put in boot scripts
    # Lifetime of {{ done_url }} / {{ failed_url }}: an install may wait on a slow mirror, or at a
    # prompt over a weekend, before it calls back; 72 hours covers both.
    callback_url_ttl: float = 259200.0
    # A key shared by every netbootd that answers the same machines (active-active HA), so a URL
    # signed by one verifies on the others: at least 32 random bytes, readable by no other users
    # (netbootd refuses to start otherwise). None: a key of this host's own, kept in state_dir.
    signing_key_file: Path | None = None
    # Abuse limits (netbootd.http.limits).
    rate_limit: float = 50.0  # requests a second per client IP (0: no limit); beyond: 429
    rate_burst: int = 200  # requests a client may make at once above the rate
    max_transfers: int = 1024  # concurrent downloads (/files, /boot, /image, /httpboot); more wait in a queue
    max_queued: int = 8192  # downloads waiting for a slot; beyond: 503 (firmware would fail the boot)
    queue_timeout: float = 60.0  # longest wait for a slot, then 503 (iPXE gives up on a silent server at 120 s)
    stall_timeout: float = 60.0  # a download that sends nothing for this long is cut (0: never)
    max_url_length: int = 4096  # request line bytes; beyond: 414
    max_header_bytes: int = 16384  # request line and headers; beyond: 431
    max_headers: int = 100  # header lines; beyond: 431 (request bodies are always refused: 413)
    # Worker threads that move file bytes (sendfile bursts), so downloads use the cores the
    # reactor thread does not: "auto", a number, or "0" (everything on the one reactor thread)
    sendfile_threads: str = "auto"

    def sendfile_thread_count(self) -> int:
        """"auto": one per core beyond the reactor's, none on a host of one or two cores (measured on
        2 cores, docs/performance.md: the threads' hand-offs cost more CPU than they free)."""
        import os

        if self.sendfile_threads != "auto":
            return int(self.sendfile_threads)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return 0 if cores <= 2 else min(cores - 1, 16)


@attrs.frozen
class RegistrySettings:
    allowed: tuple[str, ...] = ("ghcr.io",)
    insecure: tuple[str, ...] = ()  # registries reached over plain HTTP
    auth_file: Path | None = None  # Docker config.json with credentials
    architecture: str = "amd64"  # platform picked from multi-arch indexes
    cache_max_bytes: int = 20 * 1024**3


@attrs.frozen
class LogSettings:
    format: str = "text"  # "text" or "json"
    level: str = "info"


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_listen(text: str) -> tuple[str, int]:
    """ui.listen "HOST:PORT" ("[::1]:9180" for IPv6; ":9180" for every address) → (interface, port).
    Raises ValueError saying what is expected (the caller names the key)."""
    match = _LISTEN.match(text.strip())
    port = int(match.group("port")) if match else -1
    if match is None or not 0 < port <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT such as \"127.0.0.1:9180\" (\"[::1]:9180\" for "
                         f"IPv6), or \"\" to turn the dashboard off")
    host = match.group("v6") or match.group("host") or ""
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address (give an address, "
                             f"e.g. 127.0.0.1, not a name)") from None
    return host, port


@attrs.frozen
class UiSettings:
    """The operator's dashboard (netbootd.ui), on a management listener of its own, never the boot
    network's port: every machine on the boot network can reach that one (SECURITY.md)."""

    listen: str = "127.0.0.1:9180"  # HOST:PORT; "" turns the dashboard off
    # `user:password` lines (HTTP basic) or a bearer token; readable by no other users. None: no auth
    # (fine on localhost; set it before exposing the dashboard beyond the host).
    auth_file: Path | None = None
    # /metrics is served on the management listener; this keeps the old path on the boot network's
    # HTTP port working too, for one release (scrapers move to ui.listen, then turn this off).
    metrics_on_http_port: bool = True


SSLMODES = ("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@attrs.frozen
class StateSettings:
    """Where machine lifecycle states are kept (netbootd.state): unset url, an SQLite file in
    state_dir, for one netbootd; a PostgreSQL database, shared by every netbootd that answers the
    same machines."""

    url: str = ""  # "postgresql://user@host:5432/db"; no password in it (password_file)
    password_file: Path | None = None  # the role's password; readable by no other users
    sslmode: str = ""  # libpq's sslmode; "": the url's, else libpq's default (prefer)
    sslrootcert: Path | None = None  # CA certificates to check the server's with (sslmode verify-ca, verify-full)
    sslcert: Path | None = None  # client certificate, when the server asks for one
    sslkey: Path | None = None  # its private key (libpq refuses one others can read)
    connect_timeout: int = 5  # seconds for each connection attempt (libpq's minimum: 2)


@attrs.frozen
class Settings:
    advertise: str = ""  # IPv4 address put in siaddr/URLs; empty: the receiving interface's address
    # IPv6 address put in DHCPv6 answers and the URLs IPv6 clients get; empty: the receiving
    # interface's global (or unique-local) address
    advertise6: str = ""
    machines_dir: Path = Path("/etc/netbootd/machines")
    files_root: Path = Path("/etc/netbootd/files")
    state_dir: Path = Path("/var/lib/netbootd")
    cache_dir: Path = Path("/var/cache/netbootd")
    ipxe: IpxeBinaries = IpxeBinaries()
    grub: GrubBinaries = GrubBinaries()
    uki: UkiStubs = UkiStubs()
    dhcp: DhcpSettings = DhcpSettings()
    tftp: TftpSettings = TftpSettings()
    http: HttpSettings = HttpSettings()
    registry: RegistrySettings = RegistrySettings()
    log: LogSettings = LogSettings()
    ui: UiSettings = UiSettings()
    state: StateSettings = StateSettings()
    shutdown_grace: float = 30.0  # seconds SIGTERM waits for running downloads before closing them
    source: Path | None = None  # the file these came from, for messages


def to_toml(settings: Settings, relative_to: Path | None = None) -> str:
    """The settings as a netbootd.toml, every key explicit (for `netbootd try` and the test lab,
    which run a private daemon on someone's configuration with a few keys changed).

    Written here rather than with a TOML writer library: the schema is one level of tables of
    scalars, paths and string lists, and tomllib reads TOML but does not write it."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Path):
            v = v.absolute()  # the file is read from another directory than these were relative to
            if relative_to is not None and v.is_relative_to(relative_to.absolute()):
                v = v.relative_to(relative_to.absolute())
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    top, tables = [], []
    for field in attrs.fields(Settings):
        v = getattr(settings, field.name)
        if field.name == "source" or v is None:
            continue
        if attrs.has(type(v)):
            lines = [f"{f.name} = {value(getattr(v, f.name))}" for f in attrs.fields(type(v))
                     if getattr(v, f.name) is not None]
            tables.append(f"[{field.name}]\n" + "\n".join(lines) + "\n")
        else:
            top.append(f"{field.name} = {value(v)}")
    return "\n".join(top) + "\n\n" + "\n".join(tables)
