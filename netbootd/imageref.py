"""OCI image references and the registry allow list (reference.md §3): a pure value type, shared by
the configuration (which validates `boot.image` at load time) and the image proxy.

Parsing follows the distribution reference grammar closely enough for boot images:
`[registry/]repository[:tag][@sha256:hex]`. A digest is never split on ':'.
"""

from __future__ import annotations

import re

import attrs

DOCKER_HUB = "docker.io"
_DOCKER_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


class ReferenceError(ValueError):
    pass


def canonical_registry(domain: str) -> str:
    """Lower-case, with Docker Hub's aliases folded into 'docker.io'. Ports are kept."""
    domain = domain.strip().lower()
    return DOCKER_HUB if domain in _DOCKER_ALIASES else domain


@attrs.frozen
class ImageRef:
    registry: str  # canonical: "ghcr.io", "docker.io", "localhost:5000"
    repository: str  # "gardenlinux/gardenlinux", "library/ubuntu"
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag (default 'latest')."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str, version: str | None = None) -> ImageRef:
    """Parse 'ghcr.io/org/img:tag', 'img@sha256:...', 'ubuntu'.

    `version` (the `/image?version=` parameter) is a tag or a 'sha256:' digest and must not
    conflict with one already in `text`.
    """
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise ReferenceError(f"invalid image reference {text!r}")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise ReferenceError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    tag = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.match(tag):
            raise ReferenceError(f"invalid tag {tag!r}")
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = canonical_registry(parts[0]), parts[1:]
    else:
        registry, path = DOCKER_HUB, parts
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for component in path:
        if not _COMPONENT.match(component):
            raise ReferenceError(f"invalid repository name {'/'.join(path)!r}: components are lower-case")
    if version:
        if _DIGEST.match(version):
            if digest and digest != version:
                raise ReferenceError("digest in the name and in version differ")
            digest = version
        elif _TAG.match(version):
            if tag and tag != version:
                raise ReferenceError(f"tag {tag!r} in the name and version {version!r} differ")
            tag = version
        else:
            raise ReferenceError(f"invalid version {version!r}: expected a tag or sha256:<hex>")
    return ImageRef(registry, "/".join(path), tag, digest)


def registry_allowed(registry: str, allowed: tuple[str, ...]) -> bool:
    return canonical_registry(registry) in {canonical_registry(a) for a in allowed}


def disallowed_message(registry: str, allowed: tuple[str, ...]) -> str:
    listed = ", ".join(sorted({canonical_registry(a) for a in allowed})) or "(none)"
    return f"registry {registry!r} is not allowed; allowed registries: {listed} (set registry.allowed)"
