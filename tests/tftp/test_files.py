"""What a TFTP name may resolve to: the traversal list, directly and over the wire."""

from __future__ import annotations

import os
import stat

import pytest
import pytest_twisted

from netbootd.core.files import AccessDenied, FileNotFound
from netbootd.tftp import codec
from netbootd.tftp.files import TftpFiles
from tests.tftp.conftest import curl_argv, hpa_argv, make_settings, run, sha256


@pytest.fixture
def hostile_root(tftp_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (tftp_root / "sub").mkdir()
    (tftp_root / "sub" / "ok.txt").write_bytes(b"ok")
    os.symlink("/etc/passwd", tftp_root / "passwd-link")
    os.symlink(outside, tftp_root / "outside-dir")
    os.symlink(outside / "secret", tftp_root / "secret-link")
    os.symlink("sub/ok.txt", tftp_root / "inside-link")
    os.symlink("../root/sub/ok.txt", tftp_root / "dotdot-inside-link")
    os.mkfifo(tftp_root / "fifo")
    os.mknod(tftp_root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("/dev/zero", tftp_root / "zero-link")
    return tftp_root


DENIED = [
    "../outside/secret",
    "/../outside/secret",
    "sub/../../outside/secret",
    "..",
    "sub/..",
    "..\\outside\\secret",
    "sub\\ok.txt",
    "a\x00b",
    "passwd-link",
    "outside-dir/secret",
    "secret-link",
    "fifo",
    "null",
    "zero-link",
    "sub",
    "/sub/",
    "52-54-00-12-34-56",
]
NOT_FOUND = ["", "/", "//", "nope", "/etc/passwd", "etc/passwd", "sub/nope", "outside/secret", "./"]


@pytest.mark.parametrize("name", DENIED)
def test_denied(hostile_root, ipxe_dir, name):
    files = TftpFiles(make_settings(hostile_root, ipxe_dir))
    with pytest.raises(AccessDenied):
        files.open_tftp(name, "127.0.0.1")


@pytest.mark.parametrize("name", NOT_FOUND)
def test_not_found(hostile_root, ipxe_dir, name):
    files = TftpFiles(make_settings(hostile_root, ipxe_dir))
    with pytest.raises(FileNotFound):
        files.open_tftp(name, "127.0.0.1")


@pytest.mark.parametrize("name", ["sub/ok.txt", "/sub/ok.txt", "//sub/./ok.txt", "inside-link", "dotdot-inside-link"])
def test_allowed(hostile_root, ipxe_dir, name):
    files = TftpFiles(make_settings(hostile_root, ipxe_dir))
    with files.open_tftp(name, "127.0.0.1") as f:
        assert f.read() == b"ok"


def test_ipxe_names_come_from_ipxe_dir_only(tftp_root, ipxe_dir):
    (tftp_root / "undionly.kpxe").write_bytes(b"not the real one")
    files = TftpFiles(make_settings(tftp_root, ipxe_dir))
    with files.open_tftp("/undionly.kpxe", "10.0.0.5") as f:
        assert f.read() == (ipxe_dir / "undionly.kpxe").read_bytes()
    # no root configured: only the iPXE binaries are served
    files = TftpFiles(make_settings(None, ipxe_dir))
    with files.open_tftp("snponly.efi", "10.0.0.5") as f:
        assert f.read(4) == (ipxe_dir / "snponly.efi").read_bytes()[:4]
    with pytest.raises(FileNotFound):
        files.open_tftp("odd.bin", "10.0.0.5")
    # a configured iPXE name missing from ipxe_dir is not looked up elsewhere
    (ipxe_dir / "snponly.efi").unlink()
    (tftp_root / "snponly.efi").write_bytes(b"x")
    with pytest.raises(FileNotFound):
        TftpFiles(make_settings(tftp_root, ipxe_dir)).open_tftp("snponly.efi", "10.0.0.5")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../outside/secret", codec.ERR_ACCESS),
        ("..\\outside\\secret", codec.ERR_ACCESS),
        ("passwd-link", codec.ERR_ACCESS),
        ("fifo", codec.ERR_ACCESS),
        ("null", codec.ERR_ACCESS),
        ("sub", codec.ERR_ACCESS),
        ("/etc/passwd", codec.ERR_NOT_FOUND),
        ("nope", codec.ERR_NOT_FOUND),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_over_the_wire(hostile_root, server, raw_client, name, code):
    c = raw_client()
    c.send(codec.encode_request(name, "octet", {"blksize": 1468}), ("127.0.0.1", server.port))
    packet, _, addr = await c.recv()
    assert isinstance(packet, codec.Error) and packet.code == code
    assert addr == ("127.0.0.1", server.port)  # refusals come from the listening port
    assert not server.server.sessions


@pytest_twisted.ensureDeferred
async def test_refusals_with_real_clients(hostile_root, server, tmp_path):
    out = tmp_path / "out"
    result = await run(curl_argv(server.port, "nope", out))
    assert result.code == 68, result  # CURLE_TFTP_NOTFOUND
    result = await run(curl_argv(server.port, "passwd-link", out))
    assert result.code == 69, result  # CURLE_TFTP_PERM
    result = await run(hpa_argv(server.port, "../outside/secret", out))
    assert b"Access violation" in result.out + result.err, result
    result = await run(hpa_argv(server.port, "inside-link", out))
    assert result.code == 0 and sha256(out) == sha256(hostile_root / "sub" / "ok.txt")


def test_a_root_that_is_a_symlink_can_be_switched(tmp_path, monkeypatch):
    """An atomic deploy points the root's symlink at a new release: within ROOT_RECHECK_SECONDS
    the new tree is served (the real root is cached that long), and never a file of neither."""
    from netbootd.core import files as core_files

    for release, body in (("v1", b"one"), ("v2", b"two")):
        (tmp_path / release / "sub").mkdir(parents=True)
        (tmp_path / release / "sub" / "kernel").write_bytes(body)
    os.symlink(tmp_path / "v1", tmp_path / "current")
    assert core_files.resolve_under(tmp_path / "current", "sub/kernel").read_bytes() == b"one"
    os.symlink(tmp_path / "v2", tmp_path / "next")
    os.replace(tmp_path / "next", tmp_path / "current")
    later = core_files.time.monotonic() + core_files.ROOT_RECHECK_SECONDS + 0.01
    monkeypatch.setattr(core_files.time, "monotonic", lambda: later)
    assert core_files.resolve_under(tmp_path / "current", "sub/kernel").read_bytes() == b"two"
    os.symlink(tmp_path / "v1" / "sub", tmp_path / "v2" / "linked")  # a symlinked directory leaving the root
    with pytest.raises(AccessDenied):
        core_files.resolve_under(tmp_path / "current", "linked/kernel")
    with pytest.raises(AccessDenied):  # a file used as a directory
        core_files.resolve_under(tmp_path / "current", "sub/kernel/x")
