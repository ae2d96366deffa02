"""netbootd.logs: Twisted's routine chatter kept out of an info log."""

from __future__ import annotations

import io

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

from netbootd.logs import LineObserver, _demoted


def test_timing_out_client_is_debug():
    event = {"log_format": "Timing out client: {peer}", "peer": "IPv4Address(TCP, '10.0.0.9', 40000)",
             "log_level": LogLevel.info, "log_namespace": "twisted.web.http.HTTPChannel", "log_time": 0.0}
    assert _demoted(event)["log_level"] is LogLevel.debug
    assert event["log_level"] is LogLevel.info  # the event other observers see is not changed
    other = {**event, "log_format": "answered"}
    assert _demoted(other) is other
    for level, shown in (("info", False), ("debug", True)):
        out = io.StringIO()
        observer = FilteringLogObserver(LineObserver(out),
                                        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))])
        observer(_demoted(event))
        assert ("Timing out client" in out.getvalue()) is shown, (level, out.getvalue())
