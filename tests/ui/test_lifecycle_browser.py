"""Provision once on the dashboard, in headless Chromium against a real daemon: the fleet's lifecycle
column and filters, the machine page's state, history and actions, with and without ui.auth_file;
and (no browser) the management API refusing what another site's page could send.

The installers' callbacks are real: each machine's iPXE script (GET /ipxe on the boot port, from
the machine's own loopback address) carries its signed {{ done_url }} / {{ failed_url }}, and the
test GETs them as an installer would. Every assertion is on a final state (a row's state, the
store's history), never on what a fast page happens to show in between.
"""

from __future__ import annotations

import json
import re

import httpx
from playwright.sync_api import expect

from tests.ui.conftest import need_browser
from tests.ui.machines import ScriptedMachine
from tests.ui.test_live import ui_setting

A, B, PLAIN = "52:54:00:7a:01:01", "52:54:00:7a:01:02", "52:54:00:7a:01:03"
ONCE = ('[lifecycle]\nonce = true\n[boot]\nkernel = "vmlinuz"\n'
        'cmdline = "console=ttyS0 nbd_done={{ done_url }} nbd_failed={{ failed_url }}"\n')


def dashed(mac: str) -> str:
    return mac.replace(":", "-")


def site(daemon_factory, auth_line: str = ""):
    d = daemon_factory(top_settings='advertise = "127.0.0.1"\n')
    if auth_line:
        ui_setting(d, auth_line)
    (d.files / "vmlinuz").write_bytes(b"k" * 1000)
    for mac in (A, B):
        (d.machines / f"{dashed(mac)}.toml").write_text(ONCE)
    (d.machines / f"{dashed(PLAIN)}.toml").write_text('[boot]\nkernel = "vmlinuz"\n')
    return d.start()


def callback_url(daemon, mac: str, address: str, outcome: str) -> tuple[ScriptedMachine, str]:
    """The machine's signed callback URL, from its iPXE script (what its installer is given)."""
    machine = ScriptedMachine(daemon, mac, address)
    script = machine.script()
    url = next(word.split("=", 1)[1] for word in script.split() if f"/lifecycle/{outcome}?" in word)
    assert url.startswith(daemon.url), url
    return machine, url[len(daemon.url):]


def report(daemon, mac: str, address: str, outcome: str) -> None:
    machine, path = callback_url(daemon, mac, address, outcome)
    r = machine.get(path)
    assert r.status_code == 200 and r.text.startswith(f"ok: {mac} is "), r.text


def row(page, mac: str):
    return page.locator(f'#fleet tr[data-mac="{mac}"]')


def history(daemon, mac: str, **kw) -> list[dict]:
    r = httpx.get(f"{daemon.ui_url}/api/lifecycle/{dashed(mac)}", timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()["history"]


def state(daemon, mac: str, **kw) -> str:
    r = httpx.get(f"{daemon.ui_url}/api/lifecycle/{dashed(mac)}", timeout=10, **kw)
    return r.json()["row"]["state"]


def confirm(page, button: str) -> None:
    """Click an action, then its confirmation (the action does nothing before that)."""
    page.click(button)
    page.locator("#confirm .confirm-yes").click()


def test_fleet_and_machine_page_follow_and_drive_the_lifecycle(daemon_factory, browser):
    need_browser()
    daemon = site(daemon_factory)
    page = browser.page(daemon.ui_url + "/")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__notReloaded = true")
    for mac in (A, B):
        expect(row(page, mac).locator("td.lifecycle")).to_have_text("provisioning")
    expect(row(page, PLAIN).locator("td.state")).to_have_text("idle")
    expect(row(page, PLAIN).locator("td.lifecycle")).to_have_text("")
    expect(row(page, PLAIN).locator("td.select input")).to_have_count(0)  # nothing to reprovision

    # the installers report: A done, B failed; the rows follow live
    report(daemon, A, "127.0.0.2", "done")
    report(daemon, B, "127.0.0.3", "failed")
    expect(row(page, A).locator("td.lifecycle")).to_have_text("provisioned")
    expect(row(page, B).locator("td.lifecycle")).to_have_text("failed")
    expect(row(page, B)).to_have_class(re.compile(r"\blc-failed\b"))
    expect(page.locator('#lifecycle-counts .chip[data-key="failed"] b')).to_have_text("1")
    # the boot columns are the boot's: a callback is not a boot stage
    expect(row(page, A).locator("td.stage")).to_have_text("script")

    # the lifecycle filter, kept in the URL
    page.check('input[name=lifecycle][value=failed]')
    expect(row(page, B)).to_be_visible()
    for mac in (A, PLAIN):
        expect(row(page, mac)).to_be_hidden()
    assert re.search(r"[?&]lifecycle=failed\b", page.url), page.url
    page.check('input[name=lifecycle][value=provisioned]')
    expect(row(page, A)).to_be_visible()
    expect(row(page, B)).to_be_hidden()
    page.check('input[name=lifecycle][value=all]')
    for mac in (A, B, PLAIN):
        expect(row(page, mac)).to_be_visible()
    assert "lifecycle=" not in page.url
    assert page.evaluate("window.__notReloaded") is True  # every change above arrived live

    # a link keeps the filters (and the other ones)
    linked = browser.page(daemon.ui_url + "/?lifecycle=provisioned&q=7a:01")
    expect(linked.locator("input[name=lifecycle][value=provisioned]")).to_be_checked()
    expect(linked.locator("#search")).to_have_value("7a:01")
    expect(row(linked, A)).to_be_visible()
    expect(row(linked, B)).to_be_attached()
    expect(row(linked, B)).to_be_hidden()

    # A's machine page: its state and history (newest first), then an operator reprovisions it
    page.goto(daemon.ui_url + "/machine/" + dashed(A))
    card = page.locator("#lifecycle-card")
    expect(card.locator('[data-key="state"] b')).to_have_text("provisioned")
    expect(card.locator('[data-key="by"] b')).to_have_text("done_url")
    expect(card.locator('[data-key="from"] b')).to_have_text("127.0.0.2")
    expect(page.locator("#lifecycle-history tbody tr").first).to_have_attribute("data-by", "done_url")
    expect(page.locator("#act-done")).to_be_disabled()  # provisioned already
    # what it would be offered is what it is offered now: its local boot, not its installer
    expect(page.locator("#explain")).to_contain_text("provisioned")
    assert "/lifecycle/done?" not in page.locator("#explain").inner_text()
    page.click("#act-reprovision")
    expect(page.locator("#confirm")).to_be_visible()
    assert state(daemon, A) == "provisioned"  # nothing happens before the confirmation
    page.locator("#confirm .confirm-no").click()
    expect(page.locator("#confirm")).to_be_hidden()
    assert state(daemon, A) == "provisioned"
    confirm(page, "#act-reprovision")
    expect(card.locator('[data-key="state"] b')).to_have_text("provisioning")
    expect(page.locator("#action-result")).to_contain_text(f"reprovisioned: {A} (now provisioning)")
    top = page.locator("#lifecycle-history tbody tr").first
    expect(top).to_have_attribute("data-state", "provisioning")
    expect(top.locator("td.by")).to_have_text(re.compile(r"^operator "))
    entries = history(daemon, A)
    assert [(h["state"], h["by"]) for h in entries[:2]] == [
        ("provisioning", "operator loopback (no ui.auth_file)"), ("provisioned", "done_url")], entries
    # its boot is the installer again, and the page says so
    assert "nbd_done=" in ScriptedMachine(daemon, A, "127.0.0.2").script()
    expect(page.locator("#explain")).to_contain_text("/lifecycle/done?")

    # back on the fleet: B selected and reprovisioned; then A fails and "all failed" takes it back
    page.goto(daemon.ui_url + "/")
    expect(row(page, A).locator("td.lifecycle")).to_have_text("provisioning")
    row(page, B).locator("td.select input").check()
    expect(page.locator("#reprovision-selected")).to_be_enabled()
    confirm(page, "#reprovision-selected")
    expect(row(page, B).locator("td.lifecycle")).to_have_text("provisioning")
    expect(page.locator("#action-result")).to_have_attribute("data-ok", "true")
    assert history(daemon, B)[0]["by"].startswith("operator ")
    report(daemon, A, "127.0.0.2", "failed")
    expect(row(page, A).locator("td.lifecycle")).to_have_text("failed")
    expect(page.locator("#reprovision-failed")).to_have_text("Reprovision all failed (1)")
    confirm(page, "#reprovision-failed")
    expect(row(page, A).locator("td.lifecycle")).to_have_text("provisioning")
    assert [h["state"] for h in history(daemon, A)[:2]] == ["provisioning", "failed"]
    assert state(daemon, B) == "provisioning"


def test_actions_with_credentials_are_the_users(daemon_factory, browser, tmp_path):
    need_browser()
    auth = tmp_path / "ui-auth"
    auth.write_text("alice:s3cret-pass\n")
    auth.chmod(0o600)
    daemon = site(daemon_factory, f'auth_file = "{auth}"')
    creds = ("alice", "s3cret-pass")
    page = browser.page(daemon.ui_url + "/machine/" + dashed(A),
                        http_credentials={"username": "alice", "password": "s3cret-pass"})
    card = page.locator("#lifecycle-card")
    expect(card.locator('[data-key="state"] b')).to_have_text("provisioning")
    expect(page.locator("#lifecycle-history tbody td.empty")).to_have_text("no transition recorded")
    confirm(page, "#act-failed")
    expect(card.locator('[data-key="state"] b')).to_have_text("failed")
    expect(page.locator("#lifecycle-history tbody tr").first.locator("td.by")).to_have_text("operator alice")
    confirm(page, "#act-done")
    expect(card.locator('[data-key="state"] b')).to_have_text("provisioned")
    assert [(h["state"], h["by"]) for h in history(daemon, A, auth=creds)] == [
        ("provisioned", "operator alice"), ("failed", "operator alice")]
    # the fleet page with the same credentials: the row says so, and who
    fleet = browser.page(daemon.ui_url + "/", http_credentials={"username": "alice", "password": "s3cret-pass"})
    expect(row(fleet, A).locator("td.lifecycle")).to_have_text("provisioned")
    expect(row(fleet, A).locator("td.lifecycle")).to_have_attribute("title", re.compile(r"operator alice"))
    # a refusal is shown in the server's words (the page's request sent as a form's, rewritten in flight)
    page.route("**/api/lifecycle", lambda route: route.continue_(
        headers={**route.request.headers, "content-type": "text/plain"}))
    confirm(page, "#act-reprovision")
    expect(page.locator("#action-result")).to_have_attribute("data-ok", "false")
    expect(page.locator("#action-result")).to_contain_text("HTTP 415: actions are JSON")
    assert state(daemon, A, auth=creds) == "provisioned"
    # without credentials: nothing
    r = httpx.post(daemon.ui_url + "/api/lifecycle", json={"action": "reprovision", "macs": [A]}, timeout=10)
    assert r.status_code == 401
    assert state(daemon, A, auth=creds) == "provisioned"


def test_cross_site_and_form_posts_change_nothing(daemon_factory):
    """What another site's page could make the operator's browser send is refused, and changes
    nothing: a form (a simple request, no preflight), JSON with another Origin, or fetch metadata
    saying cross-site or same-site."""
    daemon = site(daemon_factory)
    report(daemon, A, "127.0.0.2", "done")
    before = history(daemon, A)
    url = daemon.ui_url + "/api/lifecycle"
    body = json.dumps({"action": "reprovision", "macs": [A]})
    own = f"http://127.0.0.1:{daemon.ui_port}"
    refused = [
        ({"content-type": "application/x-www-form-urlencoded"}, f"action=reprovision&macs={A}", 415),
        ({"content-type": "multipart/form-data; boundary=x"}, '--x\r\nContent-Disposition: form-data; name="action"'
                                                               "\r\n\r\nreprovision\r\n--x--\r\n", 415),
        ({"content-type": "text/plain"}, body, 415),  # a form's enctype=text/plain: JSON in a simple request
        ({}, body, 415),
        ({"content-type": "application/json", "origin": "http://evil.example"}, body, 403),
        ({"content-type": "application/json", "origin": f"http://evil.example:{daemon.ui_port}"}, body, 403),
        ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, body, 403),
        ({"content-type": "application/json", "sec-fetch-site": "same-site"}, body, 403),
        ({"content-type": "application/json", "origin": "null", "sec-fetch-site": "cross-site"}, body, 403),
        ({"content-type": "application/json", "origin": own, "sec-fetch-site": "cross-site"}, body, 403),
    ]
    for headers, content, status in refused:
        r = httpx.post(url, headers=headers, content=content, timeout=10)
        assert r.status_code == status, (headers, r.status_code, r.text)
    assert state(daemon, A) == "provisioned" and history(daemon, A) == before
    assert "operator action" not in daemon.log()  # not even attempted
    # the same request from the dashboard's own page is taken (the refusals above were not for the body)
    r = httpx.post(url, headers={"content-type": "application/json", "origin": own, "sec-fetch-site": "same-origin"},
                   content=body, timeout=10)
    assert r.status_code == 200 and r.json()["changed"] == [{"mac": A, "state": "provisioning"}], r.text
    assert state(daemon, A) == "provisioning"
