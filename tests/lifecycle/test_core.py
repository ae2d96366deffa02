"""The lifecycle in the core: what a `[lifecycle] once = true` machine gets in each state, and who
may move it (signed callbacks, done_on, operators). Real loader, core and in-process store."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore
from netbootd.core.interfaces import CallbackRefused, Denied, NoScript
from netbootd.core.lifecycle import MemoryStore, StoreUnavailable
from netbootd.model import Arch, Client, Firmware, OfferKind
from netbootd.state.model import StoreStatus

ONCE = "52:54:00:00:10:01"
RETRY = "52:54:00:00:10:02"
PLAIN = "52:54:00:00:10:03"
IGN = "52:54:00:00:10:04"
SERVER = "10.0.0.2"


def settle(d):
    out = []
    d.addBoth(out.append)
    assert out, "the in-process store answers at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def build(tmp_path: Path, store=None) -> BootCore:
    machines, files = tmp_path / "machines", tmp_path / "files"
    machines.mkdir(exist_ok=True)
    files.mkdir(exist_ok=True)
    (files / "vmlinuz").write_bytes(b"k")
    (files / "installer.img").write_bytes(b"i")
    cmdline = 'cmdline = "nbd_done={{ done_url }} nbd_failed={{ failed_url }}"\n'
    (machines / "52-54-00-00-10-01.toml").write_text(
        '[lifecycle]\nonce = true\n[boot]\nkernel = "vmlinuz"\ninitrds = ["installer.img"]\n' + cmdline)
    (machines / "52-54-00-00-10-02.toml").write_text(
        '[lifecycle]\nonce = true\non_failure = "retry"\nlocal_boot = "sanboot"\n[boot]\nkernel = "vmlinuz"\n' + cmdline)
    (machines / "52-54-00-00-10-03.toml").write_text('[boot]\nkernel = "vmlinuz"\n' + cmdline)
    (machines / "52-54-00-00-10-04.toml").write_text(
        '[lifecycle]\nonce = true\ndone_on = "ignition"\n[boot]\nkernel = "vmlinuz"\n'
        "[ignition]\ninline = '{\"ignition\": {\"version\": \"3.4.0\"}}'\n")
    settings = Settings(machines_dir=machines, files_root=files, advertise=SERVER, state_dir=tmp_path / "state")
    result = load_machines(settings)
    assert result.errors == []
    return BootCore(settings, build_catalog(result), states=store if store is not None else MemoryStore())


def callback(core: BootCore, mac: str, outcome: str) -> dict[str, str]:
    script = core.script(mac, None, Arch.BIOS, SERVER)
    url = next(w for w in script.split() if f"/lifecycle/{outcome}?" in w)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url.split("=", 1)[1]).query).items()}
    return query


def report(core: BootCore, mac: str, outcome: str, query: dict[str, str] | None = None, source: str = "10.0.0.50"):
    q = query or callback(core, mac, outcome)
    return core.lifecycle_callback(outcome, mac, None, q["exp"], q["sig"], source)


def offer(core: BootCore, mac: str, firmware=Firmware.EFI_PXE, arch=Arch.EFI64):
    return core.decide(Client(mac, arch, firmware), SERVER)


@pytest.fixture
def core(tmp_path) -> BootCore:
    return build(tmp_path)


def test_installer_then_disk(core):
    done = callback(core, ONCE, "done")  # what the installer was given
    assert "kernel --name kernel" in core.script(ONCE, None, Arch.EFI64, SERVER)
    assert offer(core, ONCE).offer.bootfile == "snponly.efi"
    record = settle(report(core, ONCE, "done", done))
    assert record.state == "provisioned"
    # every firmware is answered with a loader that sends it on to the disk (no DHCP timeouts)
    assert offer(core, ONCE).offer.bootfile == "snponly.efi"
    assert offer(core, ONCE, Firmware.BIOS_PXE, Arch.BIOS).offer.bootfile == "undionly.kpxe"
    http = offer(core, ONCE, Firmware.HTTP_BOOT).offer
    assert http.kind is OfferKind.HTTP_EFI and http.bootfile.endswith("/boot/snponly.efi")
    script = core.script(ONCE, None, Arch.EFI64, SERVER)
    assert "kernel --name" not in script and script.rstrip().endswith("exit 1") and "provisioned" in script
    events = core.timeline.machine(ONCE)["events"]
    assert events[-1]["stage"] == "lifecycle" and events[-1]["state"] == "provisioned"
    assert events[-1]["by"] == "done_url" and events[-1]["source"] == "10.0.0.50"
    # reported again: idempotent, nothing new stored
    assert settle(report(core, ONCE, "done", done)).since == record.since
    # the operator reprovisions: the installer again
    settle(core.set_state(ONCE, "provisioning", "operator alice", "127.0.0.1"))
    assert "kernel --name kernel" in core.script(ONCE, None, Arch.EFI64, SERVER)


def test_a_failed_install_does_not_loop(core):
    done = callback(core, ONCE, "done")
    settle(report(core, ONCE, "failed"))
    assert offer(core, ONCE).offer is None and "reprovision" in offer(core, ONCE).reason
    with pytest.raises(NoScript, match="failed"):
        core.script(ONCE, None, Arch.EFI64, SERVER)
    # a late "done" from the failed installer is refused: only an operator moves it on
    with pytest.raises(CallbackRefused) as refused:
        report(core, ONCE, "done", done)
    assert refused.value.status == 409


def test_retry_boots_the_installer_again_and_sanboot_is_chosen(core):
    done = callback(core, RETRY, "done")
    settle(report(core, RETRY, "failed"))
    assert "kernel --name kernel" in core.script(RETRY, None, Arch.BIOS, SERVER)
    settle(report(core, RETRY, "done", done))  # the second install worked
    script = core.script(RETRY, None, Arch.BIOS, SERVER)
    assert "sanboot --no-describe --drive 0x80" in script and script.rstrip().endswith("exit 1")


def test_forged_expired_and_other_machines_urls_change_nothing(core, tmp_path):
    good = callback(core, ONCE, "done")
    with pytest.raises(Denied):
        report(core, ONCE, "done", {**good, "sig": good["sig"][:-2] + "xx"})
    with pytest.raises(Denied):
        report(core, ONCE, "done", {**good, "exp": str(int(good["exp"]) - 10**6)})
    with pytest.raises(Denied):
        report(core, RETRY, "done", good)  # ONCE's URL used for another machine
    with pytest.raises(Denied):
        report(core, ONCE, "failed", good)  # a done URL is not a failed URL
    assert core.state(core.find(ONCE), ONCE) == "provisioning"
    assert all(e["stage"] != "lifecycle" for e in (core.timeline.machine(ONCE) or {"events": []})["events"])


def test_unknown_and_plain_machines(core):
    with pytest.raises(CallbackRefused) as plain:
        report(core, PLAIN, "done")
    assert plain.value.status == 409 and "once" in str(plain.value)
    q = callback(core, ONCE, "done")
    with pytest.raises(Denied):  # signed for ONCE: no use for an unknown MAC
        core.lifecycle_callback("done", "52:54:00:00:99:99", None, q["exp"], q["sig"], "")


def test_ignition_fetched_marks_done_once(core):
    d = core.lifecycle_event(IGN, None, "ignition", "10.0.0.60")
    assert settle(d).state == "provisioned"
    assert core.lifecycle_event(IGN, None, "ignition", "10.0.0.60") is None  # a second fetch changes nothing
    assert core.lifecycle_event(ONCE, None, "ignition", "10.0.0.61") is None  # not its done_on


def test_a_beacon_stage_marks_done_when_the_machine_says_so(tmp_path):
    core = build(tmp_path)
    (core.settings.machines_dir / "52-54-00-00-10-05.toml").write_text(
        '[lifecycle]\nonce = true\ndone_on = "beacon:installed"\n[boot]\nkernel = "vmlinuz"\n')
    core.replace_catalog(build_catalog(load_machines(core.settings)))
    mac = "52:54:00:00:10:05"
    assert core.lifecycle_event(mac, None, "beacon:loaded", "10.0.0.7") is None  # another stage
    assert settle(core.lifecycle_event(mac, None, "beacon:installed", "10.0.0.7")).by == "beacon:installed"
    assert core.state(core.find(mac), mac) == "provisioned"


class NeverRead(MemoryStore):
    def status(self):
        return StoreStatus(False, "cannot connect to the database: connection refused", 0.0, False, "PostgreSQL test")


def test_a_once_machine_whose_state_is_unknown_is_held(tmp_path):
    core = build(tmp_path, NeverRead())
    decision = offer(core, ONCE)
    assert decision.offer is None and "state is unknown" in decision.reason and "connection refused" in decision.reason
    with pytest.raises(NoScript, match="never provisioned"):
        core.script(ONCE, None, Arch.EFI64, SERVER)
    assert offer(core, PLAIN).offer is not None  # machines without a lifecycle are not held
    exp, sig = core.signer.sign("done", ONCE)
    with pytest.raises(StoreUnavailable):
        report(core, ONCE, "done", {"exp": str(exp), "sig": sig})
