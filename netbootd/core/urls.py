"""The URLs netbootd hands to machines. One place, so every edge agrees on them."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, urlencode

from netbootd.imageref import ImageRef

# OCI layer media types (reference.md §3). The legacy gardenlinux names are tried after these.
KERNEL_MEDIA = "application/vnd.ironcore.image.kernel"
INITRD_MEDIA = "application/vnd.ironcore.image.initramfs"
SQUASHFS_MEDIA = "application/vnd.ironcore.image.squashfs"
UKI_MEDIA = "application/vnd.ironcore.image.uki"


_HAS_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):\d+$")
# What quote() and urlencode() leave as is (letters, digits, "_.-~"; "/" where safe): on the script's
# hot path nearly every part is such (dashed MACs, UUIDs, expiry, hex signatures, file names), and
# the escaping functions cost more than the rest of the URL.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch
_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9_.~/-]*").fullmatch


@functools.lru_cache(maxsize=1024)
def base_url(public_url: str, host: str, port: int) -> str:
    """'http://10.0.0.2' (port 80 implied) or 'http://10.0.0.2:8080', or the configured public URL.

    `host` is an address (DHCP: the receiving interface) or an HTTP Host header, which may
    already carry the port the client used.
    """
    if public_url:
        return public_url.rstrip("/")
    if _HAS_PORT.match(host):
        return f"http://{host}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


def ident_query(mac: str | None, uuid: str | None) -> dict[str, str]:
    # The dash form needs no escaping in a URL and is what operators grep their logs for.
    return {"mac": mac.replace(":", "-")} if mac else ({"uuid": uuid} if uuid else {})


def script_url(base: str, mac: str | None, uuid: str | None, arch: str) -> str:
    # Built by hand, not with urlencode: this is on the DHCP hot path (a third of an answer's
    # time), and every part is already URL-safe: a dashed MAC, a canonical UUID, an arch name.
    ident = f"mac={mac.replace(':', '-')}" if mac else (f"uuid={uuid}" if uuid else "")
    return f"{base}/ipxe?{ident}&arch={arch}" if ident else f"{base}/ipxe?arch={arch}"


def _query(fields: dict[str, str]) -> str:
    """urlencode(fields), without its cost when nothing needs escaping."""
    if all(_UNRESERVED(k) and _UNRESERVED(v) for k, v in fields.items()):
        return "&".join(f"{k}={v}" for k, v in fields.items())
    return urlencode(fields)


def ignition_url(base: str, mac: str | None, uuid: str | None, signature: tuple[int, str] | None = None) -> str:
    query = ident_query(mac, uuid)
    if signature is not None:
        query.update(exp=str(signature[0]), sig=signature[1])
    return f"{base}/ignition?{_query(query)}"


def callback_url(base: str, outcome: str, mac: str | None, uuid: str | None,
                 signature: tuple[int, str] | None) -> str:
    """An installer's {{ done_url }} / {{ failed_url }} ([lifecycle] once)."""
    query = ident_query(mac, uuid)
    if signature is not None:
        query.update(exp=str(signature[0]), sig=signature[1])
    return f"{base}/lifecycle/{outcome}?{_query(query)}"


def beacon_url(base: str, mac: str | None, uuid: str | None) -> str:
    return f"{base}/beacon?{_query(ident_query(mac, uuid))}"


def booty_url(base: str, signature: tuple[int, str] | None = None) -> str:
    """BOOTy appends `/<mac>.bty` itself, so the signature travels in the path."""
    return f"{base}/booty/{signature[0]}-{signature[1]}" if signature else f"{base}/booty"


def file_url(base: str, rel: str) -> str:
    rel = rel.lstrip("/")
    return f"{base}/files/{rel if _UNRESERVED_PATH(rel) else quote(rel)}"


def binary_url(base: str, name: str) -> str:
    """An iPXE binary over HTTP (UEFI HTTP-boot clients chainload it this way)."""
    return f"{base}/boot/{quote(name)}"


def uki_url(base: str, mac: str, arch: str) -> str:
    """The UKI netbootd assembles for this machine (netbootd.core.loaders.uki). The path ends in
    .efi: EDK2's HTTP boot takes the image type from it (or the Content-Type)."""
    return f"{base}/uki/{mac.replace(':', '-')}/{arch}.efi"


def location_url(base: str, location: str) -> str:
    """A config location: URLs pass through, paths under the files root become /files URLs, and
    absolute paths of files on this host /host URLs."""
    if "://" in location:
        return location
    return host_url(base, location) if location.startswith("/") else file_url(base, location)


def host_url(base: str, path: str) -> str:
    """A file a machine file names by its absolute path on this host."""
    return f"{base}/host{path}" if _UNRESERVED_PATH(path) else f"{base}/host{quote(path)}"


def image_layer_url(base: str, ref: ImageRef, media_type: str, arch: str = "") -> str:
    """`arch`: the OCI architecture whose manifest to take from a multi-arch index (the machine's)."""
    query = {
        "imageName": f"{ref.registry}/{ref.repository}",
        "version": ref.digest or ref.tag or "latest",
        "layerName": media_type,
    }
    if arch:
        query["arch"] = arch
    return f"{base}/image?{urlencode(query)}"
