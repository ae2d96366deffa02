"""A broken machine file never boots the wrong thing: last good versions (in memory and in
state_dir, across restarts) and held machines, on the real loader and the real core."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.lastgood import LastGoodStore, from_json, to_json
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore, NoScript
from netbootd.core.files import AccessDenied
from netbootd.model import Arch, Client, Firmware

MAC = "52:54:00:12:34:56"
NAME = "52-54-00-12-34-56"


class Site:
    """A config directory, and 'daemon starts' that load it the way the service does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.machines = root / "machines"
        (self.machines / "profiles").mkdir(parents=True)
        (root / "files").mkdir()
        (root / "files" / "vmlinuz").write_bytes(b"k")
        self.settings = Settings(machines_dir=self.machines, files_root=root / "files", state_dir=root / "state")
        self.write("default.toml", '[boot]\nchain = "https://installer.example/wipe-disks.ipxe"\n')

    def write(self, name: str, text: str) -> Path:
        path = self.machines / name
        path.write_text(textwrap.dedent(text))
        return path

    def start(self, previous=None):
        """One load as the service does it: catalog from the directory, the running catalog and
        the state directory; what loaded cleanly becomes the new last good version."""
        store = LastGoodStore(self.settings.state_dir)
        result = load_machines(self.settings)
        catalog = build_catalog(result, previous, store)
        store.save(result.machines.values())
        store.forget({p.name[:-5] for p in self.machines.glob("*.toml")})
        return catalog, BootCore(self.settings, catalog)


GOOD = """\
    [vars]
    hostname = "good-{n}"
    [boot]
    kernel = "vmlinuz"
    cmdline = "console=ttyS0 host={{{{ hostname }}}}"
    """
BROKEN = """\
    [vars]
    hostname = "broken"
    [boot]
    kernel = "vmlinuz"
    cmdline = "console=ttyS0 host={{ hostnmae }}"
    """


def efi_pxe(core: BootCore):
    return core.decide(Client(MAC, Arch.EFI64, Firmware.EFI_PXE), "10.0.0.2")


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def test_new_broken_file_holds_the_machine_never_the_default(site):
    path = site.write(f"{NAME}.toml", BROKEN)
    catalog, core = site.start()
    assert catalog.find(MAC) is None  # not the default
    assert catalog.find("52:54:00:00:00:99").name == "default"  # other machines are unaffected
    decision = efi_pxe(core)
    assert decision.offer is None
    assert decision.reason.startswith(f"held: {path}:5: boot.cmdline: 'hostnmae' is undefined")
    with pytest.raises(NoScript, match=rf"^held: {path}:5:"):
        core.script(MAC, None, Arch.EFI64, "10.0.0.2")
    # its timeline says so, and TFTP from the address DHCP saw gives it nothing
    core.dhcp_seen(Client(MAC, Arch.EFI64, Firmware.EFI_PXE), None, decision.reason, "10.0.0.77", 4011)
    with pytest.raises(AccessDenied, match="held:"):
        core.open_tftp("snponly.efi", "10.0.0.77")
    events = core.timeline.machine(MAC)["events"]
    assert any(e["stage"] == "held" and e["error"].startswith(f"{path}:5:") for e in events), events
    status, body = core.httpboot([MAC], "10.0.0.2")
    assert status == 404 and body["error"].startswith("held:")


def test_restart_with_a_broken_file_serves_the_last_good_version(site):
    site.write(f"{NAME}.toml", GOOD.format(n=1))
    site.start()
    saved = site.settings.state_dir / "last-good" / f"{NAME}.json"
    assert saved.is_file() and oct(saved.stat().st_mode & 0o777) == "0o600"
    site.write(f"{NAME}.toml", BROKEN)
    catalog, core = site.start()  # a restart: nothing in memory
    assert NAME in catalog.stale and not catalog.held
    assert "host=good-1" in core.script(MAC, None, Arch.EFI64, "10.0.0.2")
    assert efi_pxe(core).offer is not None
    # the broken file did not overwrite the last good version
    assert json.loads(saved.read_text())["vars"] == {"hostname": "good-1"}


def test_hot_reload_keeps_the_running_version_and_fixing_it_boots(site):
    site.write(f"{NAME}.toml", GOOD.format(n=1))
    catalog, _ = site.start()
    site.write(f"{NAME}.toml", GOOD.format(n=2))
    catalog, _ = site.start(catalog)
    site.write(f"{NAME}.toml", BROKEN)
    catalog, core = site.start(catalog)
    assert "host=good-2" in core.script(MAC, None, Arch.EFI64, "10.0.0.2")
    # after a restart too
    catalog, core = site.start()
    assert "host=good-2" in core.script(MAC, None, Arch.EFI64, "10.0.0.2")
    site.write(f"{NAME}.toml", GOOD.format(n=3))
    catalog, core = site.start(catalog)
    assert not catalog.stale and "host=good-3" in core.script(MAC, None, Arch.EFI64, "10.0.0.2")


def test_broken_profile_holds_new_machines_and_names_the_profile(site):
    profile = site.write("profiles/worker.toml", '[boot]\nkernel = "vmlinuz"\ncmdline = "x={{ nosuch }}"\n')
    site.write(f"{NAME}.toml", 'profile = "worker"\n')
    catalog, core = site.start()
    held = catalog.held_for(MAC)
    assert held is not None and held.error.file == profile  # the root of it, not "profile has errors"
    assert efi_pxe(core).reason.startswith(f"held: {profile}:3: boot.cmdline:")
    # a machine on that profile that was good before keeps its last good version
    profile.write_text('[boot]\nkernel = "vmlinuz"\n')
    catalog, _ = site.start()
    assert not catalog.held
    profile.write_text("[boot\n")
    catalog, core = site.start()
    assert NAME in catalog.stale and efi_pxe(core).offer is not None


def test_two_files_for_one_mac_hold_it(site):
    site.write(f"{NAME}.toml", GOOD.format(n=1))
    site.write(f"{MAC}.toml", GOOD.format(n=2))
    catalog, core = site.start()
    assert catalog.find(MAC) is None and "same MAC as" in efi_pxe(core).reason


def test_deleting_a_machine_file_forgets_its_last_good_version(site):
    path = site.write(f"{NAME}.toml", GOOD.format(n=1))
    site.start()
    path.unlink()
    catalog, _ = site.start()
    assert catalog.find(MAC).name == "default"  # an operator who deletes the file wants it unknown
    assert not (site.settings.state_dir / "last-good" / f"{NAME}.json").exists()
    path = site.write(f"{NAME}.toml", BROKEN)
    catalog, _ = site.start()
    assert catalog.held_for(MAC) is not None


def test_broken_default_is_not_replaced_by_nothing_silently(site):
    site.write("default.toml", "[boot\n")
    _catalog, core = site.start()
    decision = core.decide(Client("52:54:00:00:00:99", Arch.BIOS, Firmware.BIOS_PXE), "10.0.0.2")
    assert decision.offer is None and "default.toml is broken" in decision.reason


def test_damaged_snapshot_means_held(site):
    site.write(f"{NAME}.toml", GOOD.format(n=1))
    site.start()
    (site.settings.state_dir / "last-good" / f"{NAME}.json").write_text("{not json")
    site.write(f"{NAME}.toml", BROKEN)
    catalog, _ = site.start()
    assert catalog.held_for(MAC) is not None


@pytest.mark.parametrize(
    "boot",
    [
        'kernel = "vmlinuz"\ninitrds = ["vmlinuz", "https://x.example/i.img"]\ncmdline = "a={{ mac }}"',
        'image = "ghcr.io/org/os@sha256:' + "a" * 64 + '"\ncmdline = "u={{ squashfs_url }}"',
        'efi = "https://x.example/uki.efi"',
        'script = "#!ipxe\\necho {{ mac }}\\n"',
        'chain = "https://x.example/{{ mac_hyphen }}"',
        "local = true",
        "ignore = true",
    ],
)
def test_snapshot_round_trip_of_every_boot_kind(site, boot):
    site.write(
        f"{NAME}.toml",
        f'uuid = "4c4c4544-0042-4810-8056-b4c04f395931"\nsigned_urls = false\n[vars]\nrack = "b4"\n[boot]\n{boot}\n'
        '[ignition]\ninline = \'{"ignition": {"version": "3.4.0"}}\'\n'
        '[booty]\naction = "writeImage"\nsourceImage = "http://i/x.img"\ndestinationDevice = "/dev/sda"\n',
    )
    result = load_machines(site.settings)
    assert result.errors == []
    machine = result.machines[NAME]
    assert from_json(json.loads(json.dumps(to_json(machine)))) == machine


def test_unchanged_versions_are_not_rewritten(site):
    site.write(f"{NAME}.toml", GOOD.format(n=1))
    site.start()
    saved = site.settings.state_dir / "last-good" / f"{NAME}.json"
    os.utime(saved, (1, 1))
    site.start()
    assert saved.stat().st_mtime == 1
