"""What a fleet row says about a machine, from a real timeline fed as the edges feed it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from netbootd.config.machines import Catalog
from netbootd.dhcp.answer import SITE_REQUEST
from netbootd.ui.fleet import SITE_REQUEST_PREFIX, WatchedTimeline, machine_row

MAC = "52:54:00:79:00:01"


def test_the_site_servers_request_is_no_error_and_ipxe_is_not_the_firmware():
    assert SITE_REQUEST.startswith(SITE_REQUEST_PREFIX)  # the DHCP edge's wording, as the row reads it
    now = [1000.0]
    timeline = WatchedTimeline(clock=lambda: now[0])
    timeline.watching = True
    timeline.record_dhcp(MAC, "", {"port": 67, "firmware": "efi-pxe", "arch": "efi64", "offered": "tftp snponly.efi"})
    now[0] += 1
    timeline.record_dhcp(MAC, "10.0.0.5", {"port": 67, "firmware": "efi-pxe", "arch": "efi64", "answered": False,
                                           "reason": f"{SITE_REQUEST} (server id 10.0.0.1)"})
    row = machine_row(MAC, timeline.machine(MAC), Catalog())
    assert row["state"] == "booting" and "error" not in row, row
    now[0] += 1
    timeline.record("tftp", mac=None, ip="10.0.0.5", file="snponly.efi", bytes=1, seconds=0.5)
    timeline.record_dhcp(MAC, "10.0.0.5", {"port": 67, "firmware": "ipxe", "arch": "efi64", "offered": "script x"})
    timeline.record("script", mac=MAC, ip="10.0.0.5")
    row = machine_row(MAC, timeline.machine(MAC), Catalog())
    assert (row["firmware"], row["arch"], row["stage"]) == ("efi-pxe", "efi64", "script"), row
    assert row["unknown"] is True and row["start"] == 1000.0
    assert timeline.take_dirty() == {MAC}
    # a beacon that says the script failed: a failed boot, with the reason
    timeline.record("beacon", mac=MAC, ip="10.0.0.5", beacon="failed")
    row = machine_row(MAC, timeline.machine(MAC), Catalog())
    assert row["state"] == "failed" and row["error"] == "beacon: failed"
    # the next power-on starts a new run: the old failure is not its error
    now[0] += 60
    timeline.record_dhcp(MAC, "", {"port": 67, "firmware": "bios-pxe", "arch": "bios", "offered": "tftp undionly.kpxe"})
    row = machine_row(MAC, timeline.machine(MAC), Catalog())
    assert row["state"] == "booting" and "error" not in row and row["start"] == now[0] and row["firmware"] == "bios-pxe"


def test_nothing_is_noted_while_no_dashboard_watches():
    timeline = WatchedTimeline()
    timeline.record_dhcp(MAC, "", {"port": 67, "firmware": "efi-pxe", "arch": "efi64"})
    timeline.record("script", mac=MAC)
    assert timeline.dirty == set()


def test_inline_ignition_is_hidden_whatever_its_quoting():
    from netbootd.ui.details import hide_inline_ignition, hide_signatures

    secret = '{"ignition": {"version": "3.4.0"}, "passwd": "TOPSECRET"}'
    for text in (
        f"[boot]\nkernel = \"k\"\n[ignition]\ninline = '{secret}'\n",
        f'[ignition]\ninline = """\n{secret}\n"""\n[vars]\nhostname = "x"\n',
        f"[ignition]\ninline = '''{secret}'''\n",
        '[ignition]\ninline = "{\\"ignition\\": {\\"version\\": \\"3.4.0\\"}, \\"x\\": \\"TOPSECRET\\"}"\n',
        f"ignition = {{ inline = '{secret}' }}\n",
    ):
        shown = hide_inline_ignition(text)
        assert "TOPSECRET" not in shown, (text, shown)
        assert "hidden" in shown or shown.startswith("(not shown"), shown
    plain = '[vars]\nhostname = "web-1"\n[ignition]\nfile = "ignition/web.ign"\n'
    assert hide_inline_ignition(plain) == plain
    assert "TOPSECRET" not in hide_inline_ignition("[ignition\ninline = 'TOPSECRET'\n")  # does not parse
    url = "http://10.0.0.2/ignition?mac=52-54-00-00-00-01&exp=1700000000&sig=0123456789abcdef0123456789abcdef x"
    assert hide_signatures(url) == "http://10.0.0.2/ignition?mac=52-54-00-00-00-01&exp=1700000000&sig=(hidden) x"
    assert hide_signatures("http://h/booty/1700000000-abcdef0123/52-54-00-00-00-01.bty") == \
        "http://h/booty/(signed)/52-54-00-00-00-01.bty"


def test_lifecycle_column_from_the_store_and_boot_columns_from_boots(tmp_path):
    """A once machine's row carries its lifecycle state; a transition (an event in the timeline)
    rebuilds its row, and changes none of its boot columns; an operator's address is not the
    machine's; a state changed with no event (another netbootd on the same store) is noticed by
    the reconcile pass."""
    from netbootd.config.catalog import build_catalog
    from netbootd.config.machinesdir import load_machines
    from netbootd.config.settings import Settings
    from netbootd.core.decide import BootCore
    from netbootd.core.lifecycle import MemoryStore
    from netbootd.model import Arch
    from netbootd.ui import Dashboard
    from tests.lifecycle.test_core import settle

    once, plain, idle = "52:54:00:79:00:11", "52:54:00:79:00:12", "52:54:00:79:00:13"
    machines, files = tmp_path / "machines", tmp_path / "files"
    machines.mkdir()
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"k")
    body = '[boot]\nkernel = "vmlinuz"\ncmdline = "done={{ done_url }}"\n'
    for mac in (once, idle):
        (machines / f"{mac.replace(':', '-')}.toml").write_text("[lifecycle]\nonce = true\n" + body)
    (machines / f"{plain.replace(':', '-')}.toml").write_text(body)
    settings = Settings(machines_dir=machines, files_root=files, advertise="10.0.0.2", state_dir=tmp_path / "state")
    now = [1000.0]
    timeline = WatchedTimeline(clock=lambda: now[0])
    store = MemoryStore(clock=lambda: now[0])
    core = BootCore(settings, build_catalog(load_machines(settings)), timeline=timeline, states=store)
    dash = Dashboard(core, timeline, settings, None, health=dict, problems=list, images=list, cache=lambda: None,
                     credentials=None, clock=lambda: now[0])
    fleet = dash.fleet
    fleet.start()
    assert fleet.rows[once]["lifecycle"] == "provisioning" and "lifecycle_since" not in fleet.rows[once]
    assert "lifecycle" not in fleet.rows[plain]
    assert fleet.rows[idle]["lifecycle"] == "provisioning"

    timeline.record_dhcp(once, "10.0.0.5", {"port": 4011, "firmware": "efi-pxe", "arch": "efi64", "offered": "x"})
    script = core.script(once, None, Arch.EFI64, "10.0.0.2")
    timeline.record("script", mac=once, ip="10.0.0.5")
    timeline.record("beacon", mac=once, ip="10.0.0.5", beacon="loaded")
    changed, _ = fleet.changes()
    assert [(r["mac"], r["state"], r["stage"]) for r in changed] == [(once, "done", "beacon:loaded")]

    # the installer reports done: the row changes live (its lifecycle), the boot stays done
    url = next(w for w in script.split() if "/lifecycle/done?" in w).split("=", 1)[1]
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    now[0] += 30
    settle(core.lifecycle_callback("done", once, None, q["exp"], q["sig"], "10.0.0.5"))
    changed, _ = fleet.changes()
    assert len(changed) == 1
    row = changed[0]
    assert (row["lifecycle"], row["lifecycle_by"], row["lifecycle_since"]) == ("provisioned", "done_url", now[0])
    assert (row["state"], row["stage"], row["ip"]) == ("done", "beacon:loaded", "10.0.0.5")

    # an operator reprovisions it from another address: the machine keeps its own address
    now[0] += 30
    settle(core.set_state(once, "provisioning", "operator alice", "192.0.2.9"))
    row = fleet.changes()[0][0]
    assert (row["lifecycle"], row["lifecycle_by"], row["ip"], row["state"]) == (
        "provisioning", "operator alice", "10.0.0.5", "done")
    assert timeline.mac_for("10.0.0.5") == once and timeline.mac_for("192.0.2.9") is None
    assert timeline.machine(once)["events"][-1]["source"] == "192.0.2.9"

    # a machine never seen, marked failed by an operator: failed, and still idle (no boot seen)
    settle(core.set_state(idle, "failed", "operator alice", "192.0.2.9"))
    row = fleet.changes()[0][0]
    assert (row["lifecycle"], row["state"]) == ("failed", "idle") and "stage" not in row

    # a change made in the store itself (another netbootd sharing it): the store tells the core,
    # whose timeline marks the row changed at once
    settle(store.transition(idle, "provisioning", "operator bob", "192.0.2.10"))
    changed, _ = fleet.changes()
    assert [(r["mac"], r["lifecycle"], r["lifecycle_by"]) for r in changed] == [(idle, "provisioning", "operator bob")]
    assert timeline.machine(idle)["events"][-1]["by"] == "operator bob"
