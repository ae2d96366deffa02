"""The container image network-boots a machine: the image's own netbootd (deploy/container/build.sh),
started with its own ENTRYPOINT and CMD (JSON logs) and the lab's configuration directory at its
/etc/netbootd, serves a BIOS QEMU machine to the NETBOOT-OK marker. Where `podman run` works it
runs with the flags docs/production/container.md gives (--network host, inside the lab's namespace);
where it is refused (this project's sandbox) the image's mounted filesystem runs under chroot
(tests/production/container.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from netbootd import __version__
from tests.production.container import Chroot, PodmanRun, runner, this_checkouts_image

from .conftest import need
from .test_boot import assert_booted

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:00:40"


@pytest.fixture
def image_run() -> Iterator[Chroot | PodmanRun]:
    with this_checkouts_image() as (image, root), runner(image, root) as run:
        yield run


def test_bios_boot_from_the_image(image_run, lab, tmp_path):
    """(image_run before lab: the lab, and netbootd with it, stops before the image is unmounted.)
    The state and cache volumes are mounted as the documented `podman run` mounts them: the
    configuration's relative state_dir and cache_dir go there (the image's STATE_DIRECTORY and
    CACHE_DIRECTORY), never into the mounted /etc/netbootd."""
    need("bios")
    lab.kernel_machine(MAC, "vm-image", "image-secret")
    state, cache = tmp_path / "state-volume", tmp_path / "cache-volume"
    state.mkdir()
    cache.mkdir()
    lab.start_netbootd(argv=image_run.argv(binds={"/etc/netbootd": lab.conf, "/var/lib/netbootd": state,
                                                  "/var/cache/netbootd": cache}))
    marker = lab.booted(MAC, "bios")
    assert_booted(marker, MAC, "vm-image", "image-secret")

    records = [json.loads(line) for line in lab.netbootd_log().splitlines() if line.startswith("{")]
    starting = [r for r in records if r["msg"] == "starting"]
    # the image's CMD ran (JSON logs, its config path), with the image's netbootd
    assert starting and starting[0]["config"] == "/etc/netbootd/netbootd.toml", f"{image_run.how}: {starting}"
    assert starting[0]["version"] == __version__
    answered = [r for r in records if r["msg"] == "answered" and r.get("mac") == MAC]
    assert answered and answered[0]["firmware"] == "ipxe" and answered[0]["arch"] == "bios", answered
    assert any(r["msg"] == "script sent" and r.get("mac") == MAC for r in records)
    assert list(state.glob("*/state.sqlite3")), "the lifecycle state is not in the state volume"
