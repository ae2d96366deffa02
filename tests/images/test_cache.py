"""The blob cache on a real directory: start-up scan, LRU order across restarts, the cap,
verified commits and discarded mismatches (writer threads on the running reactor)."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from netbootd.images.cache import BlobCache
from netbootd.images.oci import VerificationFailed


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(root, data: bytes, mtime: float) -> str:
    d = digest_of(data)
    path = root / "sha256" / d[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return d


def test_startup_scan_and_lru_order_survive_restart(tmp_path):
    root = tmp_path / "blobs"
    a, b, c = (put(root, bytes([i]) * 1000, 1000.0 + i) for i in range(3))
    (root / "tmp").mkdir()
    (root / "tmp" / "leftover.partial").write_bytes(b"x" * 10)
    (root / "sha256" / "not-a-digest").write_bytes(b"junk")
    cache = BlobCache(root, max_bytes=3000, clock=lambda: 5000.0)
    assert set(cache.entries) == {a, b, c} and cache.total == 3000
    assert list((root / "tmp").iterdir()) == []  # an interrupted fetch is never trusted
    assert cache.lookup(a) is not None  # a is now the most recently used (mtime set)
    restarted = BlobCache(root, max_bytes=3000)
    writer = restarted.begin("sha256:" + "f" * 64, 1500)  # needs room: b and c go (oldest first), a stays
    assert writer is not None
    assert set(restarted.entries) == {a}
    writer.discard()
    assert restarted.reserved == 0


def test_blob_larger_than_cap_is_not_cached(tmp_path):
    cache = BlobCache(tmp_path / "blobs", max_bytes=100)
    assert cache.begin("sha256:" + "a" * 64, 101) is None


def test_over_cap_at_start_is_trimmed(tmp_path):
    root = tmp_path / "blobs"
    old = put(root, b"o" * 600, 1000.0)
    new = put(root, b"n" * 600, 2000.0)
    cache = BlobCache(root, max_bytes=1000)
    assert set(cache.entries) == {new} and not (root / "sha256" / old[7:]).exists()


def test_unusable_cache_dir_means_pass_through(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = BlobCache(blocker / "blobs", max_bytes=1000)
    assert not cache.usable and cache.begin("sha256:" + "a" * 64, 10) is None


async def write_all(cache: BlobCache, digest: str, chunks: list[bytes], size: int):
    writer = cache.begin(digest, size)
    assert writer is not None
    done: defer.Deferred = defer.Deferred()
    writer.on_done = lambda hexdigest, exc: done.callback((hexdigest, exc))
    writer.start(reactor)
    for chunk in chunks:
        writer.write(chunk)
    writer.finish()
    hexdigest, exc = await done
    assert exc is None
    return writer, hexdigest


@pytest_twisted.ensureDeferred
async def test_verified_commit(tmp_path):
    cache = BlobCache(tmp_path / "blobs", max_bytes=10 * 2**20)
    data = os.urandom(3 * 2**20 + 17)
    digest = digest_of(data)
    writer, hexdigest = await write_all(cache, digest, [data[i:i + 65536] for i in range(0, len(data), 65536)], len(data))
    path = writer.commit(hexdigest)
    assert path.read_bytes() == data and cache.lookup(digest) == path
    assert cache.total == len(data) and cache.reserved == 0
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_mismatch_is_discarded(tmp_path):
    cache = BlobCache(tmp_path / "blobs", max_bytes=10 * 2**20)
    data = os.urandom(100_000)
    digest = digest_of(data)
    bad = bytearray(data)
    bad[500] ^= 1
    writer, hexdigest = await write_all(cache, digest, [bytes(bad)], len(data))
    with pytest.raises(VerificationFailed, match="content has digest"):
        writer.commit(hexdigest)
    assert cache.lookup(digest) is None and cache.reserved == 0
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == [] and list((tmp_path / "blobs" / "sha256").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_short_or_long_blob_rejected(tmp_path):
    cache = BlobCache(tmp_path / "blobs", max_bytes=10 * 2**20)
    data = os.urandom(1000)
    writer, hexdigest = await write_all(cache, digest_of(data), [data[:999]], 1000)
    with pytest.raises(VerificationFailed, match="got 999 bytes"):
        writer.commit(hexdigest)
    writer = cache.begin(digest_of(data), 1000)
    assert writer is not None
    writer.start(reactor)
    with pytest.raises(VerificationFailed, match="more than the 1000 bytes"):
        writer.write(data + b"x")
    writer.discard()
    assert cache.reserved == 0
