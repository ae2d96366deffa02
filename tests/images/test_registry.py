"""The httpx registry client against a real docker-registry: probe, manifests, indexes, media
types, digests, basic auth from a Docker config, the bearer-token realm, and error mapping."""

from __future__ import annotations

import io
import json

import pytest

from netbootd.config.settings import RegistrySettings
from netbootd.imageref import parse_reference
from netbootd.images import credentials as c
from netbootd.images import oci
from netbootd.images import registry as r
from tests.images import harness as h
from tests.images.conftest import docker_config

pytestmark = pytest.mark.skipif(h.REGISTRY_BIN is None, reason="docker-registry not installed")


def client_for(*hosts: str, arch: str = "amd64", auth_file=None, **kw) -> r.RegistryClient:
    settings = RegistrySettings(allowed=hosts, insecure=hosts, architecture=arch, auth_file=auth_file)
    return r.RegistryClient(settings, credentials=c.CredentialStore([auth_file] if auth_file else []), **kw)


@pytest.fixture
def open_client(registry):
    reg, _ = registry
    c = client_for(reg.host)
    yield c
    c.close()


def ref(reg, name: str):
    return parse_reference(f"{reg.host}/{name}")


def test_probe_anonymous(registry, open_client):
    assert open_client.probe(registry[0].host) == ("", {})


def test_ironcore_image_layers(registry, open_client):
    reg, c = registry
    image = open_client.resolve(ref(reg, "boot/ironcore:v1"))
    assert image.digest == c.ironcore and image.platform == "" and image.index_digest == ""
    kernel = image.layer(h.KERNEL)
    assert kernel is not None and kernel.digest == h.sha256(c.kernel) and kernel.size == len(c.kernel)
    assert image.layer(h.INITRAMFS).digest == h.sha256(c.initrd)
    assert image.layer(h.SQUASHFS).digest == h.sha256(c.squashfs)
    assert image.layer(h.UKI) is None
    # legacy names and short names find the ironcore layers too
    assert image.layer(h.GL_INITRD).digest == h.sha256(c.initrd)
    assert image.layer("kernel").digest == h.sha256(c.kernel)


def test_legacy_gardenlinux_types_found_by_ironcore_names(registry, open_client):
    reg, c = registry
    image = open_client.resolve(ref(reg, "boot/legacy:v1"))
    assert image.layer(h.KERNEL).digest == h.sha256(c.legacy_kernel)
    assert image.layer(h.INITRAMFS).digest == h.sha256(c.legacy_initrd)
    assert image.layer(h.SQUASHFS).digest == h.sha256(c.legacy_squashfs)


def test_image_without_squashfs(registry, open_client):
    reg, _ = registry
    image = open_client.resolve(ref(reg, "boot/nosquash:v1"))
    assert image.layer(h.SQUASHFS) is None and image.layer(h.KERNEL) is not None


def test_uki_image(registry, open_client):
    reg, c = registry
    layer = open_client.resolve(ref(reg, "boot/uki:v1")).layer(h.UKI)
    assert layer.is_uki and layer.digest == h.sha256(c.uki)


@pytest.mark.parametrize(("arch", "kernel_attr"), [("amd64", "kernel"), ("arm64", "kernel_arm")])
def test_oci_index_by_architecture(registry, arch, kernel_attr):
    reg, c = registry
    client = client_for(reg.host, arch=arch)
    image = client.resolve(ref(reg, "boot/multi:v1"))
    assert image.index_digest == c.multi and image.platform == f"linux/{arch}"
    assert image.digest == getattr(c, f"multi_{arch}")
    assert image.layer(h.KERNEL).digest == h.sha256(getattr(c, kernel_attr))


def test_docker_manifest_list(registry, open_client):
    reg, c = registry
    image = open_client.resolve(ref(reg, "boot/dockerlist:v1"))
    assert image.index_digest == c.dockerlist and image.digest == c.dockerlist_amd64
    assert image.media_type == h.DOCKER_MANIFEST
    assert image.layer(h.KERNEL).digest == h.sha256(c.kernel)


def test_index_without_our_architecture_is_404(registry, open_client):
    reg, _ = registry
    with pytest.raises(oci.NotFound, match=r"no manifest for architecture 'amd64' \(it has: linux/arm64"):
        open_client.resolve(ref(reg, "boot/armonly:v1"))


def test_digest_reference_is_not_split_on_colon(registry, open_client):
    reg, c = registry
    pinned = parse_reference(f"{reg.host}/boot/ironcore@{c.ironcore}")
    assert pinned.repository == "boot/ironcore" and pinned.digest == c.ironcore and pinned.tag is None
    image = open_client.resolve(pinned)
    assert image.digest == c.ironcore and image.layer(h.KERNEL).digest == h.sha256(c.kernel)
    # the same via version=, as /image?version=sha256:... passes it
    assert open_client.resolve(parse_reference(f"{reg.host}/boot/ironcore", c.ironcore)).digest == c.ironcore
    # a digest reference to an index
    assert open_client.resolve(parse_reference(f"{reg.host}/boot/multi@{c.multi}")).digest == c.multi_amd64


def test_unknown_tag_and_repository_are_404(registry, open_client):
    reg, _ = registry
    with pytest.raises(oci.NotFound):
        open_client.resolve(ref(reg, "boot/ironcore:nope"))
    with pytest.raises(oci.NotFound):
        open_client.resolve(ref(reg, "boot/nothing:v1"))
    with pytest.raises(oci.NotFound):
        open_client.resolve(parse_reference(f"{reg.host}/boot/ironcore@sha256:" + "0" * 64))


def test_disallowed_registry(registry):
    client = client_for("ghcr.io")
    with pytest.raises(oci.Disallowed, match=r"registry '127.0.0.1:\d+' is not allowed; allowed registries: ghcr.io"):
        client.resolve(ref(registry[0], "boot/ironcore:v1"))
    with pytest.raises(oci.BadRequest):
        client.parse("UPPER/Case:v1")


def test_connection_refused_is_502_and_resolution_is_cached(registry):
    reg, _ = registry
    client = client_for(reg.host, "127.0.0.1:9")
    with pytest.raises(oci.UpstreamError, match="unreachable") as info:
        client.resolve(parse_reference("127.0.0.1:9/boot/x:v1"))
    assert info.value.status == 502
    # tag resolutions are cached: a second resolve within the TTL makes no request
    image = client.resolve(ref(reg, "boot/ironcore:v1"))
    before = len(reg.access("GET", "/boot/ironcore/manifests/v1"))
    assert client.resolve(ref(reg, "boot/ironcore:v1")) is image
    assert len(reg.access("GET", "/boot/ironcore/manifests/v1")) == before


def test_stale_resolution_used_when_registry_fails(fresh_registry):
    now = [1000.0]
    client = client_for(fresh_registry.host, resolve_ttl=60, clock=lambda: now[0])
    push = h.Pusher(fresh_registry.url)
    push.image("boot/x", "v1", [(h.KERNEL, b"k" * 100)])
    image = client.resolve(ref(fresh_registry, "boot/x:v1"))
    fresh_registry.stop()
    now[0] += 3600  # expired, but the registry is down: the last good answer is used
    assert client.resolve(ref(fresh_registry, "boot/x:v1")) is image
    now[0] += 2 * 24 * 3600
    with pytest.raises(oci.UpstreamError):
        client.resolve(ref(fresh_registry, "boot/x:v1"))


def test_fetch_blob_verifies(registry, open_client):
    reg, c = registry
    out = io.BytesIO()
    digest = h.sha256(c.initrd)
    assert open_client.fetch_blob(ref(reg, "boot/ironcore"), digest, out, len(c.initrd)) == len(c.initrd)
    assert out.getvalue() == c.initrd
    assert open_client.blob_size(ref(reg, "boot/ironcore"), digest) == len(c.initrd)


# ---------------------------------------------------------------------- basic auth


def test_basic_auth_from_docker_config(basic_registry, tmp_path):
    cfg = tmp_path / "config.json"
    docker_config(cfg, basic_registry.host, basic_registry.username, basic_registry.password)
    client = client_for(basic_registry.host, auth_file=cfg)
    scheme, params = client.probe(basic_registry.host)
    assert scheme == "basic" and params["realm"] == "netbootd-test"
    image = client.resolve(ref(basic_registry, "boot/ironcore:v1"))
    loc = client.blob_location(image.ref, image.layer(h.KERNEL).digest)
    assert loc.headers["Authorization"].startswith("Basic ")


def test_basic_auth_found_via_DOCKER_CONFIG(basic_registry, tmp_path):
    (tmp_path / "dc").mkdir()
    docker_config(tmp_path / "dc" / "config.json", basic_registry.host, basic_registry.username, basic_registry.password)
    store = c.CredentialStore(c.docker_config_paths(None, {"DOCKER_CONFIG": str(tmp_path / "dc"), "HOME": str(tmp_path)}))
    settings = RegistrySettings(allowed=(basic_registry.host,), insecure=(basic_registry.host,))
    client = r.RegistryClient(settings, credentials=store)
    assert client.resolve(ref(basic_registry, "boot/nosquash:v1")).layer(h.KERNEL) is not None


def test_basic_auth_without_or_with_wrong_credentials(basic_registry, tmp_path):
    with pytest.raises(oci.AuthFailed, match="wants a username and password") as info:
        client_for(basic_registry.host).resolve(ref(basic_registry, "boot/ironcore:v1"))
    assert info.value.status == 502
    cfg = tmp_path / "config.json"
    docker_config(cfg, basic_registry.host, basic_registry.username, "wrong")
    with pytest.raises(oci.AuthFailed, match="refused our credentials"):
        client_for(basic_registry.host, auth_file=cfg).resolve(ref(basic_registry, "boot/ironcore:v1"))


# ---------------------------------------------------------------------- bearer tokens


def test_anonymous_bearer_token_cached(token_realm):
    reg, tokens = token_realm
    client = client_for(reg.host)
    scheme, params = client.probe(reg.host)
    assert scheme == "bearer" and params["realm"] == tokens.realm and params["service"] == "netbootd-test-registry"
    before = len(tokens.issued)
    image = client.resolve(ref(reg, "boot/ironcore:v1"))
    loc = client.blob_location(image.ref, image.layer(h.KERNEL).digest)
    assert loc.headers["Authorization"].startswith("Bearer ")
    # one token for the repository, reused for the manifest and the blob
    assert len(tokens.issued) == before + 1
    assert tokens.issued[-1] == {"access": [{"type": "repository", "name": "boot/ironcore", "actions": ["pull"]}],
                                 "authed": False}
    out = io.BytesIO()
    client.fetch_blob(image.ref, image.layer(h.KERNEL).digest, out)
    assert len(tokens.issued) == before + 1


def test_expired_token_is_refreshed(token_realm):
    reg, tokens = token_realm
    now = [0.0]
    client = client_for(reg.host, clock=lambda: now[0])
    client.resolve(ref(reg, "boot/ironcore:v1"), cached=False)
    first = len(tokens.issued)
    client.resolve(ref(reg, "boot/ironcore:v1"), cached=False)
    assert len(tokens.issued) == first
    now[0] += 301  # past expires_in
    client.resolve(ref(reg, "boot/ironcore:v1"), cached=False)
    assert len(tokens.issued) == first + 1


def test_bearer_token_with_credentials(token_realm, tmp_path):
    reg, tokens = token_realm
    # boot/uki is not anonymous: without credentials the token grants nothing and the registry says 401
    with pytest.raises(oci.AuthFailed):
        client_for(reg.host).resolve(ref(reg, "boot/uki:v1"))
    cfg = tmp_path / "config.json"
    docker_config(cfg, reg.host, tokens.username, tokens.password)
    client = client_for(reg.host, auth_file=cfg)
    image = client.resolve(ref(reg, "boot/uki:v1"))
    assert image.layer(h.UKI) is not None
    assert tokens.issued[-1]["authed"] is True
    docker_config(cfg, reg.host, tokens.username, "bad")
    with pytest.raises(oci.AuthFailed, match="token server refused"):
        client_for(reg.host, auth_file=cfg).resolve(ref(reg, "boot/uki:v1"))


# ---------------------------------------------------------------------- pure helpers


def test_media_aliases():
    assert oci.media_aliases(h.KERNEL) == (h.KERNEL, h.GL_KERNEL)
    assert oci.media_aliases(h.GL_INITRD) == (h.GL_INITRD, h.INITRAMFS)
    assert oci.media_aliases("initrd") == (h.INITRAMFS, h.GL_INITRD)
    assert oci.media_aliases("application/x-other") == ("application/x-other",)


def test_parse_challenge():
    assert c.parse_challenge('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://ghcr.io/token", "service": "ghcr.io", "scope": "repository:a/b:pull"})
    assert c.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_docker_config_forms(tmp_path):
    import base64

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "ghcr.io": {"username": "u", "password": "p"},
        "https://Registry.Example:5000/v2/": {"identitytoken": "refresh"},
    }}))
    store = c.CredentialStore([cfg])
    assert store.get("registry-1.docker.io") == c.Credential("hub", "pw")
    assert store.get("GHCR.io") == c.Credential("u", "p")
    assert store.get("registry.example:5000").identity_token == "refresh"
    assert store.get("quay.io") is None
    assert "pw" not in repr(store.get("docker.io"))


def test_rotated_credentials_are_read_again_after_a_401(basic_registry, tmp_path):
    cfg = tmp_path / "config.json"
    docker_config(cfg, basic_registry.host, basic_registry.username, "old-password")
    client = client_for(basic_registry.host, auth_file=cfg)
    with pytest.raises(oci.AuthFailed):
        client.resolve(ref(basic_registry, "boot/ironcore:v1"))
    docker_config(cfg, basic_registry.host, basic_registry.username, basic_registry.password)  # rotated
    assert client.resolve(ref(basic_registry, "boot/ironcore:v1")).layer(h.KERNEL) is not None
