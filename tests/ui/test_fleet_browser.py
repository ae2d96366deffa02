"""The dashboard in headless Chromium against a real daemon while scripted machines boot.

Every step of a machine's boot (DHCP on 4011, TFTP of its iPXE binary, its script, its kernel,
the beacon) is a real packet or request to the daemon on loopback (tests/ui/machines.py); the
page is never reloaded (a marker set in the page at the start is still there at the end), so each
change it shows came over the live stream.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.ui.conftest import need_browser
from tests.ui.machines import ScriptedMachine, need_captures

A, B = "52:54:00:77:01:01", "52:54:00:77:01:02"
HELD = "52:54:00:77:01:09"
UNKNOWN = "52:54:00:77:01:99"
BROKEN = '[boot]\nkernel = "vmlinuz"\ncmdline = "x={{ hostnmae }}"\n'


def row(page, mac: str):
    return page.locator(f'#fleet tr[data-mac="{mac}"]')


def site(daemon_factory):
    need_captures()
    need_browser()
    d = daemon_factory(dhcp=True, tftp=True, top_settings='advertise = "127.0.0.1"\n')
    (d.files / "vmlinuz").write_bytes(b"k" * 200_000)
    (d.machines / "profiles" / "web.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ncmdline = "console=ttyS0 host={{ hostname }} ign={{ ignition_url }}"\n'
        '[ignition]\ninline = \'{"ignition": {"version": "3.4.0"}, "secret": "do-not-show-me"}\'\n')
    for mac, host in ((A, "web-1"), (B, "web-2")):
        (d.machines / f"{mac.replace(':', '-')}.toml").write_text(f'profile = "web"\n[vars]\nhostname = "{host}"\n')
    (d.machines / "default.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    return d.start()


def test_fleet_page_follows_boots_live(daemon_factory, browser, tmp_path):
    daemon = site(daemon_factory)
    page = browser.page(daemon.ui_url + "/")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__notReloaded = true")
    expect(row(page, A).locator("td.state")).to_have_text("idle")
    expect(row(page, A).locator("td.hostname")).to_have_text("web-1")
    expect(row(page, A).locator("td.profile")).to_have_text("web")
    expect(row(page, B).locator("td.state")).to_have_text("idle")

    # machine A boots, one stage at a time; the row follows each
    a = ScriptedMachine(daemon, A, "127.0.0.2")
    a.dhcp()
    expect(row(page, A).locator("td.stage")).to_have_text("dhcp")
    expect(row(page, A).locator("td.state")).to_have_text("booting")
    expect(row(page, A).locator("td.firmware")).to_have_text("efi-pxe / efi64")
    expect(page.locator('#stage-counts .chip[data-key="dhcp"] b')).to_have_text("1")
    a.tftp("snponly.efi", tmp_path / "snponly.efi")
    expect(row(page, A).locator("td.stage")).to_have_text("tftp")
    assert "host=web-1" in a.script()
    expect(row(page, A).locator("td.stage")).to_have_text("script")
    assert a.get("/files/vmlinuz").status_code == 200
    expect(row(page, A).locator("td.stage")).to_have_text("http")
    a.beacon("loaded")
    expect(row(page, A).locator("td.stage")).to_have_text("beacon:loaded")
    expect(row(page, A).locator("td.state")).to_have_text("done")
    expect(page.locator("#progress-label")).to_contain_text("1 of 1 booted")

    # B stops after DHCP: "stuck" once its last event is older than the threshold
    b = ScriptedMachine(daemon, B, "127.0.0.3")
    b.dhcp()
    expect(row(page, B).locator("td.stage")).to_have_text("dhcp")
    expect(page.locator("#progress-label")).to_contain_text("1 of 2 booted, 1 booting")
    page.fill("#stuck-seconds", "1")
    page.check('input[name=show][value=stuck]')
    expect(row(page, B)).to_be_visible()
    expect(row(page, A)).to_be_hidden()  # done, not stuck
    expect(row(page, B)).to_have_class(re.compile(r"\bstuck\b"))
    page.check('input[name=show][value=all]')

    # a machine file with an error and no last good version: held, and the health badge says so
    (daemon.machines / f"{HELD.replace(':', '-')}.toml").write_text(BROKEN)
    expect(row(page, HELD).locator("td.state")).to_have_text("held")
    expect(row(page, HELD).locator("td.error")).to_contain_text("hostnmae")
    expect(page.locator("#health-badge")).to_have_text(re.compile(r"\d+ problems?"))
    ScriptedMachine(daemon, HELD, "127.0.0.4").dhcp(expect_answer=False)
    expect(row(page, HELD).locator("td.stage")).to_have_text("dhcp")  # it asked: in its timeline, unanswered
    expect(row(page, HELD).locator("td.state")).to_have_text("held")

    # an unknown MAC, answered by default.toml; the "unknown MACs seen" filter shows it alone
    ScriptedMachine(daemon, UNKNOWN, "127.0.0.5").dhcp()
    expect(row(page, UNKNOWN).locator("td.kind")).to_have_text("default: kernel")
    page.check('input[name=show][value=unknown]')
    expect(row(page, UNKNOWN)).to_be_visible()
    for mac in (A, B, HELD):
        expect(row(page, mac)).to_be_hidden()
    page.check('input[name=show][value=held]')
    expect(row(page, HELD)).to_be_visible()
    expect(row(page, A)).to_be_hidden()
    page.check('input[name=show][value=all]')

    assert page.evaluate("window.__notReloaded") is True  # every change above arrived live
    browser.page(daemon.ui_url + "/").wait_for_selector(f'#fleet tr[data-mac="{HELD}"]')  # kept for the artefacts

    # A's machine page: its timeline as a waterfall, what it is offered, its files, secrets hidden
    row(page, A).locator("td.mac a").click()
    expect(page.locator("#title")).to_contain_text("web-1")
    stages = page.locator("#waterfall .wf-row")
    expect(stages).to_have_count(5)
    assert [stages.nth(i).get_attribute("data-stage") for i in range(5)] == ["dhcp", "tftp", "script", "http", "beacon"]
    expect(page.locator("#waterfall .bar.tftp")).to_have_count(1)
    expect(page.locator('#summary [data-key="state"] b')).to_have_text("done")
    explain = page.locator("#explain")
    expect(explain).to_contain_text("DHCP      4011 ACK: tftp snponly.efi")  # efi64: the firmware A was seen with
    expect(page.locator("#explain-tabs button.on")).to_have_text("efi64")
    expect(explain).to_contain_text("sig=(hidden)")
    page.click('#explain-tabs button[data-arch="bios"]')
    expect(explain).to_contain_text("67 OFFER: tftp undionly.kpxe")
    text = page.locator("main").inner_text()
    assert "do-not-show-me" not in text and not re.search(r"sig=[0-9a-f]{8}", text)
    expect(page.locator("#file")).to_contain_text('hostname = "web-1"')
    expect(page.locator("#profile")).to_contain_text("inline Ignition config")  # the value replaced by its size
    expect(page.locator("#errors")).to_contain_text("none")
    expect(page.locator("#health-badge")).to_have_text(re.compile(r"\d+ problems?"))  # the held machine, here too

    # B's page follows B live: its TFTP download appears in the waterfall without a reload
    page.goto(daemon.ui_url + "/machine/" + B.replace(":", "-"))
    expect(page.locator("#waterfall .wf-row")).to_have_count(1)
    page.evaluate("window.__notReloaded = true")
    b.tftp("snponly.efi", tmp_path / "b.efi")
    expect(page.locator("#waterfall .wf-row")).to_have_count(2)
    expect(page.locator('#waterfall .wf-row[data-stage="tftp"]')).to_have_count(1)
    assert page.evaluate("window.__notReloaded") is True

    # the held machine's page says why; the health page lists the error with its file and line
    page.goto(daemon.ui_url + "/machine/" + HELD.replace(":", "-"))
    expect(page.locator("#errors")).to_contain_text("held:")
    expect(page.locator("#errors")).to_contain_text(":3: boot.cmdline: 'hostnmae' is undefined")
    expect(page.locator("#file")).to_contain_text("hostnmae")
    page.goto(daemon.ui_url + "/health")
    held_file = str(daemon.machines / f"{HELD.replace(':', '-')}.toml")
    error = page.locator("#errors tbody tr", has_text=held_file)
    expect(error).to_have_count(1)
    expect(error.locator("td").nth(1)).to_have_text("3")
    expect(error.locator("td").nth(2)).to_have_text("boot.cmdline")
    expect(page.locator("#held")).to_contain_text(HELD.replace(":", "-"))
    expect(page.locator('#problems li[data-kind="config_error"]')).to_have_count(1)
    expect(page.locator("#cache")).to_contain_text("blob(s)")

    # fixed: the row and the badge recover, live
    page.goto(daemon.ui_url + "/")
    (daemon.machines / f"{HELD.replace(':', '-')}.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    expect(row(page, HELD).locator("td.state")).not_to_have_text("held")
    expect(page.locator("#health-badge")).to_have_text("healthy")
