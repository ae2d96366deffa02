"""The shared in-memory copy of hot TFTP files (netbootd/tftp/content.py)."""

from __future__ import annotations

import os

import pytest_twisted

from netbootd.tftp.content import SharedContent
from tests.tftp.conftest import curl_argv, run, sha256


def test_one_copy_per_file_version(tmp_path):
    shared = SharedContent()
    f = tmp_path / "ipxe.efi"
    f.write_bytes(os.urandom(200_000))
    with open(f, "rb") as a, open(f, "rb") as b:
        first, second = shared.get(a), shared.get(b)
    assert first == f.read_bytes() and second is first  # the same bytes object for every session
    # rewritten in place (new size and mtime): read afresh, never the stale copy
    f.write_bytes(b"new" * 1000)
    os.utime(f, ns=(1, 1))
    with open(f, "rb") as c:
        assert shared.get(c) == b"new" * 1000
    # replaced by rename (new inode)
    tmp = tmp_path / "tmp"
    tmp.write_bytes(b"renamed")
    tmp.replace(f)
    with open(f, "rb") as d:
        assert shared.get(d) == b"renamed"


def test_large_files_and_non_files_are_not_held(tmp_path):
    shared = SharedContent(max_bytes=1000, max_file=600)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 601)
    with open(big, "rb") as f:
        assert shared.get(f) is None
    with open("/dev/zero", "rb") as f:
        assert shared.get(f) is None
    r, w = os.pipe()
    with os.fdopen(r, "rb") as f:
        assert shared.get(f) is None
    os.close(w)
    # bounded by bytes: least recently used goes first
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode() * 400)
        with open(tmp_path / name, "rb") as f:
            assert shared.get(f) == name.encode() * 400
    assert shared.bytes <= 1000 and len(shared._files) == 2


@pytest_twisted.ensureDeferred
async def test_server_serves_from_one_copy_and_sees_edits(server, tftp_root, tmp_path):
    f = tftp_root / "hot.efi"
    f.write_bytes(os.urandom(150_000))
    results = [await run(curl_argv(server.port, "hot.efi", tmp_path / f"o{i}", blksize=1468)) for i in range(3)]
    assert all(r.code == 0 for r in results), results
    assert all(sha256(tmp_path / f"o{i}") == sha256(f) for i in range(3))
    assert len(server.server.shared._files) == 1
    f.write_bytes(os.urandom(150_001))  # an operator installs a new binary
    result = await run(curl_argv(server.port, "hot.efi", tmp_path / "new"))
    assert result.code == 0 and sha256(tmp_path / "new") == sha256(f)


def test_packets_are_built_once_per_blksize_and_follow_the_file(tmp_path):
    """Every session asking for the same file and blksize sends the very same DATA packets; a
    rewritten file gets new ones, never the old version's."""
    from netbootd.tftp import codec

    shared = SharedContent()
    f = tmp_path / "ipxe.efi"
    data = os.urandom(3 * 1468 + 100)
    f.write_bytes(data)
    with open(f, "rb") as a, open(f, "rb") as b:
        first, second = shared.packets(a, 1468), shared.packets(b, 1468)
        other = shared.packets(a, 512)
    assert second is first and other is not first
    assert first == [codec.encode_data(n + 1, data[n * 1468 : (n + 1) * 1468]) for n in range(4)]
    assert len(other) == len(data) // 512 + 1 and b"".join(p[4:] for p in other) == data
    f.write_bytes(b"x" * 1468)  # a multiple of blksize: an empty last block ends it
    os.utime(f, ns=(1, 1))
    with open(f, "rb") as c:
        assert shared.packets(c, 1468) == [codec.encode_data(1, b"x" * 1468), codec.encode_data(2, b"")]
    # the packets count against the same bound as the content
    assert shared.bytes == sum(e.size for e in shared._files.values())


def test_tiny_blocks_are_not_prebuilt(tmp_path):
    shared = SharedContent()
    f = tmp_path / "big"
    f.write_bytes(b"y" * 300_000)
    with open(f, "rb") as a:
        assert shared.packets(a, 8) is None  # 37501 packets: sliced per session instead
        assert shared.get(a) == b"y" * 300_000
