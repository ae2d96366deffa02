"""Real firmware boots what netbootd's image proxy fetches from a real OCI registry.

The registry is Debian's `docker-registry` (filesystem storage in the test's directory). The test
pushes the lab's kernel and initramfs (and an EFI binary as a UKI layer) through the registry API
from the host's loopback (tests/images/harness.py), then serves the same storage from a second
registry inside netbootd's namespace on 127.0.0.1:5000: netbootd reaches it, the machines never do
(they only see netbootd's /image URLs). Its access log shows what netbootd fetched.

- `test_bios_kernel_initrd_from_image`: SeaBIOS + iPXE ROM → script → kernel and initrd through
  `/image?imageName=...` from the OCI image.
- `test_uefi_http_boot_uki_layer`: OVMF HTTP boot → the image's UKI layer through
  `/image?...&layerName=application/vnd.ironcore.image.uki` (an iPXE EFI binary pushed as a UKI
  layer) → that iPXE → script → the same image's kernel and initrd through `/image`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import attrs
import pytest

from netbootd.core import urls
from netbootd.imageref import parse_reference
from tests.images import harness as h

from .conftest import BOOT_IP, HTTP_PORT, IPXE_DIR, ProjectLab, need
from .test_boot import assert_booted

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(h.REGISTRY_BIN is None, reason="docker-registry is missing (apt-get install docker-registry)"),
]

REGISTRY_PORT = 5000  # inside the lab's namespace, where nothing else listens
REGISTRY = f"127.0.0.1:{REGISTRY_PORT}"
MAC = "52:54:00:77:00:40"


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- the registry


class LabRegistry:
    """Images pushed from the host's loopback into `storage`, then served by a registry inside
    netbootd's namespace (REGISTRY), started and stopped with the lab's other processes."""

    def __init__(self, lab: ProjectLab) -> None:
        self.lab = lab
        self.storage = lab.root / "registry-storage"
        self.reg: h.Registry | None = None

    def push(self, repo: str, tag: str, layers: list[tuple[str, Path]]) -> str:
        """Push an image (OCI manifest, amd64) through the registry API; its manifest digest."""
        return self.push_index(repo, tag, {"amd64": layers}, index=False)

    def push_index(self, repo: str, tag: str, per_arch: dict[str, list[tuple[str, Path]]], index: bool = True) -> str:
        """Push one image per architecture and (index=True) an OCI index of them under `tag`."""
        pusher_reg = h.Registry(self.lab.root / "registry-push", storage=self.storage)
        try:
            pusher_reg.start()
            push = h.Pusher(pusher_reg.url)
            try:
                if not index:
                    [(arch, layers)] = per_arch.items()
                    return push.image(repo, tag, layers, arch=arch)
                children = {arch: push.image(repo, None, layers, arch=arch) for arch, layers in per_arch.items()}
                return push.index(repo, tag, children)
            finally:
                push.close()
        finally:
            pusher_reg.stop()  # by PID, also when it never came up

    def serve(self) -> h.Registry:
        """The registry in the lab (config.yml and registry.log in the lab's directory)."""
        reg = h.Registry(self.lab.root, storage=self.storage, port=REGISTRY_PORT)
        proc = self.lab.start("registry", [str(h.REGISTRY_BIN), "serve", str(reg.config)], ns=self.lab.boot_ns)
        self.lab.wait_until(lambda: f"listening on {REGISTRY}" in proc.text(), proc, 20, "docker-registry to listen")
        settings = self.lab.settings
        self.lab.write_settings(attrs.evolve(settings, registry=attrs.evolve(
            settings.registry, allowed=(REGISTRY,), insecure=(REGISTRY,))))
        self.reg = reg
        return reg

    def blob_gets(self, digest: str) -> list[str]:
        """The registry's access-log lines for GETs of this blob (only netbootd talks to it)."""
        assert self.reg is not None
        return [line for line in self.reg.access("GET", f"/blobs/{digest}") if '" 200 ' in line]


@pytest.fixture
def registry(lab) -> LabRegistry:
    return LabRegistry(lab)


def image_machine(lab: ProjectLab, mac: str, image: str, hostname: str, marker: str) -> Path:
    """A machine booting `image` (kernel + initramfs layers); command line and Ignition of its own."""
    return lab.machine(
        mac,
        f"""\
        [vars]
        hostname = "{hostname}"
        [boot]
        image = "{image}"
        cmdline = "console=ttyS0 panic=-1 quiet nbd_host={{{{ hostname }}}} nbd_ign={{{{ ignition_url }}}}"
        [ignition]
        inline = '{{"ignition": {{"version": "3.4.0"}}, "netbootd_marker": "{marker}"}}'
        """,
    )


def blob_lines(log: str, digest: str) -> list[str]:
    """netbootd's "blob requested" lines for this digest."""
    return [line for line in log.splitlines() if "blob requested" in line and digest in line]


def check_cached(lab: ProjectLab, digest: str, content: Path) -> None:
    cached = lab.settings.cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert cached.is_file(), f"{digest} is not in netbootd's blob cache ({cached.parent})"
    assert cached.read_bytes() == content.read_bytes(), f"the cached {digest} differs from {content.name}"


def check_through_image(lab: ProjectLab, registry: LabRegistry, image: str, client_ip: str, blobs: dict[str, Path]) -> None:
    """Each blob went registry → netbootd (one upstream GET) → the machine, and is cached, verified."""
    log = lab.netbootd_log()
    for what, path in blobs.items():
        digest = digest_of(path)
        lines = blob_lines(log, digest)
        assert lines, f"netbootd never served the {what} ({digest}) through the image proxy"
        assert any(f"client={client_ip}" in x and image in x for x in lines), (what, lines)
        assert any('source="registry' in x for x in lines), f"the {what} did not come from the registry: {lines}"
        assert re.search(rf"blob cached digest={digest}", log), f"netbootd did not commit the {what} to its cache"
        assert len(registry.blob_gets(digest)) == 1, (
            f"expected exactly one upstream GET of the {what} in the registry's access log:\n"
            + "\n".join(registry.blob_gets(digest))
        )
        check_cached(lab, digest, path)


# ---------------------------------------------------------------------------------- scenarios


def test_bios_kernel_initrd_from_image(lab, registry):
    """SeaBIOS + iPXE ROM → proxy DHCP → script whose kernel and initrd are /image?imageName=...
    URLs → netbootd fetches both layers from the registry (caching them) → the marker."""
    need("bios")
    image = f"{REGISTRY}/lab/os:v1"
    kernel, initrd = lab.assets.kernel, lab.assets.initrd
    registry.push("lab/os", "v1", [(h.KERNEL, kernel), (h.INITRAMFS, initrd)])
    registry.serve()
    image_machine(lab, MAC, image, "img10", "img10-secret")
    lab.start_netbootd()
    marker = lab.booted(MAC, "bios")
    assert_booted(marker, MAC, "img10", "img10-secret")
    log = lab.netbootd_log()
    assert re.search(rf"script sent .*mac={MAC}.*kind=image", log), "no image script sent to the machine"
    check_through_image(lab, registry, image, marker.ip.split("/")[0], {"kernel": kernel, "initrd": initrd})
    # the manifest came from the registry too (netbootd resolved the tag itself)
    assert registry.reg is not None and registry.reg.access("GET", "/v2/lab/os/manifests/v1"), registry.reg.log()


def test_uefi_http_boot_uki_layer(lab, registry):
    """OVMF HTTP boot → proxy OFFER with the image's UKI layer URL (/image?...&layerName=...uki) →
    netbootd streams the layer (an iPXE EFI binary) from the registry as application/efi → OVMF
    runs it → that iPXE DHCPs and fetches its script → the same image's kernel and initrd through
    /image → the marker. One machine file: `[boot] image = ...`; the image has a UKI, a kernel and
    an initramfs layer, so HTTP-boot firmware gets the UKI and iPXE the kernel script."""
    need("uefi")
    image = f"{REGISTRY}/lab/uki:v1"
    uki, kernel, initrd = IPXE_DIR / "snponly.efi", lab.assets.kernel, lab.assets.initrd
    registry.push("lab/uki", "v1", [(h.UKI, uki), (h.KERNEL, kernel), (h.INITRAMFS, initrd)])
    registry.serve()
    image_machine(lab, MAC, image, "uki10", "uki10-secret")
    lab.start_netbootd()
    # The core offers the UKI once the daemon resolved the image (in the background, at start).
    lab.wait_log(r"image resolved .*uki sha256:", timeout=30)
    marker = lab.booted(MAC, "uefi-http")
    assert_booted(marker, MAC, "uki10", "uki10-secret")

    log = lab.netbootd_log()
    uki_url = urls.image_layer_url(f"http://{BOOT_IP}:{HTTP_PORT}", parse_reference(image), urls.UKI_MEDIA, "amd64")
    assert re.search(r"answered .*firmware=http-boot .*offered=\"http-efi " + re.escape(uki_url) + '"', log), (
        f"the HTTP-boot firmware was not offered the UKI layer {uki_url}"
    )
    assert "firmware=efi-pxe" not in log and "tftp transfer" not in log, "PXE was not disabled"
    assert "/boot/snponly.efi" not in log, "the firmware got netbootd's own iPXE binary, not the UKI layer"
    client_ip = marker.ip.split("/")[0]
    check_through_image(lab, registry, image, client_ip, {"UKI": uki})
    assert re.search(rf"script sent .*mac={MAC}.*arch=efi64.*kind=image", log), "the iPXE from the UKI got no image script"
    check_through_image(lab, registry, image, client_ip, {"kernel": kernel, "initrd": initrd})
