"""One real firmware boot watched end to end on the dashboard.

OVMF's own UEFI PXE boots a QEMU machine from the lab's netbootd (tests/integration: a network
namespace with a bridge, the site's dnsmasq, netbootd with ui.listen inside the namespace).
Chromium runs inside that namespace too (tests/ui/conftest.py: lab_browser). The page records
every stage its row shows (a MutationObserver), so the test sees what an operator would have seen
at each moment, not only the end state.
"""

from __future__ import annotations

import threading

import attrs
import pytest
from playwright.sync_api import expect

from netbootd.config.settings import UiSettings
from tests.integration.conftest import BOOT_IP, need

pytestmark = pytest.mark.integration

MAC = "52:54:00:77:02:10"
UI = f"{BOOT_IP}:9180"

RECORD_STAGES = """
mac => {
  window.__stages = [];
  const seen = () => {
    const td = document.querySelector(`#fleet tr[data-mac="${mac}"] td.stage`);
    const text = td ? td.textContent : "";
    if (window.__stages[window.__stages.length - 1] !== text) window.__stages.push(text);
  };
  new MutationObserver(seen).observe(document.querySelector("#fleet tbody"),
                                     { childList: true, subtree: true, characterData: true });
  seen();
}
"""


def test_a_uefi_pxe_boot_moves_through_its_stages_on_the_page(lab_separate_host, lab_browser):
    need("uefi")
    lab = lab_separate_host
    lab.write_settings(attrs.evolve(lab.settings, ui=UiSettings(listen=UI)))
    lab.kernel_machine(MAC, "vm-ui", "ui-secret")
    lab.start_netbootd()
    page = lab_browser.page(f"http://{UI}/")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator(f'#fleet tr[data-mac="{MAC}"] td.state')).to_have_text("idle")
    page.evaluate(RECORD_STAGES, MAC)

    result: dict = {}
    booting = threading.Thread(target=lambda: result.update(marker=lab.booted(MAC, "uefi-pxe")), daemon=True)
    booting.start()
    row = page.locator(f'#fleet tr[data-mac="{MAC}"]')
    expect(row.locator("td.state")).to_have_text("booting", timeout=120_000)
    expect(row.locator("td.stage")).to_have_text("ignition", timeout=240_000)  # the booted guest's last request
    booting.join(300)
    assert "marker" in result, "the QEMU machine did not boot (the lab's report below says where it stopped)"
    expect(row.locator("td.state")).to_have_text("done")
    expect(row.locator("td.firmware")).to_have_text("efi-pxe / efi64")
    expect(row.locator("td.hostname")).to_have_text("vm-ui")

    # What the row showed, live, as it changed (window.__stages). Which stages a page shows depends
    # on how long each lasts against its update interval: the server pushes at most one diff per tick
    # (netbootd.ui.live.TICK, spaced out after a costly tick) and the page paints once per frame, so
    # a stage that ends within one (e.g. "script", from the script's fetch to the kernel's end, while
    # another QEMU job loads the host) may be coalesced away. So: only this boot's stages, each first
    # shown in boot order (iPXE's own DHCP after TFTP may show "dhcp" again), ending at the booted
    # guest's last request ...
    stages = page.evaluate("window.__stages")
    shown = [s for s in stages if s]
    order = ["dhcp", "tftp", "script", "http", "beacon:loaded", "ignition"]
    assert all(stage in order for stage in shown), stages
    firsts = sorted({stage: shown.index(stage) for stage in shown}.items(), key=lambda kv: kv[1])
    assert [stage for stage, _ in firsts] == [stage for stage in order if stage in shown], stages
    assert shown[-1] == "ignition", stages
    # ... and not only the end: the row said "booting" above, which only a stage before the beacon
    # gives, and that paint put the stage in the same row, so the page moved through the boot live
    assert [s for s in shown if s not in ("beacon:loaded", "ignition")], stages

    # Every stage, in boot order: the timeline the machine page keeps (a row per event, in the order
    # netbootd recorded them: its waterfall). Each stage's first row comes in boot order.
    page.goto(f"http://{UI}/machine/{MAC.replace(':', '-')}")
    bars = page.locator("#waterfall .wf-row")
    expect(bars.first).to_be_visible()
    rows = [bars.nth(i).get_attribute("data-stage") for i in range(bars.count())]
    assert list(dict.fromkeys(rows)) == ["dhcp", "tftp", "script", "http", "beacon", "ignition"], rows
    expect(page.locator("#explain")).to_contain_text("4011 ACK: tftp snponly.efi")
    assert "ui-secret" not in page.locator("main").inner_text()  # the Ignition marker stays hidden
