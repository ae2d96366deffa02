"""The boot timeline's attribution and stage rules, on an injected clock (no sockets: the
timeline is a pure in-memory structure; tests/production/test_timeline.py drives it through a
real daemon with real clients)."""

from __future__ import annotations

import pytest

from netbootd.core.ident import mac_in_path
from netbootd.core.timeline import ATTEMPT_IDLE, MAX_UNATTRIBUTED, Timeline
from netbootd.status import render_summary

A, B = "52:54:00:77:00:0a", "52:54:00:77:00:0b"
IP, IP2 = "10.0.0.5", "10.0.0.6"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tl(clock) -> Timeline:
    return Timeline(clock=clock)


def dhcp(tl: Timeline, mac: str, ip: str) -> None:
    tl.record_dhcp(mac, ip, {"port": 4011, "firmware": "efi-pxe", "arch": "efi64"})


def stages(tl: Timeline, mac: str) -> list[str]:
    doc = tl.machine(mac)
    assert doc is not None, f"{mac} not in the timeline"
    return [e["stage"] for e in doc["events"]]


# ------------------------------------------------------------------ attribution


def test_a_mac_in_the_url_files_the_event_with_no_dhcp_seen(tl):
    assert tl.record("script", mac=A, ip=IP, arch="efi64") == A
    doc = tl.machine(A)
    assert doc["stage"] == "script" and doc["ip"] == IP
    assert tl.unattributed() == []
    # and teaches the address: the kernel download from it is the same machine's
    assert tl.record("http", ip=IP, path="/files/vmlinuz", seconds=0.5) == A
    assert stages(tl, A) == ["script", "http"]


def test_a_mac_in_a_tftp_path_files_the_event_from_any_address(tl):
    assert tl.record("tftp", mac=mac_in_path("52-54-00-77-00-0a/ipxe.efi"), ip="10.9.9.9", seconds=0.1) == A
    assert tl.record("tftp", mac=mac_in_path("/grub/machines/52:54:00:77:00:0b.cfg"), ip="10.9.9.9", seconds=0.1) == B
    # a path names whose file it is, not who asks: the address is not learned from it
    assert tl.mac_for("10.9.9.9") is None


def test_by_address_after_dhcp(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(2)
    assert tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.3) == A
    assert stages(tl, A) == ["dhcp", "tftp"]
    assert tl.machine(A)["stage"] == "tftp"


def test_unknown_address_goes_to_unattributed(tl):
    dhcp(tl, A, IP)
    assert tl.record("http", ip="10.0.0.99", path="/files/vmlinuz", bytes=10, seconds=0.1) is None
    assert stages(tl, A) == ["dhcp"]
    [event] = tl.unattributed()
    assert event["stage"] == "http" and event["ip"] == "10.0.0.99" and event["path"] == "/files/vmlinuz"
    assert "no machine claimed" in event["why"]
    assert event["time"] == pytest.approx(tl.clock())


def test_stale_address_goes_to_unattributed(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(ATTEMPT_IDLE + 1)
    assert tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.1) is None
    assert tl.mac_for(IP) is None
    [event] = tl.unattributed()
    assert event["why"].startswith("stale:") and A in event["why"]
    assert stages(tl, A) == ["dhcp"]


def test_staleness_counts_from_when_a_transfer_began(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(ATTEMPT_IDLE + 60)  # a long download that began 100 s after the DHCP answer
    assert tl.record("http", ip=IP, path="/files/big.img", seconds=ATTEMPT_IDLE - 40) == A


def test_two_machines_claiming_one_address_go_to_unattributed(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(5)
    dhcp(tl, B, IP)
    clock.advance(1)
    assert tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.1) is None
    [event] = tl.unattributed()
    assert event["why"].startswith("ambiguous:") and A in event["why"] and B in event["why"]
    # A shows up elsewhere: the address is B's alone again
    dhcp(tl, A, IP2)
    assert tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.1) == B
    assert tl.record("tftp", ip=IP2, file="snponly.efi", seconds=0.1) == A


def test_an_address_taken_over_long_after_is_not_ambiguous(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(ATTEMPT_IDLE + 1)
    dhcp(tl, B, IP)
    assert tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.1) == B


def test_an_address_its_machine_left_goes_to_unattributed(tl, clock):
    dhcp(tl, A, IP)
    clock.advance(5)
    dhcp(tl, A, IP2)  # e.g. a new lease
    clock.advance(5)
    assert tl.record("http", ip=IP, path="/files/x", seconds=1) is None
    assert "moved to " + IP2 in tl.unattributed()[0]["why"]
    # a transfer from the old address that began before the move is still the machine's
    assert tl.record("http", ip=IP, path="/files/x", seconds=8) == A


def test_unattributed_is_bounded(tl):
    for i in range(MAX_UNATTRIBUTED + 10):
        tl.record("http", ip=f"10.1.{i // 250}.{i % 250}", path="/files/x")
    events = tl.unattributed()
    assert len(events) == MAX_UNATTRIBUTED
    assert events[-1]["ip"] == f"10.1.{(MAX_UNATTRIBUTED + 9) // 250}.{(MAX_UNATTRIBUTED + 9) % 250}"


# ------------------------------------------------------------------ stages


def boot(tl: Timeline, clock: Clock, mac: str = A, ip: str = IP) -> None:
    dhcp(tl, mac, ip)
    clock.advance(1)
    tl.record("tftp", ip=ip, file="snponly.efi", bytes=100, seconds=0.5)
    clock.advance(1)
    dhcp(tl, mac, ip)  # the chained iPXE's own DHCP
    tl.record("script", mac=mac, ip=ip, arch="efi64")
    clock.advance(1)
    tl.record("http", ip=ip, path="/files/vmlinuz", bytes=100, seconds=0.5)
    tl.record("beacon", mac=mac, ip=ip, beacon="loaded")


def test_a_whole_boot_moves_forward(tl, clock):
    boot(tl, clock)
    assert stages(tl, A) == ["dhcp", "tftp", "dhcp", "script", "http", "beacon"]
    doc = tl.machine(A)
    assert doc["stage"] == "beacon:loaded"
    assert doc["events"][-1]["since_dhcp"] == pytest.approx(3)


def test_a_late_tftp_report_after_the_beacon_does_not_move_the_stage_back(tl, clock):
    boot(tl, clock)
    clock.advance(4)
    # a transfer that began before the beacon ends now (its final ACK was lost)
    assert tl.record("tftp", ip=IP, file="snponly.efi", bytes=100, seconds=6, error="timeout") == A
    # the same from a per-machine file: filed by its MAC, still reported at the end of the transfer
    assert tl.record("tftp", mac=A, ip=IP, file="52-54-00-77-00-0a/ipxe.efi", seconds=6) == A
    assert stages(tl, A)[-2:] == ["tftp", "tftp"]
    assert tl.machine(A)["stage"] == "beacon:loaded"


def test_events_by_address_never_move_the_stage_back(tl, clock):
    boot(tl, clock)
    tl.record("script", ip=IP, arch="efi64")  # by UUID only: found by its address
    tl.record("http", ip=IP, path="/files/rootfs.img", seconds=0.1)  # the booted initramfs' download
    assert tl.machine(A)["stage"] == "beacon:loaded"
    tl.record("ignition", ip=IP, size=10)  # the booted system's Ignition comes after the beacon
    assert tl.machine(A)["stage"] == "ignition"


def test_requests_naming_the_machine_set_the_stage_they_say(tl, clock):
    boot(tl, clock)
    clock.advance(1)
    tl.record("script", mac=A, ip=IP, arch="efi64")  # iPXE went back to its script (a menu, a loop)
    assert tl.machine(A)["stage"] == "script"
    clock.advance(1)
    tl.record("http", ip=IP, path="/files/vmlinuz", seconds=0.5)  # and downloads its kernel again
    assert tl.machine(A)["stage"] == "http"


def test_dhcp_after_the_beacon_starts_a_new_attempt(tl, clock):
    boot(tl, clock)
    clock.advance(100)
    dhcp(tl, A, IP)
    assert tl.machine(A)["stage"] == "dhcp"
    clock.advance(10)
    tl.record("beacon", mac=A, ip=IP, beacon="loaded")
    assert tl.machine(A)["events"][-1]["since_dhcp"] == pytest.approx(10)  # measured from the new attempt


def test_a_transfer_begun_before_a_restart_does_not_move_the_stage(tl, clock):
    dhcp(tl, A, IP)
    tl.record("script", mac=A, ip=IP)
    tl.record("http", ip=IP, path="/files/vmlinuz", seconds=0.1)
    clock.advance(10)
    dhcp(tl, A, IP)  # it started over (power cycle) while a TFTP transfer of the old run hung
    clock.advance(1)
    tl.record("tftp", ip=IP, file="snponly.efi", seconds=5, error="timeout")
    assert tl.machine(A)["stage"] == "dhcp"
    tl.record("tftp", ip=IP, file="snponly.efi", seconds=0.5)  # began after the restart
    assert tl.machine(A)["stage"] == "tftp"


def test_the_first_event_after_a_long_silence_starts_a_new_attempt(tl, clock):
    boot(tl, clock)
    clock.advance(ATTEMPT_IDLE + 1)
    tl.record("tftp", mac=A, ip=IP, file="52-54-00-77-00-0a/ipxe.efi", seconds=0.2)  # no DHCP seen
    assert tl.machine(A)["stage"] == "tftp"


# ------------------------------------------------------------------ MACs in paths


@pytest.mark.parametrize(
    ("path", "mac"),
    [
        ("52-54-00-12-34-56/ipxe.efi", "52:54:00:12:34:56"),
        ("/grub/machines/52:54:00:12:34:56.cfg", "52:54:00:12:34:56"),
        ("pxelinux.cfg/01-52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"),
        ("/files/52%3A54%3A00%3A12%3A34%3A56/vmlinuz", "52:54:00:12:34:56"),
        ("/files/host_52-54-00-12-34-56.img", "52:54:00:12:34:56"),
        ("01-02-03-04-05-06", "01:02:03:04:05:06"),
        ("snponly.efi", None),
        ("/httpboot/lab/os/sha256-0123456789abcdef0123456789abcdef.efi", None),
        ("aa-bb-cc-dd-ee-ff-00/x", None),  # seven pairs: not a MAC
        ("52-54:00-12-34-56", None),  # mixed separators
        ("52-54-00-12-34-56/52-54-00-12-34-57.cfg", None),  # two machines: whose is it?
        ("52-54-00-12-34-56/52:54:00:12:34:56.cfg", "52:54:00:12:34:56"),
        ("", None),
    ],
)
def test_mac_in_path(path, mac):
    assert mac_in_path(path) == mac


# ------------------------------------------------------------------ the terminal view


def test_status_summary_lists_unattributed_events(tl, clock):
    dhcp(tl, A, IP)
    tl.record("tftp", ip="10.0.0.99", file="snponly.efi", seconds=0.1)
    doc = {"machines": tl.summary(), "unattributed": tl.unattributed()}
    out = render_summary(doc, clock.now + 5)
    table, section = out.split("\n\n")
    assert A in table and "dhcp" in table
    assert section.startswith("unattributed: 1 event(s)")
    assert "10.0.0.99" in section and "file=snponly.efi" in section and "no machine claimed" in section
    assert render_summary({"machines": tl.summary(), "unattributed": []}, clock.now).endswith("\nunattributed: none\n")
