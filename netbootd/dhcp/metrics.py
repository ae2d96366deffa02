"""Prometheus counters of the DHCP edge, in prometheus_client's default REGISTRY.

- netbootd_dhcp_dropped_total{reason}: packets not answered for a packet-level reason: malformed
  (codec.REASONS), not a PXE client, unsupported arch, wrong message type, a REQUEST on 67 (it is
  the site server's: `request-for-dhcp-server`, see answer.py), wrong interface, no address to
  advertise, internal error, send failure.
- netbootd_dhcp_requests_total{firmware,arch,msgtype}: classified PXE/iPXE/HTTP-boot requests.
- netbootd_dhcp_answers_total{firmware,kind}: decisions; kind is the offer kind or "none" when the
  core declined the machine.

The counts are plain dictionaries read by a collector at scrape time, not prometheus_client
Counter children: a Counter child's inc() takes a lock, and in a boot storm every packet
increments two of them. Everything here runs on the reactor thread; the collector only reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily
from prometheus_client.registry import Collector


class _Family:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labelnames = name, doc, labels
        self.counts: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def labels(self, *labels: str) -> _Child:
        """prometheus_client-style `FAMILY.labels(...).inc()`, for rare paths."""
        return _Child(self, labels)

    def metric(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        for labels, value in list(self.counts.items()):
            family.add_metric(list(labels), value)
        return family


class _Child:
    def __init__(self, family: _Family, labels: tuple[str, ...]) -> None:
        self.family, self.labels = family, labels

    def inc(self) -> None:
        self.family.inc(*self.labels)


DROPPED = _Family("netbootd_dhcp_dropped", "DHCP packets dropped without an answer", ("reason",))
REQUESTS = _Family(
    "netbootd_dhcp_requests", "PXE/iPXE/HTTP-boot DHCP requests received", ("firmware", "arch", "msgtype")
)
ANSWERS = _Family("netbootd_dhcp_answers", "DHCP boot decisions", ("firmware", "kind"))


class DhcpCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        for family in (DROPPED, REQUESTS, ANSWERS):
            yield family.metric()

    def describe(self) -> Iterator[CounterMetricFamily]:
        for family in (DROPPED, REQUESTS, ANSWERS):
            yield CounterMetricFamily(family.name, family.doc, labels=list(family.labelnames))


REGISTRY.register(DhcpCollector())
