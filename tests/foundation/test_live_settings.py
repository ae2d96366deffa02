"""netbootd.config.live: which keys a reload applies, how the running settings are merged, and the
lines `check --diff-running` prints."""

from __future__ import annotations

from pathlib import Path

import attrs

from netbootd.config.live import flatten, is_live, plan_reload
from netbootd.config.settings import HttpSettings, IpxeBinaries, LogSettings, Settings
from netbootd.reloadcheck import diff_lines


def test_a_reload_applies_live_keys_and_keeps_the_rest():
    running = Settings(source=Path("/x/netbootd.toml"))
    new = attrs.evolve(running, advertise="10.0.0.9", log=LogSettings(format="json", level="debug"),
                       http=HttpSettings(port=8080, rate_limit=5.0), ipxe=IpxeBinaries(efi64="ipxe.efi"))
    plan = plan_reload(running, new)
    assert plan.applied == ("advertise", "ipxe.efi64", "http.rate_limit", "log.level")
    assert plan.restart == ("http.port", "log.format")
    s = plan.settings
    assert (s.advertise, s.log.level, s.http.rate_limit, s.ipxe.efi64) == ("10.0.0.9", "debug", 5.0, "ipxe.efi")
    assert (s.http.port, s.log.format) == (80, "text")  # running values until a restart
    assert plan_reload(running, running).applied == () == plan_reload(running, running).restart


def test_live_is_decided_per_key_and_per_table():
    assert is_live("grub.efi64_shim") and is_live("log.level") and is_live("ui.auth_file")
    assert not any(is_live(k) for k in ("dhcp.interfaces", "http.port", "ui.listen", "state.url", "registry.allowed",
                                        "log.format", "state_dir"))
    assert set(flatten(Settings())) >= {"advertise", "dhcp.interfaces", "ui.auth_file"}


def test_diff_lines_say_reload_or_restart_and_skip_what_the_command_line_set():
    running = flatten(Settings(log=LogSettings(format="json")))
    in_file = flatten(Settings(advertise="10.0.0.3", http=HttpSettings(port=8080)))
    assert diff_lines(running, in_file, ["log.format"]) == [
        "reload   advertise: \"\" → '10.0.0.3'",
        "restart  http.port: 80 → 8080",
    ]
    assert diff_lines(running, in_file)[-1] == "restart  log.format: 'json' → 'text'"
