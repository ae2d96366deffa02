"""Safe by default, yet not blind: with no default.toml an unknown machine gets no answer, and it is
still seen (the timeline, the dashboard's "unknown MACs seen") so that the operator can enrol it.
A real daemon, EDK2's captured REQUEST on loopback."""

from __future__ import annotations

import socket

from tests.conftest import wait_for
from tests.helpers import need_capture, request_4011

UNKNOWN = "52:54:00:77:26:01"


def test_an_unknown_machine_gets_nothing_and_is_seen(daemon_factory):
    need_capture()
    d = daemon_factory(dhcp=True).start()  # no machine file, no default.toml
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind(("127.0.0.1", 0))
        s.sendto(request_4011(UNKNOWN), ("127.0.0.1", d.proxy_port))
        try:
            reply = s.recvfrom(2048)
        except TimeoutError:
            reply = None
    assert reply is None
    event = wait_for(lambda: d.ui_get(f"/machines/{UNKNOWN}").status_code == 200
                     and d.ui_get(f"/machines/{UNKNOWN}").json()["events"][-1], timeout=10)
    assert event["answered"] is False and event["reason"] == "unknown machine and no default.toml", event
    rows = {r["mac"]: r for r in d.ui_get("/api/fleet").json()["machines"]}
    assert rows[UNKNOWN]["unknown"] is True, rows
