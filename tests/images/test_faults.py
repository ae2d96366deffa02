"""Registry faults (issue 8): a registry that goes away or hangs gives clear 502/504 answers, and
machines whose layers are already cached keep booting from the cache."""

from __future__ import annotations

import os
import socket
import threading

import httpx
import pytest

from tests.images import harness as h
from tests.images.conftest import registry_settings

pytestmark = pytest.mark.skipif(h.REGISTRY_BIN is None, reason="docker-registry not installed")


def q(image: str, **kw) -> dict:
    return {"imageName": image, "version": "v1", **kw}


def test_cached_machines_keep_booting_when_the_registry_is_down(fresh_registry, daemon_factory):
    push = h.Pusher(fresh_registry.url)
    kernel, initrd = os.urandom(600_000), os.urandom(400_000)
    push.image("boot/os", "v1", [(h.KERNEL, kernel), (h.INITRAMFS, initrd)])
    push.image("boot/other", "v1", [(h.KERNEL, os.urandom(1000)), (h.INITRAMFS, os.urandom(1000))])
    push.close()
    d = daemon_factory(extra_settings=registry_settings(fresh_registry.host)).start()
    image = f"{fresh_registry.host}/boot/os"
    assert httpx.get(d.url + "/image", params=q(image, layerName=h.KERNEL), timeout=30).content == kernel
    assert httpx.get(d.url + "/image", params=q(image, layerName=h.INITRAMFS), timeout=30).content == initrd

    fresh_registry.stop()
    # the cached machine still gets its bytes (last known resolution + verified blob cache)
    assert httpx.get(d.url + "/image", params=q(image, layerName=h.KERNEL), timeout=30).content == kernel
    assert httpx.get(d.url + "/image", params=q(image, layerName=h.INITRAMFS), timeout=30).content == initrd
    # a machine whose image was never fetched gets a clear 502
    r = httpx.get(d.url + "/image", params=q(f"{fresh_registry.host}/boot/other", layerName=h.KERNEL), timeout=30)
    assert r.status_code == 502 and r.text.count("\n") == 1, r.text
    assert d.get("/healthz").status_code == 200


@pytest.fixture
def silent_registry():
    """A TCP server that accepts and never answers: a hung registry."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def test_slow_registry_is_504(silent_registry, daemon_factory):
    # the registry client's read timeout (30 s) decides when a hung registry becomes a 504
    d = daemon_factory(extra_settings=registry_settings(silent_registry)).start()
    r = httpx.get(d.url + "/image", params=q(f"{silent_registry}/boot/x", layerName=h.KERNEL), timeout=120)
    assert r.status_code == 504, r.text
    assert "timed out" in r.text.lower() or "timeout" in r.text.lower()
