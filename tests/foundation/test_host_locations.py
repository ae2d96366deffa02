"""A machine file's kernel, initrds or EFI binary by absolute path on this host: what it means next
to files_root paths, and what `check` says when the file is not there."""

from __future__ import annotations

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.hostfiles import missing, package_for
from netbootd.config.machinesdir import load_machines
from netbootd.core.plan import FILE, HOST, files_for, host_files
from netbootd.model import Arch
from tests.foundation.test_config import settings_for, write


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "machines").mkdir()
    (tmp_path / "files").mkdir()
    return tmp_path


def machines(conf, text: str):
    write(conf / "machines" / "52-54-00-00-00-08.toml", text)
    return load_machines(settings_for(conf))


def test_an_absolute_path_is_a_host_file_and_a_leading_slash_under_files_root_keeps_its_meaning(conf, tmp_path):
    outside = tmp_path / "pkg" / "linux"
    outside.parent.mkdir()
    outside.write_bytes(b"k")
    write(conf / "files" / "initrd.img", "i")
    result = machines(conf, f'[boot]\nkernel = "{outside}"\ninitrds = ["/initrd.img"]\n')
    assert result.errors == []
    machine = build_catalog(result).find("52:54:00:00:00:08")
    found = files_for(machine, Arch.BIOS, None)
    assert (found["kernel"].source, found["kernel"].location) == (HOST, str(outside))
    assert [(a.source, a.location) for a in found["initrds"]] == [(FILE, "initrd.img")]  # as it always was
    assert host_files([machine]) == {str(outside)}  # all that /host may serve


def test_a_missing_host_file_names_the_package_that_installs_it(conf):
    path = "/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/linux"
    result = machines(conf, f'[boot]\nkernel = "{path}"\n')
    (error,) = [str(e) for e in result.errors]
    assert error.endswith(f":2: boot.kernel: {path} does not exist on this host: install "
                          "debian-installer-12-netboot-arm64 (apt-get install debian-installer-12-netboot-arm64)"), error
    result = machines(conf, '[boot]\nkernel = "/nonexistent/vmlinuz"\n')
    assert "/nonexistent/vmlinuz does not exist on this host (a path starting with / is a file on this host)" in str(
        result.errors[0])
    assert "'..' is not allowed" in str(machines(conf, '[boot]\nkernel = "/x/../etc/passwd"\n').errors[0])
    assert package_for("/usr/lib/ipxe/snponly.efi") == "ipxe" and package_for("/srv/boot/linux") == ""
    assert missing("/usr/lib/shim/shimx64.efi.signed").endswith("install shim-signed (apt-get install shim-signed)")
