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

    stages = page.evaluate("window.__stages")
    shown = [s for s in stages if s]
    order = ["dhcp", "tftp", "script", "http", "beacon:loaded", "ignition"]
    assert all(stage in order for stage in shown), stages
    firsts = sorted({stage: shown.index(stage) for stage in shown}.items(), key=lambda kv: kv[1])
    # each stage first appeared in boot order (iPXE's own DHCP after TFTP may show "dhcp" again; a
    # stage shorter than the page's update interval, like "http" between the initrd's end and the
    # beacon, may be coalesced away: the page gets at most a few updates a second) ...
    assert [stage for stage, _ in firsts] == [stage for stage in order if stage in shown], stages
    # ... and the stages that last long enough to be seen were each seen, live
    assert {"dhcp", "tftp", "script", "ignition"} <= set(shown), stages

    page.goto(f"http://{UI}/machine/{MAC.replace(':', '-')}")
    bars = page.locator("#waterfall .wf-row")
    expect(bars.first).to_be_visible()
    seen = {bars.nth(i).get_attribute("data-stage") for i in range(bars.count())}
    assert {"dhcp", "tftp", "script", "http", "beacon", "ignition"} <= seen, seen
    expect(page.locator("#explain")).to_contain_text("4011 ACK: tftp snponly.efi")
    assert "ui-secret" not in page.locator("main").inner_text()  # the Ignition marker stays hidden
