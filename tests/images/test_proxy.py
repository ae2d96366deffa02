"""/image and /httpboot/<repo>/sha256-<hex>.efi through `netbootd serve` (a subprocess) against a
real docker-registry: contracts, media types, errors, HEAD and Range, the cache, single flight,
a registry killed mid-stream, a corrupted blob, auth fronts."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import time

import httpx
import pytest

from netbootd.core import urls
from netbootd.imageref import parse_reference
from tests.conftest import Daemon, wait_for
from tests.images import harness as h
from tests.images.conftest import docker_config, registry_settings

pytestmark = pytest.mark.skipif(h.REGISTRY_BIN is None, reason="docker-registry not installed")


def q(image: str, version: str = "v1", **kw) -> dict:
    return {"imageName": image, "version": version, **kw}


@pytest.fixture(scope="module")
def daemon(registry, tmp_path_factory):
    """One netbootd for the tests that only read (each start costs seconds)."""
    reg, _ = registry
    d = Daemon(tmp_path_factory.mktemp("netbootd"), extra_settings=registry_settings(reg.host)).start()
    yield d
    d.stop()


def metric(d, line_start: str) -> float:
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(params=["sendfile", "buffered"])
def body_mode(request, monkeypatch):
    """Bodies go out with sendfile(2) (plain TCP), or through Twisted's buffers (the fallback)."""
    if request.param == "buffered":
        monkeypatch.setenv("NETBOOTD_NO_SENDFILE", "1")  # the daemon subprocess inherits it
    return request.param


def cached_files(d) -> list:
    blobs = d.root / "cache" / "blobs" / "sha256"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def tmp_files(d) -> list:
    tmp = d.root / "cache" / "blobs" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


# ---------------------------------------------------------------------- contracts


def test_seed_contract_layer_name(registry, daemon):
    reg, c = registry
    image = f"{reg.host}/boot/ironcore"
    for media, content in ((h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd), (h.SQUASHFS, c.squashfs)):
        r = httpx.get(daemon.url + "/image", params=q(image, layerName=media), timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == content
        assert r.headers["content-length"] == str(len(content))
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["etag"] == f'"{h.sha256(content)}"'
    assert {h.sha256(x)[7:] for x in (c.kernel, c.initrd, c.squashfs)} <= set(cached_files(daemon))


def test_layer_digest_contract_and_digest_version(registry, daemon):
    reg, c = registry
    image = f"{reg.host}/boot/ironcore"
    r = httpx.get(daemon.url + "/image", params=q(image, layerDigest=h.sha256(c.initrd)), timeout=30)
    assert r.status_code == 200 and r.content == c.initrd
    # version= a manifest digest: never split on ':'
    r = httpx.get(daemon.url + "/image", params=q(image, c.ironcore, layerName=h.KERNEL), timeout=30)
    assert r.status_code == 200 and r.content == c.kernel
    # or the digest in the name
    r = httpx.get(daemon.url + "/image", params={"imageName": f"{image}@{c.ironcore}", "layerName": h.KERNEL}, timeout=30)
    assert r.status_code == 200 and r.content == c.kernel


def test_urls_generated_by_the_core_work(registry, daemon):
    reg, c = registry
    for name, media, content in (("boot/ironcore:v1", urls.KERNEL_MEDIA, c.kernel),
                                 ("boot/legacy:v1", urls.INITRD_MEDIA, c.legacy_initrd),
                                 (f"boot/ironcore@{c.ironcore}", urls.SQUASHFS_MEDIA, c.squashfs),
                                 ("boot/uki:v1", urls.UKI_MEDIA, c.uki)):
        url = urls.image_layer_url(daemon.url, parse_reference(f"{reg.host}/{name}"), media)
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200, (url, r.text)
        assert r.content == content


def test_legacy_gardenlinux_layers_via_ironcore_names(registry, daemon):
    reg, c = registry
    image = f"{reg.host}/boot/legacy"
    for media, content in ((h.KERNEL, c.legacy_kernel), (h.INITRAMFS, c.legacy_initrd), (h.GL_SQUASHFS, c.legacy_squashfs)):
        r = httpx.get(daemon.url + "/image", params=q(image, layerName=media), timeout=30)
        assert r.status_code == 200 and r.content == content


def test_multi_arch_index_and_docker_list(registry, daemon_factory):
    reg, c = registry
    d = daemon_factory(extra_settings=registry_settings(reg.host) + 'architecture = "arm64"\n').start()
    for repo in ("boot/multi", "boot/dockerlist"):
        r = httpx.get(d.url + "/image", params=q(f"{reg.host}/{repo}", layerName=h.KERNEL), timeout=30)
        assert r.status_code == 200 and r.content == c.kernel_arm


def test_uki_httpboot_route(registry, daemon):
    reg, c = registry
    digest = h.sha256(c.uki)
    url = f"{daemon.url}/httpboot/{reg.host}/boot/uki/sha256-{digest[7:]}.efi"
    head = httpx.head(url, timeout=30)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(c.uki))
    assert head.headers["content-type"] == "application/efi"
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content == c.uki and r.headers["content-type"] == "application/efi"
    # warm: the same from the cache
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content == c.uki and r.headers["content-type"] == "application/efi"
    # /image with the UKI type is application/efi too
    r = httpx.get(daemon.url + "/image", params=q(f"{reg.host}/boot/uki", layerName=h.UKI), timeout=30)
    assert r.headers["content-type"] == "application/efi" and r.content == c.uki
    # the /httpboot JSON route is still there
    assert httpx.get(daemon.url + "/httpboot", timeout=10).status_code in (200, 500)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"version": "v1", "layerName": h.KERNEL}, 400, "imageName"),
        ({"imageName": "IMAGE/Bad", "version": "v1", "layerName": h.KERNEL}, 400, "invalid"),
        ({"imageName": "{host}/boot/ironcore", "version": "v1"}, 400, "exactly one of layerName"),
        ({"imageName": "{host}/boot/ironcore", "version": "v1", "layerDigest": "sha256:xyz"}, 400, "layerDigest"),
        ({"imageName": "{host}/boot/ironcore", "version": "not a tag", "layerName": h.KERNEL}, 400, "version"),
        ({"imageName": "ghcr.io/org/img", "version": "v1", "layerName": h.KERNEL}, 403, "'ghcr.io' is not allowed"),
        ({"imageName": "ubuntu", "version": "v1", "layerName": h.KERNEL}, 403, "'docker.io' is not allowed"),
        ({"imageName": "{host}/boot/ironcore", "version": "nope", "layerName": h.KERNEL}, 404, "not found"),
        ({"imageName": "{host}/boot/absent", "version": "v1", "layerName": h.KERNEL}, 404, "not found"),
        ({"imageName": "{host}/boot/nosquash", "version": "v1", "layerName": h.SQUASHFS}, 404, "no layer of type"),
        ({"imageName": "{host}/boot/ironcore", "version": "v1", "layerDigest": "sha256:" + "1" * 64}, 404, "no layer"),
        ({"imageName": "{host}/boot/armonly", "version": "v1", "layerName": h.KERNEL}, 404, "architecture"),
    ],
)
def test_errors(registry, daemon, params, status, needle):
    reg, _ = registry
    params = {k: v.replace("{host}", reg.host) for k, v in params.items()}
    r = httpx.get(daemon.url + "/image", params=params, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert r.text.count("\n") == 1  # one line
    if status == 403:
        assert f"allowed registries: {reg.host}" in r.text


def test_upstream_down_is_502(registry, daemon_factory):
    d = daemon_factory(extra_settings=registry_settings("127.0.0.1:9")).start()
    r = httpx.get(d.url + "/image", params=q("127.0.0.1:9/boot/x", layerName=h.KERNEL), timeout=30)
    assert r.status_code == 502 and "unreachable" in r.text


def test_httpboot_errors(registry, daemon):
    reg, _c = registry
    assert httpx.get(f"{daemon.url}/httpboot/{reg.host}/boot/uki/uki.efi", timeout=10).status_code == 400
    assert httpx.get(f"{daemon.url}/httpboot/ghcr.io/a/b/sha256-{'a' * 64}.efi", timeout=10).status_code == 403
    r = httpx.get(f"{daemon.url}/httpboot/{reg.host}/boot/uki/sha256-{'a' * 64}.efi", timeout=10)
    assert r.status_code == 404


# ---------------------------------------------------------------------- HEAD, Range, conditional


def test_head_fetches_nothing(registry, daemon):
    reg, c = registry
    digest = h.sha256(c.squashfs)
    before = reg.blob_gets(digest)
    r = httpx.head(daemon.url + "/image", params=q(f"{reg.host}/boot/ironcore", layerName=h.SQUASHFS), timeout=30)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(c.squashfs))
    assert r.headers["accept-ranges"] == "bytes"
    assert reg.blob_gets(digest) == before


@pytest.mark.parametrize("warm", [False, True])
def test_single_range(registry, daemon, warm):
    reg, c = registry
    params = q(f"{reg.host}/boot/ironcore", layerName=h.SQUASHFS)
    if warm:
        httpx.get(daemon.url + "/image", params=params, timeout=30)
    r = httpx.get(daemon.url + "/image", params=params, headers={"range": "bytes=1000-1999"}, timeout=30)
    assert r.status_code == 206 and r.content == c.squashfs[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(c.squashfs)}"
    assert r.headers["content-length"] == "1000"
    r = httpx.get(daemon.url + "/image", params=params, headers={"range": "bytes=-10"}, timeout=30)
    assert r.status_code == 206 and r.content == c.squashfs[-10:]
    r = httpx.get(daemon.url + "/image", params=params, headers={"range": f"bytes={len(c.squashfs)}-"}, timeout=30)
    assert r.status_code == 416


def test_curl_resume(registry, daemon, tmp_path):
    reg, c = registry
    url = urls.image_layer_url(daemon.url, parse_reference(f"{reg.host}/boot/ironcore:v1"), h.INITRAMFS)
    out = tmp_path / "initrd"
    out.write_bytes(c.initrd[:12345])
    subprocess.run(["curl", "-sfS", "-C", "-", "-o", str(out), url], check=True, timeout=60)
    assert out.read_bytes() == c.initrd


def test_if_none_match(registry, daemon):
    reg, _c = registry
    params = q(f"{reg.host}/boot/ironcore", layerName=h.KERNEL)
    r = httpx.get(daemon.url + "/image", params=params, timeout=30)
    r2 = httpx.get(daemon.url + "/image", params=params, headers={"if-none-match": r.headers["etag"]}, timeout=30)
    assert r2.status_code == 304 and r2.content == b""


# ---------------------------------------------------------------------- cache


def test_warm_hits_served_from_disk_without_upstream(registry, daemon):
    reg, c = registry
    digest = h.sha256(c.initrd)
    params = q(f"{reg.host}/boot/nosquash", layerName=h.INITRAMFS)
    assert httpx.get(daemon.url + "/image", params=params, timeout=30).content == c.initrd
    before = reg.blob_gets(digest)
    hits = metric(daemon, 'netbootd_image_cache_requests_total{result="hit"}')
    for _ in range(3):
        r = httpx.get(daemon.url + "/image", params=params, timeout=30)
        assert r.content == c.initrd
    assert reg.blob_gets(digest) == before
    assert metric(daemon, 'netbootd_image_cache_requests_total{result="hit"}') == hits + 3
    assert metric(daemon, "netbootd_image_cache_bytes") >= len(c.initrd)


def test_cache_survives_restart(fresh_registry, daemon_factory, body_mode):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(700_000)
    push.image("boot/r", "v1", [(h.KERNEL, blob)])
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host)).start()
    url = d.url + "/image"
    params = q(f"{fresh_registry.host}/boot/r", layerName=h.KERNEL)
    assert httpx.get(url, params=params, timeout=30).content == blob
    d.stop()
    d.start()
    assert httpx.get(url, params=params, timeout=30).content == blob
    assert fresh_registry.blob_gets(h.sha256(blob), at_least=1) == 1


def test_lru_eviction_under_the_cap(fresh_registry, daemon_factory):
    push = h.Pusher(fresh_registry.url)
    blobs = [os.urandom(400_000) for _ in range(3)]
    push.image("boot/lru", "v1", [(h.KERNEL, blobs[0]), (h.INITRAMFS, blobs[1]), (h.SQUASHFS, blobs[2])])
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host, cache_max_bytes=900_000)).start()
    get = lambda media: httpx.get(d.url + "/image", params=q(f"{fresh_registry.host}/boot/lru", layerName=media), timeout=30)  # noqa: E731
    assert get(h.KERNEL).content == blobs[0]
    assert get(h.INITRAMFS).content == blobs[1]
    time.sleep(0.01)
    assert get(h.KERNEL).content == blobs[0]  # kernel is now the most recently used
    assert get(h.SQUASHFS).content == blobs[2]  # evicts the initramfs, not the kernel
    assert cached_files(d) == sorted(h.sha256(b)[7:] for b in (blobs[0], blobs[2]))
    # a blob bigger than the whole cache is served pass-through, not cached
    big = os.urandom(1_000_000)
    push.image("boot/big", "v1", [(h.KERNEL, big)])
    r = httpx.get(d.url + "/image", params=q(f"{fresh_registry.host}/boot/big", layerName=h.KERNEL), timeout=30)
    assert r.content == big and r.headers["content-length"] == str(len(big))
    assert h.sha256(big)[7:] not in cached_files(d)
    assert tmp_files(d) == []


def test_twenty_concurrent_clients_one_upstream_get(fresh_registry, daemon_factory, body_mode):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(24 * 1024 * 1024)
    push.image("boot/storm", "v1", [(h.SQUASHFS, blob)])
    digest = h.sha256(blob)
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host)).start()
    url = d.url + "/image"
    params = q(f"{fresh_registry.host}/boot/storm", layerName=h.SQUASHFS)

    def fetch(i: int) -> str:
        h_ = hashlib.sha256()
        with httpx.stream("GET", url, params=params, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(len(blob))
            for chunk in r.iter_bytes():
                h_.update(chunk)
        return "sha256:" + h_.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        digests = list(pool.map(fetch, range(20)))
    assert digests == [digest] * 20
    assert fresh_registry.blob_gets(digest, at_least=1) == 1, fresh_registry.access("GET", "/blobs/")
    assert len(fresh_registry.access("GET", "/boot/storm/manifests/v1")) == 1  # one resolution for all 20
    metrics = httpx.get(d.url + "/metrics", timeout=10).text
    assert 'netbootd_image_upstream_fetches_total{result="ok"} 1.0' in metrics


def test_registry_killed_mid_stream(fresh_registry, daemon_factory, body_mode):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(64 * 1024 * 1024)
    push.image("boot/kill", "v1", [(h.SQUASHFS, blob)])
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host)).start()
    params = q(f"{fresh_registry.host}/boot/kill", layerName=h.SQUASHFS)
    received = 0
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", d.url + "/image", params=params, timeout=60) as r:
        assert r.headers["content-length"] == str(len(blob))
        for chunk in r.iter_bytes():
            if received == 0:
                fresh_registry.kill()  # mid-stream: the client has bytes, the registry is gone
            received += len(chunk)
            time.sleep(0.001)
    assert received < len(blob)
    wait_for(lambda: tmp_files(d) == [], timeout=10)
    assert cached_files(d) == []
    fresh_registry.start()
    r = httpx.get(d.url + "/image", params=params, timeout=60)
    assert r.status_code == 200 and len(r.content) == len(blob) and r.content == blob
    assert cached_files(d) == [h.sha256(blob)[7:]]


def test_corrupted_blob_is_detected(fresh_registry, daemon_factory, body_mode):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(3 * 1024 * 1024)
    push.image("boot/bad", "v1", [(h.KERNEL, blob)])
    data = fresh_registry.blob_file(h.sha256(blob))
    corrupted = bytearray(data.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    data.write_bytes(bytes(corrupted))
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host)).start()
    url = urls.image_layer_url(d.url, parse_reference(f"{fresh_registry.host}/boot/bad:v1"), h.KERNEL)
    with pytest.raises(httpx.HTTPError):  # never a complete response
        httpx.get(url, timeout=30)
    result = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url], capture_output=True, timeout=60)
    assert result.returncode != 0 and int(result.stdout or 0) < len(blob)
    assert cached_files(d) == [] and tmp_files(d) == []
    metrics = httpx.get(d.url + "/metrics", timeout=10).text
    assert 'netbootd_image_verification_failures_total{kind="blob"} 2.0' in metrics
    assert "failed verification" in d.log()


# ---------------------------------------------------------------------- auth fronts


def test_through_basic_auth(basic_registry, registry, daemon_factory, tmp_path):
    _, c = registry
    cfg = tmp_path / "auth.json"
    docker_config(cfg, basic_registry.host, basic_registry.username, basic_registry.password)
    d = daemon_factory(extra_settings=registry_settings(basic_registry.host) + f'auth_file = "{cfg}"\n').start()
    r = httpx.get(d.url + "/image", params=q(f"{basic_registry.host}/boot/ironcore", layerName=h.KERNEL), timeout=30)
    assert r.status_code == 200 and r.content == c.kernel
    # without credentials: 502 naming the problem
    d2 = daemon_factory(extra_settings=registry_settings(basic_registry.host)).start()
    r = httpx.get(d2.url + "/image", params=q(f"{basic_registry.host}/boot/ironcore", layerName=h.KERNEL), timeout=30)
    assert r.status_code == 502 and "username and password" in r.text


def test_through_token_realm(token_realm, registry, daemon_factory):
    reg, tokens = token_realm
    _, c = registry
    d = daemon_factory(extra_settings=registry_settings(reg.host)).start()
    before = len(tokens.issued)
    for media, content in ((h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd)):
        r = httpx.get(d.url + "/image", params=q(f"{reg.host}/boot/ironcore", layerName=media), timeout=30)
        assert r.status_code == 200 and r.content == content
    assert len(tokens.issued) == before + 1  # one anonymous pull token, reused for the manifest and both blobs


def test_redirect_to_blob_storage_drops_authorization(registry, daemon_factory, tmp_path):
    reg, c = registry
    front = h.RedirectingFront(reg.url).start()
    try:
        cfg = tmp_path / "auth.json"
        docker_config(cfg, front.host, front.username, front.password)
        d = daemon_factory(extra_settings=registry_settings(front.host) + f'auth_file = "{cfg}"\n').start()
        r = httpx.get(d.url + "/image", params=q(f"{front.host}/boot/ironcore", layerName=h.SQUASHFS), timeout=30)
        assert r.status_code == 200 and r.content == c.squashfs
        blob_gets = [auth for path, auth in front.front_seen if "/blobs/" in path]
        assert blob_gets and all(a and a.startswith("Basic ") for a in blob_gets)  # the registry got credentials
        assert front.cdn_seen and all(auth is None for _, auth in front.cdn_seen)  # the CDN never did
    finally:
        front.stop()


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("mode", ["passthrough", "cached"])
def test_slow_client_memory_stays_flat(fresh_registry, daemon_factory, body_mode, mode):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(160 * 1024 * 1024)
    push.image("boot/slow", "v1", [(h.SQUASHFS, blob)])
    cap = 1000 if mode == "passthrough" else None  # a cap smaller than the blob: served pass-through
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host, cache_max_bytes=cap)).start()
    params = q(f"{fresh_registry.host}/boot/slow", layerName=h.SQUASHFS)
    httpx.head(d.url + "/image", params=params, timeout=30)
    assert d.proc is not None
    base = _rss(d.proc.pid)
    hasher = hashlib.sha256()
    with httpx.stream("GET", d.url + "/image", params=params, timeout=60) as r:
        chunks = r.iter_raw(64 * 1024)
        hasher.update(next(chunks))
        # The client stalls. Pass-through: the upstream must be paused (nothing piles up in memory).
        # Cached: the fetch goes on to the disk at full speed, not into memory.
        peak = 0
        deadline = time.monotonic() + (3 if mode == "passthrough" else 30)
        while time.monotonic() < deadline:
            peak = max(peak, _rss(d.proc.pid) - base)
            if mode == "cached" and cached_files(d):
                break
            time.sleep(0.05)
        if mode == "cached":
            assert cached_files(d) == [h.sha256(blob)[7:]]  # fetched and verified while the client stalled
        assert peak < 48 * 1024 * 1024, f"RSS grew {peak / 2**20:.0f} MiB while the client stalled"
        for chunk in chunks:
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == h.sha256(blob)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_cache_disk_full_serves_pass_through(fresh_registry, daemon_factory):
    push = h.Pusher(fresh_registry.url)
    blob = os.urandom(6 * 1024 * 1024)
    push.image("boot/full", "v1", [(h.KERNEL, blob)])
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host))
    cache = d.root / "cache"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "netbootd-test", str(cache)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        d.start()
        r = httpx.get(d.url + "/image", params=q(f"{fresh_registry.host}/boot/full", layerName=h.KERNEL), timeout=30)
        assert r.status_code == 200 and r.content == blob
        assert cached_files(d) == [] and tmp_files(d) == []
        assert "cache disk full" in d.log()
        d.stop()
    finally:
        subprocess.run(["umount", str(cache)], check=False)


@pytest.mark.registry
def test_https_registry(daemon_factory, tmp_path, monkeypatch):
    """A registry not listed as insecure is spoken to over TLS, verified against the system trust
    (here a test CA given through SSL_CERT_FILE, which httpx and Twisted's Agent both honour)."""
    pytest.importorskip("cryptography", reason="makes the test CA (twisted[tls])")
    pytest.importorskip("OpenSSL", reason="Twisted's Agent needs pyOpenSSL for https (twisted[tls])")
    cert, key = h.make_tls(tmp_path / "tls")
    reg = h.Registry(tmp_path / "tls-registry", tls=(cert, key)).start()
    try:
        push = h.Pusher(reg.url, verify=reg.verify)
        blob = os.urandom(2 * 1024 * 1024)
        push.image("boot/tls", "v1", [(h.KERNEL, blob)])
        extra = f'[registry]\nallowed = ["{reg.host}"]\n'
        params = q(f"{reg.host}/boot/tls", layerName=h.KERNEL)
        untrusted = daemon_factory(extra_settings=extra).start()
        r = httpx.get(untrusted.url + "/image", params=params, timeout=30)
        assert r.status_code == 502, r.text  # not trusted: refused, never plain HTTP
        monkeypatch.setenv("SSL_CERT_FILE", str(h.tls_ca_for(cert)))
        d = daemon_factory(extra_settings=extra).start()
        r = httpx.get(d.url + "/image", params=params, timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == blob
        assert reg.blob_gets(h.sha256(blob), at_least=1) == 1
    finally:
        reg.stop()


def test_keep_alive_after_sendfile_bodies_and_http10(registry, daemon, tmp_path):
    reg, c = registry
    params = q(f"{reg.host}/boot/ironcore", layerName=h.SQUASHFS)
    with httpx.Client(timeout=30) as client:  # one connection for all of these
        for _ in range(3):
            r = client.get(daemon.url + "/image", params=params)
            assert r.status_code == 200 and r.content == c.squashfs
        assert client.get(daemon.url + "/healthz").status_code == 200
        r = client.get(daemon.url + "/image", params=params, headers={"range": "bytes=0-9"})
        assert r.status_code == 206 and r.content == c.squashfs[:10]
        assert client.get(daemon.url + "/image", params=params).content == c.squashfs
    out = tmp_path / "sq"
    url = urls.image_layer_url(daemon.url, parse_reference(f"{reg.host}/boot/ironcore:v1"), h.SQUASHFS)
    subprocess.run(["curl", "-sfS", "--http1.0", "-o", str(out), url], check=True, timeout=60)
    assert out.read_bytes() == c.squashfs


def test_one_multi_arch_image_serves_each_machine_its_own_layers(registry, daemon_factory):
    """arch= picks the manifest of a multi-arch index; the scripts netbootd writes ask with the
    machine's architecture (from its firmware), so x86 and arm64 machines of one profile each get
    their own kernel."""
    reg, c = registry
    d = daemon_factory(extra_settings=registry_settings(reg.host))
    image = f"{reg.host}/boot/multi:v1"
    (d.machines / "default.toml").write_text(f'[boot]\nimage = "{image}"\ncmdline = "console=ttyS0"\n')
    d.start()
    for arch, kernel in (("efi64", c.kernel), ("arm64", c.kernel_arm)):
        script = d.get(f"/ipxe?mac=52-54-00-00-00-31&arch={arch}").text
        url = next(w for w in script.split() if "layerName=application%2Fvnd.ironcore.image.kernel" in w)
        assert f"&arch={'amd64' if arch == 'efi64' else 'arm64'}" in url, url
        assert httpx.get(url.replace("http://127.0.0.1", d.url.rsplit(":", 1)[0]), timeout=30).content == kernel
    r = httpx.get(d.url + "/image", params=q(f"{reg.host}/boot/armonly", layerName=h.KERNEL), timeout=30)
    assert r.status_code == 404 and "no manifest for architecture 'amd64'" in r.text
    r = httpx.get(d.url + "/image", params={**q(f"{reg.host}/boot/armonly", layerName=h.KERNEL), "arch": "arm64"},
                  timeout=30)
    assert r.status_code == 200 and r.content == c.kernel_arm
    assert httpx.get(d.url + "/image", params={**q(image, layerName=h.KERNEL), "arch": "x y"}).status_code == 400
