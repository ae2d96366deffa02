"""What an OCI image is to netbootd: the manifest and index media types, the layers a resolved
manifest names (and which layer types mean the same thing), blob digests, and the errors a
registry lookup reports, each with the HTTP status the edge answers it with."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from netbootd.imageref import ImageRef

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

# Layer media types that mean the same thing (reference.md §3): asking for any member finds
# the first layer of any member, the exact type first. Short names are accepted in layerName.
IRONCORE = "application/vnd.ironcore.image."
GARDENLINUX = "application/io.gardenlinux."
MEDIA_GROUPS: tuple[tuple[str, ...], ...] = (
    (IRONCORE + "kernel", GARDENLINUX + "kernel"),
    (IRONCORE + "initramfs", GARDENLINUX + "initrd"),
    (IRONCORE + "squashfs", GARDENLINUX + "squashfs"),
    (IRONCORE + "uki", GARDENLINUX + "uki"),
)
SHORT_NAMES = {"kernel": 0, "vmlinuz": 0, "initramfs": 1, "initrd": 1, "squashfs": 2, "uki": 3}
UKI_TYPES = frozenset(MEDIA_GROUPS[3])

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------- errors


class RegistryError(Exception):
    """Something the HTTP edge reports with `status` and a one-line message."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RegistryError):
    status = 400


class Disallowed(RegistryError):
    status = 403


class NotFound(RegistryError):
    status = 404


class AuthFailed(RegistryError):
    status = 502


class UpstreamError(RegistryError):
    status = 502


class UpstreamTimeout(RegistryError):
    status = 504


class VerificationFailed(RegistryError):
    status = 502


# ---------------------------------------------------------------------- model


@attrs.frozen
class Layer:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = attrs.field(factory=dict, converter=lambda m: MappingProxyType(dict(m)))

    @property
    def is_uki(self) -> bool:
        return self.media_type in UKI_TYPES


@attrs.frozen
class ResolvedImage:
    ref: ImageRef  # as asked for (tag or digest)
    digest: str  # of the platform manifest the layers come from
    media_type: str
    platform: str  # "linux/amd64" when it came from an index, "" otherwise
    layers: tuple[Layer, ...]
    index_digest: str = ""  # the index it was picked from, if any

    def layer(self, media_type: str) -> Layer | None:
        """The first layer of `media_type`, or of an equivalent type (ironcore ↔ gardenlinux)."""
        for candidate in media_aliases(media_type):
            for layer in self.layers:
                if layer.media_type == candidate:
                    return layer
        return None

    def layer_by_digest(self, digest: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.digest == digest), None)

    def describe(self) -> str:
        parts = [f"{self.ref} → {self.digest}" + (f" ({self.platform})" if self.platform else "")]
        for layer in self.layers:
            parts.append(f"  {layer.media_type} {layer.digest} {layer.size} bytes")
        return "\n".join(parts)


@attrs.frozen
class BlobLocation:
    url: str
    headers: Mapping[str, str]  # Authorization, when the registry wants one
    registry: str


def media_aliases(media_type: str) -> tuple[str, ...]:
    """`media_type` first, then its equivalents; short names ('kernel', 'uki') expand too."""
    text = media_type.strip()
    if text.lower() in SHORT_NAMES:
        return MEDIA_GROUPS[SHORT_NAMES[text.lower()]]
    for group in MEDIA_GROUPS:
        if text in group:
            return (text, *[m for m in group if m != text])
    return (text,)


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))
