"""Boot files a machine file names by their absolute path on this host (a distribution package's
installer kernel, say): a real daemon serves exactly those paths at /host, names them in the
timeline by their role, and nothing a client sends reads any other file outside files_root."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import wait_for

MAC = "52:54:00:77:00:31"
DASHED = MAC.replace(":", "-")


@pytest.fixture
def host_dir(tmp_path):
    """A directory outside the daemon's files_root, as a package's /usr/lib/... is."""
    d = tmp_path / "package" / "images"
    d.mkdir(parents=True)
    (d / "linux").write_bytes(b"K" * 5000)
    (d / "initrd.gz").write_bytes(b"I" * 7000)
    (d / "not-named.img").write_bytes(b"secret")
    return d


@pytest.fixture
def daemon(daemon_factory, host_dir):
    d = daemon_factory()
    (d.files / "inside").write_bytes(b"in the files root")
    (d.files / "escape").symlink_to(host_dir / "not-named.img")  # a symlink out of files_root
    (d.machines / f"{DASHED}.toml").write_text(
        f'[boot]\nkernel = "{host_dir}/linux"\ninitrds = ["{host_dir}/initrd.gz"]\ncmdline = "console=ttyS0"\n')
    return d.start()


def test_named_host_files_are_served_and_named_by_role(daemon, host_dir):
    script = daemon.get(f"/ipxe?mac={DASHED}&arch=bios").text
    assert f"/host{host_dir}/linux " in script and f"/host{host_dir}/initrd.gz " in script, script
    kernel = daemon.get(f"/host{host_dir}/linux")
    assert kernel.status_code == 200 and kernel.content == b"K" * 5000
    assert daemon.get(f"/host{host_dir}/initrd.gz").content == b"I" * 7000

    def events():
        doc = daemon.ui_get(f"/machines/{MAC}").json()
        return [e for e in doc["events"] if e["stage"] == "http"] or None

    assert [(e["path"], e.get("role")) for e in wait_for(events, timeout=10)][:1] == [(f"/host{host_dir}/linux", "kernel")]


@pytest.mark.parametrize("path", [
    "/host/etc/passwd",  # a host file no machine file names
    "/host{dir}/not-named.img",  # beside a named one, but not named
    "/host{dir}/../images/not-named.img",
    "/host{dir}/linux/..",
    "/files/escape",  # files_root's containment is unchanged: a symlink out of it is refused
    "/files/..{dir}/linux",
])
def test_nothing_else_outside_the_roots(daemon, host_dir, path):
    raw = path.format(dir=host_dir)
    with httpx.Client(timeout=10) as client:
        # sent as written (httpx would otherwise remove the dot segments itself)
        r = client.send(client.build_request("GET", httpx.URL(daemon.url).copy_with(raw_path=raw.encode())))
    assert r.status_code in (400, 403, 404), (path, r.status_code, r.text)
    assert b"secret" not in r.content and b"root:" not in r.content


def test_a_reload_that_drops_the_machine_stops_serving_its_files(daemon, host_dir):
    assert daemon.get(f"/host{host_dir}/linux").status_code == 200
    (daemon.machines / f"{DASHED}.toml").write_text("[boot]\nlocal = true\n")
    wait_for(lambda: daemon.get(f"/host{host_dir}/linux").status_code == 404, timeout=15, interval=0.2)


def test_a_grub_machine_gets_its_host_files_over_tftp(daemon_factory, host_dir, tmp_path):
    """GRUB has no HTTP: the GRUB loader opens the host files its plan names, over TFTP."""
    import tftpy

    d = daemon_factory(tftp=True)
    (d.machines / f"{DASHED}.toml").write_text(
        f'loader = "grub"\n[boot]\nkernel = "{host_dir}/linux"\ninitrds = ["{host_dir}/initrd.gz"]\n'
        'cmdline = "console=ttyS0"\n')
    d.start()
    client = tftpy.TftpClient("127.0.0.1", d.tftp_port, options={"blksize": 1024})
    for name, body in (("kernel", b"K" * 5000), ("initrd0", b"I" * 7000)):
        client.download(f"/grub/m/{DASHED}/x86_64/{name}", str(tmp_path / name), timeout=10)
        assert (tmp_path / name).read_bytes() == body


def test_an_assembled_uki_takes_its_kernel_and_initrd_from_the_host_paths(daemon_factory, tmp_path):
    """loader = "uki" (UEFI HTTP boot without iPXE): the UKI is built of the host files the machine names."""
    import os

    from tests.foundation.test_uki import X86_STUB, need_stub, sections

    need_stub(X86_STUB)
    kernel, initrd = b"MZ" + os.urandom(100_000), os.urandom(20_000)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "linux").write_bytes(kernel)
    (tmp_path / "pkg" / "initrd.gz").write_bytes(initrd)
    d = daemon_factory()
    (d.machines / f"{DASHED}.toml").write_text(
        f'loader = "uki"\n[boot]\nkernel = "{tmp_path}/pkg/linux"\ninitrds = ["{tmp_path}/pkg/initrd.gz"]\n'
        'cmdline = "console=ttyS0"\n')
    d.start()
    got = httpx.get(f"{d.url}/uki/{DASHED}/efi64.efi", timeout=30)
    assert got.status_code == 200, got.text
    found = sections(got.content)
    assert found[".linux"] == kernel and found[".initrd"] == initrd
