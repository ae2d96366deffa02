"""What a fleet row says about a machine, from a real timeline fed as the edges feed it."""

from __future__ import annotations

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
