"""The boot core's decisions for image-backed machines, once their layers are known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import RegistrySettings, Settings
from netbootd.core.decide import BootCore, NoScript
from netbootd.model import Arch, Client, Firmware, OfferKind

REF = "ghcr.io/lab/os:v1"


@pytest.fixture
def core(tmp_path: Path) -> BootCore:
    (tmp_path / "machines").mkdir()
    (tmp_path / "files").mkdir()
    (tmp_path / "machines" / "52-54-00-00-00-01.toml").write_text(
        f'[boot]\nimage = "{REF}"\ncmdline = "root=live:{{{{ squashfs_url }}}} console=ttyS0"\n'
    )
    settings = Settings(machines_dir=tmp_path / "machines", files_root=tmp_path / "files",
                        registry=RegistrySettings(allowed=("ghcr.io",)))
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result))


def http_client(arch=Arch.EFI64) -> Client:
    return Client("52:54:00:00:00:01", arch, Firmware.HTTP_BOOT)


def test_unresolved_image_http_boot_gets_ipxe_and_script_assumes_squashfs(core):
    offer = core.offer(http_client(), "10.0.0.2")
    assert offer.kind is OfferKind.HTTP_EFI and offer.bootfile == "http://10.0.0.2/boot/snponly.efi"
    script = core.script("52:54:00:00:00:01", None, Arch.EFI64, "10.0.0.2")
    assert "layerName=application%2Fvnd.ironcore.image.squashfs" in script


def test_image_with_uki_is_offered_to_http_boot_firmware(core):
    core.image_resolved(REF, "amd64", frozenset({"kernel", "initramfs", "uki"}))
    offer = core.offer(http_client(), "10.0.0.2")
    assert offer.kind is OfferKind.HTTP_EFI
    assert offer.bootfile == (
        "http://10.0.0.2/image?imageName=ghcr.io%2Flab%2Fos&version=v1&layerName=application%2Fvnd.ironcore.image.uki"
        "&arch=amd64"
    )
    # iPXE still boots kernel + initramfs, and no squashfs the image does not have
    script = core.script("52:54:00:00:00:01", None, Arch.EFI64, "10.0.0.2")
    assert "kernel --name kernel http://10.0.0.2/image?" in script and "root=live: console=ttyS0" in script
    assert core.httpboot(["52:54:00:00:00:01"], "10.0.0.2") == (
        200, {"ClientIPs": "52:54:00:00:00:01", "UKIURL": offer.bootfile})


def test_uki_only_image(core):
    core.image_resolved(REF, "amd64", frozenset({"uki"}))
    script = core.script("52:54:00:00:00:01", None, Arch.EFI64, "10.0.0.2")
    assert "chain --autofree http://10.0.0.2/image?" in script and "image.uki" in script
    with pytest.raises(NoScript, match="needs UEFI"):
        core.script("52:54:00:00:00:01", None, Arch.BIOS, "10.0.0.2")
    bios = Client("52:54:00:00:00:01", Arch.BIOS, Firmware.BIOS_PXE)
    assert core.offer(bios, "10.0.0.2") is None


def test_urls_escape_exactly_as_urlencode_and_quote():
    """netbootd.core.urls skips urlencode/quote when nothing needs escaping: same text either way."""
    import hashlib
    import hmac
    from urllib.parse import quote, urlencode

    from netbootd.core import urls
    from netbootd.core.signing import UrlSigner

    for mac, uuid, sig in [("52:54:00:12:34:56", None, (1796117396, "cdc452ea14043c17627431a8f5800934")),
                           (None, "4c4c4544-0042-4810-8056-b4c04f395931", None), ("a b&c", None, (1, "x/y+z"))]:
        query = urls.ident_query(mac, uuid) | ({"exp": str(sig[0]), "sig": sig[1]} if sig else {})
        assert urls.ignition_url("http://b", mac, uuid, sig) == f"http://b/ignition?{urlencode(query)}"
        assert urls.beacon_url("http://b", mac, uuid) == f"http://b/beacon?{urlencode(urls.ident_query(mac, uuid))}"
    for rel in ["os/vmlinuz", "/os/initrd.img", "a b/c%d", "ü.img", "x~y_z-1.2", "q?r#s"]:
        assert urls.file_url("http://b", rel) == f"http://b/files/{quote(rel.lstrip('/'))}"
    signer = UrlSigner(b"k" * 32, clock=lambda: 1000.0)
    exp, sig = signer.sign("ignition", "52:54:00:12:34:56")
    assert sig == hmac.new(b"k" * 32, f"ignition\n52:54:00:12:34:56\n{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def test_download_names_what_a_machine_fetches(core, tmp_path):
    """The core tells the HTTP edge what a download is for a machine: its plan's role, or the file
    its command line names; image layers by their media type, whatever the machine."""
    files = tmp_path / "files"
    for rel in ("fcos/efi64/vmlinuz", "fcos/efi64/initrd.img", "fcos/arm64/vmlinuz", "fcos/arm64/initrd.img",
                "extra.img", "rootfs.squashfs", "d-i/preseed.cfg"):
        (files / rel).parent.mkdir(parents=True, exist_ok=True)
        (files / rel).write_bytes(b"x")
    (tmp_path / "machines" / "52-54-00-00-00-02.toml").write_text(
        '[boot]\nkernel = "fcos/{{ arch }}/vmlinuz"\ninitrds = ["fcos/{{ arch }}/initrd.img", "extra.img"]\n'
        "cmdline = 'root=live:{{ file(\"rootfs.squashfs\") }} url={{ file(\"/d-i/preseed.cfg\") }} console=ttyS0'\n")
    result = load_machines(core.settings)
    assert result.errors == []
    core.replace_catalog(build_catalog(result))
    mac = "52:54:00:00:00:02"
    assert core.download(mac, "/files/fcos/efi64/vmlinuz") == {"role": "kernel"}
    assert core.download(mac, "/files/fcos/arm64/initrd.img") == {"role": "initrd"}
    assert core.download(mac, "/files/extra.img") == {"role": "initrd"}
    assert core.download(mac, "/files/rootfs.squashfs") == {"file": "rootfs.squashfs"}
    assert core.download(mac, "/files/d-i/preseed.cfg") == {"file": "d-i/preseed.cfg"}
    assert core.download(mac, "/files/other.img") == {}
    assert core.download(None, "/files/extra.img") == {}  # which machine: unknown
    # an image machine's layers, by the URLs its own script hands out
    script = core.script("52:54:00:00:00:01", None, Arch.EFI64, "10.0.0.2")
    layers = re.findall(r"http://10\.0\.0\.2(/image\?\S+)", script)
    roles = [core.download("52:54:00:00:00:01", u).get("role") for u in layers]
    assert sorted(roles) == ["initrd", "kernel", "squashfs"], script
    assert core.download(None, "/httpboot/org/os/sha256-" + "0" * 64 + ".efi") == {"role": "efi"}
