"""`resolve_machines` (for `netbootd check --resolve`) and `peek` against a real registry."""

from __future__ import annotations

import pytest

from netbootd.config.settings import RegistrySettings
from netbootd.imageref import parse_reference
from netbootd.images.registry import RegistryClient
from netbootd.images.resolve import boot_layers, resolve_machines
from tests.images import harness as h

pytestmark = pytest.mark.skipif(h.REGISTRY_BIN is None, reason="docker-registry not installed")


def test_resolve_machines(registry):
    reg, c = registry
    client = RegistryClient(RegistrySettings(allowed=(reg.host,), insecure=(reg.host,)))
    refs = {
        "52-54-00-00-00-01": f"{reg.host}/boot/ironcore:v1",
        "52-54-00-00-00-02": f"{reg.host}/boot/nosquash:v1",
        "52-54-00-00-00-03": f"{reg.host}/boot/uki:v1",
        "52-54-00-00-00-04": f"{reg.host}/boot/legacy:v1",
        "52-54-00-00-00-05": f"{reg.host}/boot/ironcore:missing",
        "52-54-00-00-00-06": f"{reg.host}/boot/multi@{c.multi}",
    }
    out = {r.machine: r for r in resolve_machines(client, [(m, parse_reference(x), "amd64") for m, x in refs.items()])}
    assert out["52-54-00-00-00-01"].ok and "squashfs" in out["52-54-00-00-00-01"].line()
    layers = boot_layers(out["52-54-00-00-00-02"].image)
    assert layers.squashfs is None and layers.kernel is not None and out["52-54-00-00-00-02"].ok
    assert out["52-54-00-00-00-03"].ok and "uki sha256:" in out["52-54-00-00-00-03"].line()
    assert boot_layers(out["52-54-00-00-00-04"].image).initramfs.digest == h.sha256(c.legacy_initrd)
    assert not out["52-54-00-00-00-05"].ok and "ERROR" in out["52-54-00-00-00-05"].line()
    # what happened and what to change, in the operator's words (not the HTTP status a client would get)
    assert "not found" in out["52-54-00-00-00-05"].line(), out["52-54-00-00-00-05"].line()
    assert out["52-54-00-00-00-05"].line().endswith("; check the name and tag in boot.image")
    assert "to a client" not in out["52-54-00-00-00-05"].line()
    assert "linux/amd64" in out["52-54-00-00-00-06"].line()
    # what resolve() learnt is visible without I/O
    assert client.peek(parse_reference(refs["52-54-00-00-00-01"])) is out["52-54-00-00-00-01"].image
    assert client.peek(parse_reference(f"{reg.host}/boot/other:v1")) is None


def test_unbootable_image_is_an_error(fresh_registry):
    h.Pusher(fresh_registry.url).image("boot/config-only", "v1", [("application/vnd.example.other", b"x")])
    client = RegistryClient(RegistrySettings(allowed=(fresh_registry.host,), insecure=(fresh_registry.host,)))
    [res] = resolve_machines(client, [("m", parse_reference(f"{fresh_registry.host}/boot/config-only:v1"), "amd64")])
    assert not res.ok and "neither kernel + initramfs nor a UKI" in res.line()


def test_a_machine_without_arch_is_resolved_for_each_architecture(registry):
    """A multi-arch image: each architecture netbootd boots gets its own manifest (and layers); an
    image without one of them is not an error unless a machine file says that architecture."""
    reg, c = registry
    client = RegistryClient(RegistrySettings(allowed=(reg.host,), insecure=(reg.host,)))
    multi = parse_reference(f"{reg.host}/boot/multi:v1")
    armonly = parse_reference(f"{reg.host}/boot/armonly:v1")
    out = resolve_machines(client, [("mixed", multi, None), ("arm", armonly, "arm64"), ("x86", armonly, None)])
    by = {(r.machine, r.arch): r for r in out}
    assert by[("mixed", "amd64")].image.digest == c.multi_amd64 and by[("mixed", "amd64")].required
    assert by[("mixed", "arm64")].image.digest == c.multi_arm64 and not by[("mixed", "arm64")].required
    assert boot_layers(by[("mixed", "arm64")].image).kernel.digest == h.sha256(c.kernel_arm)
    assert by[("arm", "arm64")].image.platform == "linux/arm64"  # (a kernel only: resolvable, not bootable)
    assert [r.arch for r in out if r.machine == "arm"] == ["arm64"]
    assert by[("x86", "amd64")].image is None and by[("x86", "amd64")].required  # amd64 is the default: required
    assert "no manifest for architecture 'amd64'" in by[("x86", "amd64")].error
    assert by[("x86", "arm64")].image is not None and not by[("x86", "arm64")].required
    # cached per architecture
    assert client.peek(multi, "arm64").digest == c.multi_arm64 and client.peek(multi).digest == c.multi_amd64
