"""Registries for the image tests: one open registry with a catalog of boot images pushed through
the registry API, and the same storage served behind htpasswd basic auth and behind a bearer-token
realm. Tests that kill or corrupt a registry get their own (`fresh_registry`)."""

from __future__ import annotations

import os
import textwrap
from types import SimpleNamespace

import pytest

from tests.images import harness as h


def _catalog(push: h.Pusher) -> SimpleNamespace:
    c = SimpleNamespace()
    c.kernel, c.initrd, c.squashfs = os.urandom(300_000), os.urandom(200_000), os.urandom(1_500_000)
    c.uki = b"MZ" + os.urandom(400_000)
    c.kernel_arm = os.urandom(123_456)
    c.legacy_kernel, c.legacy_initrd, c.legacy_squashfs = os.urandom(50_000), os.urandom(40_000), os.urandom(60_000)
    c.ironcore = push.image("boot/ironcore", "v1", [(h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd), (h.SQUASHFS, c.squashfs)])
    c.legacy = push.image("boot/legacy", "v1", [(h.GL_KERNEL, c.legacy_kernel), (h.GL_INITRD, c.legacy_initrd),
                                                (h.GL_SQUASHFS, c.legacy_squashfs)])
    c.nosquash = push.image("boot/nosquash", "v1", [(h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd)])
    c.ukiimg = push.image("boot/uki", "v1", [(h.UKI, c.uki)])
    amd = push.image("boot/multi", None, [(h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd)])
    arm = push.image("boot/multi", None, [(h.KERNEL, c.kernel_arm), (h.INITRAMFS, c.initrd)], arch="arm64")
    c.multi_amd64, c.multi_arm64 = amd, arm
    c.multi = push.index("boot/multi", "v1", {"arm64": arm, "amd64": amd})
    damd = push.image("boot/dockerlist", None, [(h.KERNEL, c.kernel), (h.INITRAMFS, c.initrd)], docker=True)
    darm = push.image("boot/dockerlist", None, [(h.KERNEL, c.kernel_arm)], docker=True, arch="arm64")
    c.dockerlist_amd64 = damd
    c.dockerlist = push.index("boot/dockerlist", "v1", {"arm64": darm, "amd64": damd}, docker=True)
    c.armonly = push.index("boot/armonly", "v1", {"arm64": push.image("boot/armonly", None, [(h.KERNEL, c.kernel_arm)])})
    return c


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The open registry (anonymous pull and push) with the catalog pushed: (Registry, catalog)."""
    root = tmp_path_factory.mktemp("registry")
    reg = h.Registry(root / "open").start()
    push = h.Pusher(reg.url)
    try:
        catalog = _catalog(push)
    finally:
        push.close()
    yield reg, catalog
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(registry, tmp_path_factory):
    """The same storage behind htpasswd basic auth."""
    reg = h.Registry(tmp_path_factory.mktemp("basic"), storage=registry[0].storage, auth="basic").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_realm(registry, tmp_path_factory):
    """The same storage behind a bearer-token realm; anonymous pull tokens for boot/ironcore only,
    everything else needs the token server's basic credentials: (Registry, TokenServer)."""
    pytest.importorskip("cryptography", reason="the token server signs JWTs with cryptography (twisted[tls])")
    root = tmp_path_factory.mktemp("token")
    tokens = h.TokenServer(root, expires_in=300, anonymous_repos=("boot/ironcore",)).start()
    reg = h.Registry(root, storage=registry[0].storage, auth="token", token_realm=tokens.realm,
                     token_cert=tokens.cert_path).start()
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture
def fresh_registry(tmp_path):
    """A registry of the test's own (to kill, restart or corrupt)."""
    reg = h.Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()


def docker_config(path, registry_host: str, username: str, password: str) -> None:
    import base64
    import json

    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"http://{registry_host}": {"auth": auth}}}))


def registry_settings(*hosts: str, extra: str = "", cache_max_bytes: int | None = None) -> str:
    """The [registry] table of netbootd.toml for loopback registries."""
    listed = ", ".join(f'"{x}"' for x in hosts)
    out = f"[registry]\nallowed = [{listed}]\ninsecure = [{listed}]\n"
    if cache_max_bytes is not None:
        out += f"cache_max_bytes = {cache_max_bytes}\n"
    return out + textwrap.dedent(extra)
